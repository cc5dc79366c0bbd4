"""Detector stream endpoints: the one check every entry point (REST body, settings, receiver) applies.

A ZeroMQ PULL socket connects to ``tcp://host:port`` (host: a name or address in
ASCII, port 1-65535) or ``ipc://path``. Anything else fails here with a message that
says what was expected, instead of failing later inside the receive thread, where one
bad endpoint must not stop the ingest of the others.
"""

from __future__ import annotations

import re

_TCP = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(?P<port>[0-9]{1,5})")


def check_endpoint(endpoint: object) -> str:
    """``endpoint`` if it is ``tcp://host:port`` or ``ipc://path``; ValueError naming the problem otherwise."""
    if not isinstance(endpoint, str):
        raise ValueError(f"endpoint must be a string like tcp://host:port, got {endpoint!r}")
    if not endpoint.isascii() or any(c.isspace() for c in endpoint):
        raise ValueError(f"endpoint must be ASCII without spaces, like tcp://host:port, got {endpoint!r}")
    if endpoint.startswith("ipc://"):
        if len(endpoint) == len("ipc://"):
            raise ValueError("ipc endpoint needs a path, like ipc:///tmp/detector")
        return endpoint
    m = _TCP.fullmatch(endpoint)
    if m is None:
        raise ValueError(f"endpoint must look like tcp://host:port or ipc://path, got {endpoint!r}")
    if not 1 <= int(m["port"]) <= 65535:
        raise ValueError(f"endpoint port must be 1-65535, got {m['port']}")
    return endpoint
