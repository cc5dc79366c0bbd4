"""Server-sent events (text/event-stream) of session changes, for the live view.

A stream sends ``event: session`` with a session's status (the body of ``GET
/sessions/{id}``) when it connects and each time that status changes, and, on the
service-wide stream, ``event: service`` with the detector streams and the errors no
session took. Chunk completions, new batches, stops and failures wake the streams at
once (``service.feed``); frame progress within a chunk is polled every ``poll_s``.
Snapshots are taken in a worker thread: the manager's lock is a threading lock the
ingest thread holds for milliseconds at a time, and the event loop must not wait on it.
At shutdown the stream sends ``event: end`` and finishes.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable

from service.feed import ChangeFeed

POLL_S = 1.0
"""how often a stream looks for changes nothing announced (frames arriving within a chunk), s."""
HEARTBEAT_S = 15.0
"""a comment line after this long without an event, s: proxies keep the connection, a client that left is noticed."""
RETRY_MS = 2000
"""how long an EventSource waits before it reconnects, ms."""


def finite(value):
    """``value`` with NaN and infinities replaced by None, recursively: JSON has no NaN (a diverged loss must not break the stream)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def sse_message(event: str, data: dict) -> str:
    """One server-sent event: its type and one line of JSON (``change_events`` puts an ``id:`` line before it)."""
    return f"event: {event}\ndata: " + json.dumps(finite(data), separators=(",", ":")) + "\n\n"


def encode_sessions(sessions: Callable[[], dict[str, dict]]) -> dict[str, str]:
    """Session id -> its ``event: session`` message, for every session ``sessions()`` returns (run in a worker thread)."""
    return {sid: sse_message("session", status) for sid, status in sessions().items()}


async def change_events(
    feed: ChangeFeed,
    sessions: Callable[[], dict[str, dict]],
    service: Callable[[], dict] | None = None,
    *,
    poll_s: float = POLL_S,
    heartbeat_s: float = HEARTBEAT_S,
) -> AsyncIterator[str]:
    """The event stream: ``sessions()`` (id -> status) and ``service()`` are snapshotted on each wake-up, what changed is sent.

    Ends when ``feed`` closes (shutdown); a client that leaves ends it through the ASGI
    server (the response is cancelled). ``sessions`` may raise SessionError when the
    stream is opened (the caller checks before streaming); later it is not called for a
    session that could vanish (sessions are never removed).
    """
    sub = feed.subscribe()
    sent: dict[str, str] = {}
    service_sent: str | None = None
    n = 0
    try:
        yield f"retry: {RETRY_MS}\n\n"
        last_sent = time.monotonic()
        while not feed.closed:
            encoded = await asyncio.to_thread(encode_sessions, sessions)  # statuses and their JSON off the event loop (review: 1,000
            out = []  # finished sessions took ~150 ms of loop time per poll per client)
            for sid, text in encoded.items():
                if sent.get(sid) != text:
                    sent[sid] = text
                    out.append(text)
            if service is not None:
                text = await asyncio.to_thread(lambda: sse_message("service", service()))
                if text != service_sent:
                    service_sent = text
                    out.append(text)
            for text in out:
                n += 1
                yield f"id: {n}\n{text}"
            now = time.monotonic()
            if out:
                last_sent = now
            elif now - last_sent >= heartbeat_s:
                last_sent = now
                yield ": keep-alive\n\n"
            await sub.wait(min(poll_s, heartbeat_s))
        yield sse_message("end", {"reason": "the service is shutting down"})
    finally:
        sub.close()
