"""ZeroMQ receiver for DECTRIS stream v1: PULL sockets connected to detectors, decoded events in one thread.

The detector binds PUSH; each endpoint here gets its own PULL socket and its own
``StreamDecoder``, all polled by one background thread (endpoints can be added while it
runs: ``add``). Each turn the thread drains what is waiting on every socket (up to
``max_batch`` messages per socket, so bitshuffle frames decode in batches) and hands
the events of one socket to the callback in order: ``on_events(endpoint, events)``
with the whole list, or ``on_event(endpoint, event)`` once per event. One thread and
one callback per drained batch (not one per frame) keep the ingest's share of the
interpreter and of the consumer's lock small: at 8 detectors x 1,000 frames/s, one
thread per detector and a lock taken per frame cost the service's compute worker
measurable time (bench/RESULTS.md). Exceptions from the callback are caught and
reported once per kind on stderr so that one bad batch never stops ingest. ZeroMQ
reconnects by itself after a detector restarts; ``connected`` follows the sockets'
monitor events.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from service.codec_threads import set_codec_threads
from service.stream_v1 import Event, StreamDecoder

log = logging.getLogger(__name__)


@dataclass
class _Endpoint:
    """One detector connection, owned by the receive thread (counters read by others)."""

    endpoint: str
    socket: zmq.Socket
    monitor: zmq.Socket
    decoder: StreamDecoder
    messages: int = 0


def _check_endpoint(endpoint: str) -> None:
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise ValueError(f"endpoint must look like tcp://host:port, got {endpoint!r}")


class StreamReceiver:
    """Receive stream v1 from ``endpoints`` (``tcp://host:port``) in one background thread.

    Give exactly one of ``on_event`` (called per event) and ``on_events`` (called per
    drained batch of one endpoint's events, in order).
    """

    def __init__(
        self,
        endpoints: list[str],
        on_event: Callable[[str, Event], None] | None = None,
        *,
        on_events: Callable[[str, list[Event]], None] | None = None,
        max_batch: int = 512,
        poll_ms: int = 50,
        rcvhwm: int = 100_000,
        codec_threads: int = 1,
    ) -> None:
        if (on_event is None) == (on_events is None):
            raise ValueError("StreamReceiver needs exactly one of on_event and on_events")
        for ep in endpoints:
            _check_endpoint(ep)
        self.endpoints: list[str] = []
        for ep in endpoints:
            if ep not in self.endpoints:
                self.endpoints.append(ep)
        self.on_events = on_events or _per_event(on_event)  # type: ignore[arg-type]
        self.max_batch = max_batch
        self.poll_ms = poll_ms
        self.rcvhwm = rcvhwm
        self.codec_threads = codec_threads
        """OpenMP threads bitshuffle decodes with in the receive thread (``service.codec_threads``)."""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._connected: set[str] = set()
        self._open: dict[str, _Endpoint] = {}
        """endpoints whose socket the thread has opened (written by the thread, under ``_lock``)."""
        self._pending: list[tuple[str, threading.Event]] = []
        """endpoints added while running, not yet opened by the thread."""
        self._ctx: zmq.Context | None = None
        self._wake: zmq.Socket | None = None
        """PUSH end of the thread's inproc control socket (used under ``_lock``)."""
        self.callback_errors = 0
        self.socket_errors = 0

    @property
    def connected(self) -> bool:
        """True while every endpoint has a live TCP connection."""
        with self._lock:
            return all(ep in self._connected for ep in self.endpoints)

    @property
    def connected_endpoints(self) -> list[str]:
        with self._lock:
            return [ep for ep in self.endpoints if ep in self._connected]

    def is_connected(self, endpoint: str) -> bool:
        with self._lock:
            return endpoint in self._connected

    @property
    def messages_received(self) -> int:
        """Messages received on all endpoints so far."""
        with self._lock:
            return sum(e.messages for e in self._open.values())

    def messages_from(self, endpoint: str) -> int:
        """Messages received from ``endpoint`` so far (0 if unknown)."""
        with self._lock:
            e = self._open.get(endpoint)
            return e.messages if e is not None else 0

    def start(self) -> None:
        """Connect and start the receive thread (returns once the sockets exist)."""
        if self._thread is not None:
            raise RuntimeError("StreamReceiver already started")
        self._stop.clear()
        self._ready.clear()
        self._ctx = zmq.Context()
        self._thread = threading.Thread(target=self._run, name="stream-v1-receiver", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def add(self, endpoint: str, timeout: float = 5.0) -> None:
        """Connect to one more endpoint (idempotent, thread-safe); returns once its socket exists."""
        _check_endpoint(endpoint)
        with self._lock:
            if endpoint in self.endpoints:
                return
            self.endpoints.append(endpoint)
            if self._wake is None:  # not running: opened at start
                return
            opened = threading.Event()
            self._pending.append((endpoint, opened))
            self._wake.send(b"")
        opened.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the sockets (messages still queued are dropped)."""
        self._stop.set()
        with self._lock:
            if self._wake is not None:
                self._wake.send(b"")
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

    # --- the receive thread ----------------------------------------------------------

    def _run(self) -> None:
        ctx = self._ctx
        assert ctx is not None
        set_codec_threads(self.codec_threads)
        poller = zmq.Poller()
        by_socket: dict[zmq.Socket, _Endpoint] = {}
        monitors: dict[zmq.Socket, str] = {}
        control = ctx.socket(zmq.PULL)
        control.setsockopt(zmq.LINGER, 0)
        address = f"inproc://stream-v1-receiver-{id(self)}"
        control.bind(address)
        poller.register(control, zmq.POLLIN)

        def open_endpoint(endpoint: str) -> None:
            sock = ctx.socket(zmq.PULL)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
            mon = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            sock.connect(endpoint)
            entry = _Endpoint(endpoint, sock, mon, StreamDecoder())
            by_socket[sock] = entry
            monitors[mon] = endpoint
            poller.register(sock, zmq.POLLIN)
            poller.register(mon, zmq.POLLIN)
            with self._lock:
                self._open[endpoint] = entry

        try:
            with self._lock:
                wake = ctx.socket(zmq.PUSH)
                wake.setsockopt(zmq.LINGER, 0)
                wake.connect(address)
                self._wake = wake
                initial = list(self.endpoints)
            for ep in initial:
                open_endpoint(ep)
            self._ready.set()
            while not self._stop.is_set():
                ready = poller.poll(self.poll_ms)
                for sock, _ in ready:
                    try:
                        if sock is control:
                            self._open_pending(control, open_endpoint)
                        elif sock in monitors:
                            self._monitor(sock, monitors[sock])
                        else:
                            self._drain(by_socket[sock])
                    except zmq.ZMQError as err:  # one socket's failure must not stop the others' ingest
                        self.socket_errors += 1
                        if self.socket_errors == 1:
                            log.error("stream receiver: %s (further socket errors counted in socket_errors)", err)
        finally:
            self._ready.set()
            with self._lock:
                if self._wake is not None:
                    self._wake.close(0)
                    self._wake = None
                pending, self._pending = self._pending, []
                self._open.clear()
            for _, opened in pending:
                opened.set()
            for sock in by_socket:
                sock.disable_monitor()
                sock.close(0)
            for mon in monitors:
                mon.close(0)
            control.close(0)
            ctx.term()

    def _open_pending(self, control: zmq.Socket, open_endpoint: Callable[[str], None]) -> None:
        while True:
            try:
                control.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        with self._lock:
            pending, self._pending = self._pending, []
        for endpoint, opened in pending:
            try:
                open_endpoint(endpoint)
            except zmq.ZMQError as err:
                log.error("stream receiver: cannot connect to %s (%s)", endpoint, err)
            finally:
                opened.set()

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

    def _drain(self, entry: _Endpoint) -> None:
        messages = []
        while len(messages) < self.max_batch:
            try:
                messages.append(entry.socket.recv_multipart(zmq.NOBLOCK, copy=True))
            except zmq.Again:
                break
        entry.messages += len(messages)
        events = entry.decoder.feed_many(messages)
        if not events:
            return
        try:
            self.on_events(entry.endpoint, events)
        except Exception:
            self.callback_errors += 1
            if self.callback_errors == 1:
                log.exception("stream receiver: the event callback raised (further errors counted in callback_errors)")


def _per_event(on_event: Callable[[str, Event], None]) -> Callable[[str, list[Event]], None]:
    """A batch callback that calls ``on_event`` for each event; one event's exception does not drop the rest."""

    def on_events(endpoint: str, events: list[Event]) -> None:
        failed: Exception | None = None
        for event in events:
            try:
                on_event(endpoint, event)
            except Exception as err:
                failed = err
        if failed is not None:
            raise failed

    return on_events
