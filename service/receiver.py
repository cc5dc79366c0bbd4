"""ZeroMQ receiver for DECTRIS stream v1: PULL sockets connected to detectors, decoded events in a thread.

The detector binds PUSH; each endpoint here gets its own PULL socket and its own
``StreamDecoder``. A background thread polls the sockets, drains what is waiting (up
to ``max_batch`` messages per socket per turn, so bitshuffle frames decode in
batches) and hands every event to ``on_event(endpoint, event)`` in order. Exceptions
from the callback are caught and reported once per kind on stderr so that one bad
event never stops ingest. ZeroMQ reconnects by itself after a detector restarts;
``connected`` follows the sockets' monitor events.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from service.stream_v1 import Event, StreamDecoder

log = logging.getLogger(__name__)


class StreamReceiver:
    """Receive stream v1 from ``endpoints`` (``tcp://host:port``) in a background thread."""

    def __init__(
        self,
        endpoints: list[str],
        on_event: Callable[[str, Event], None],
        *,
        max_batch: int = 512,
        poll_ms: int = 50,
        rcvhwm: int = 100_000,
    ) -> None:
        if not endpoints:
            raise ValueError("StreamReceiver needs at least one endpoint")
        for ep in endpoints:
            if not isinstance(ep, str) or "://" not in ep:
                raise ValueError(f"endpoint must look like tcp://host:port, got {ep!r}")
        self.endpoints = list(endpoints)
        self.on_event = on_event
        self.max_batch = max_batch
        self.poll_ms = poll_ms
        self.rcvhwm = rcvhwm
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._connected: set[str] = set()
        self._lock = threading.Lock()
        self.messages_received = 0
        self.callback_errors = 0

    @property
    def connected(self) -> bool:
        """True while every endpoint has a live TCP connection."""
        with self._lock:
            return len(self._connected) == len(self.endpoints)

    @property
    def connected_endpoints(self) -> list[str]:
        with self._lock:
            return [ep for ep in self.endpoints if ep in self._connected]

    def start(self) -> None:
        """Connect and start the receive thread (returns once the sockets exist)."""
        if self._thread is not None:
            raise RuntimeError("StreamReceiver already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stream-v1-receiver", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the sockets (messages still queued are dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            self._connected.clear()

    def __enter__(self) -> StreamReceiver:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        ctx = zmq.Context()
        sockets: dict[zmq.Socket, tuple[str, StreamDecoder]] = {}
        monitors: dict[zmq.Socket, str] = {}
        poller = zmq.Poller()
        try:
            for ep in self.endpoints:
                sock = ctx.socket(zmq.PULL)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
                mon = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
                sock.connect(ep)
                sockets[sock] = (ep, StreamDecoder())
                monitors[mon] = ep
                poller.register(sock, zmq.POLLIN)
                poller.register(mon, zmq.POLLIN)
            self._ready.set()
            while not self._stop.is_set():
                for sock, _ in poller.poll(self.poll_ms):
                    if sock in monitors:
                        self._monitor(sock, monitors[sock])
                    else:
                        self._drain(sock, *sockets[sock])
        finally:
            self._ready.set()
            for sock in sockets:
                sock.disable_monitor()
                sock.close(0)
            for mon in monitors:
                mon.close(0)
            ctx.term()

    def _monitor(self, mon: zmq.Socket, endpoint: str) -> None:
        while True:
            try:
                msg = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            with self._lock:
                if msg["event"] == zmq.EVENT_CONNECTED:
                    self._connected.add(endpoint)
                elif msg["event"] == zmq.EVENT_DISCONNECTED:
                    self._connected.discard(endpoint)

    def _drain(self, sock: zmq.Socket, endpoint: str, decoder: StreamDecoder) -> None:
        messages = []
        while len(messages) < self.max_batch:
            try:
                messages.append(sock.recv_multipart(zmq.NOBLOCK, copy=True))
            except zmq.Again:
                break
        self.messages_received += len(messages)
        for event in decoder.feed_many(messages):
            try:
                self.on_event(endpoint, event)
            except Exception:
                self.callback_errors += 1
                if self.callback_errors == 1:
                    log.exception("stream receiver: on_event raised (further errors counted in callback_errors)")
