"""Forward every detector message the service receives, byte for byte, on a PUSH socket of its own.

A detector's PUSH socket deals messages round-robin between its PULL peers, so a
second consumer (LiberTEM-live, a viewer) connected to the detector next to the service
gets every other message. With forwarding on, the service is the detector's only
consumer and the second one connects to the service's forward endpoint instead: it sees
every message of every part, in the order received (all detectors the service reads,
interleaved: forward from a service that reads one detector).

The compiled receive loop sends on this socket itself (``socket``, tallies through
``counted``); the Python receive loop calls ``send``. Bounded: messages are sent without blocking; when the forward socket's queue is full
(``sndhwm`` messages) or nobody is connected, the message is dropped for the forward
socket only and counted. Ingest never waits for the second consumer.
"""

from __future__ import annotations

import logging
import threading

import zmq
from prometheus_client import Counter

log = logging.getLogger(__name__)


class Forwarder:
    """A bound PUSH socket that re-sends raw multipart messages; ``send`` is called from the receive thread only."""

    def __init__(self, endpoint: str, sndhwm: int, forwarded: Counter, dropped: Counter) -> None:
        """``endpoint``: where to bind (``tcp://host:port``; port 0 or ``*``: a free one, see ``endpoint`` after ``bind``).

        ``sndhwm``: messages queued for the consumer at most (per connected peer);
        ``forwarded`` / ``dropped``: counters of messages sent / dropped.
        """
        self.requested = endpoint
        self.sndhwm = sndhwm
        self.forwarded = forwarded
        self.dropped = dropped
        self.endpoint: str | None = None
        """where the socket listens, once bound."""
        self._ctx: zmq.Context | None = None
        self._socket: zmq.Socket | None = None
        self._lock = threading.Lock()
        self._dropped_logged = False

    def bind(self) -> str:
        """Open and bind the PUSH socket; returns the bound endpoint (raises zmq.ZMQError if the address is taken)."""
        with self._lock:
            if self._socket is None:
                ctx = zmq.Context()
                sock = ctx.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, self.sndhwm)
                try:
                    host, port = self.requested.rsplit(":", 1)
                    sock.bind(f"{host}:*" if port == "0" else self.requested)
                except zmq.ZMQError:
                    sock.close(0)
                    ctx.term()
                    raise
                self._ctx, self._socket = ctx, sock
                self.endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
                log.info("forwarding every detector message on PUSH %s", self.endpoint)
            return self.endpoint

    @property
    def socket(self) -> zmq.Socket | None:
        """The bound PUSH socket (None before ``bind`` and after ``close``); the compiled receive loop sends on it directly."""
        return self._socket

    def counted(self, sent: int, dropped: int) -> None:
        """Tallies of messages the compiled receive loop forwarded, and dropped for the forward socket."""
        if sent:
            self.forwarded.inc(sent)
        if dropped:
            self._note_dropped(dropped)

    def _note_dropped(self, n: int) -> None:
        self.dropped.inc(n)
        if not self._dropped_logged:
            self._dropped_logged = True
            log.warning("forward %s: nobody reads fast enough (or at all); messages are dropped for it and counted", self.endpoint)

    def send(self, endpoint: str, messages: list[list[bytes]]) -> None:
        """Forward ``messages`` (received from detector ``endpoint``) unchanged; a message that would block is dropped and counted."""
        sock = self._socket
        if sock is None:
            return
        sent = 0
        for parts in messages:
            try:
                sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)  # all parts or none: ZeroMQ queues a multipart message atomically
                sent += 1
            except zmq.Again:
                self._note_dropped(1)
        if sent:
            self.forwarded.inc(sent)

    def close(self) -> None:
        """Close the socket (call after the receive thread has stopped)."""
        with self._lock:
            sock, ctx, self._socket, self._ctx = self._socket, self._ctx, None, None
        if sock is not None:
            sock.close(0)
            ctx.term()
