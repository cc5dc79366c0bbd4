"""Loopback networking helpers shared by the demo, the tests and the benchmarks."""

from __future__ import annotations

import errno
import socket


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening (port 0: the OS picks); ValueError in one line if it cannot be.

    Servers take it ready-made (uvicorn's ``Server.run(sockets=...)``), so that a port in
    use is reported before anything starts, not as a traceback from inside the server.
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        hint = " (another server listens there: pick another port)" if err.errno == errno.EADDRINUSE else ""
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}{hint}") from None
    return sock


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
