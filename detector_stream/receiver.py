"""ZeroMQ receiver for DECTRIS stream v1: PULL sockets connected to detectors, decoded events in one thread.

The detector binds PUSH; each endpoint here gets its own PULL socket and its own
``StreamDecoder``, all polled by one background thread (endpoints can be added while it
runs: ``add``; and removed: ``remove`` hands on what is queued, then closes; applied in the order asked, never two sockets
for one endpoint). Each turn the thread drains what is waiting on every socket (up to
``max_batch`` messages per socket, so bitshuffle frames decode in batches) and hands
the events of one socket to the callback in order: ``on_events(endpoint, events)``
with the whole list, or ``on_event(endpoint, event)`` once per event. Each ``Frame``
carries when its message came off the socket (``received_at``). One callback per
drained batch (not one per frame) keeps the ingest's share of the interpreter and of
the consumer's lock small, and the thread count is flat however many detectors there
are (bench/RESULTS.md): one receive thread, and with the compiled loop one more
(``detector_stream.handoff``) that decodes a full drain (a backlog) and calls the
callback while the receive thread takes the next drain off the socket. ``forward`` re-sends every message byte for byte;
``on_raw(endpoint, messages)`` sees every drained batch of raw messages (Python loop only).

One endpoint's trouble stays its own: a socket that cannot be opened is reported in
``failures`` and skipped, an exception while serving one socket is logged and counted
(``socket_errors``), and the callback's exceptions are counted per endpoint; the thread
goes on serving the others. ZeroMQ reconnects by itself after a detector restarts;
``connected`` follows the sockets' monitor events and is False for every endpoint
once the thread has stopped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from functools import partial

import zmq
from zmq.utils.monitor import recv_monitor_message

from detector_stream.codec_threads import set_codec_threads
from detector_stream.connection import Connection
from detector_stream.decoder import StreamDecoder
from detector_stream.endpoint_counts import EndpointCounts
from detector_stream.endpoints import check_endpoint
from detector_stream.event_callbacks import per_event
from detector_stream.events import Event
from detector_stream.forwarding import ForwardTarget
from detector_stream.handoff import OrderedHandoff
from detector_stream.native.loop import NativeReceiveLoop, choose_loop

log = logging.getLogger(__name__)


class StreamReceiver:
    """Receive stream v1 from ``endpoints`` (``tcp://host:port`` or ``ipc://path``) in one background thread.

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
        on_raw: Callable[[str, list[list[bytes]]], None] | None = None,
        native: bool | None = None,
        forward: ForwardTarget | None = None,
        keep_blobs: bool = True,
        frame_runs: bool = False,
    ) -> None:
        if (on_event is None) == (on_events is None):
            raise ValueError("StreamReceiver needs exactly one of on_event and on_events")
        self.endpoints: list[str] = []
        for ep in endpoints:
            if check_endpoint(ep) not in self.endpoints:
                self.endpoints.append(ep)
        self.on_events = on_events or per_event(on_event)  # type: ignore[arg-type]
        self.max_batch = max_batch
        self.poll_ms = poll_ms
        self.rcvhwm = rcvhwm
        self.codec_threads = codec_threads
        """OpenMP threads bitshuffle decodes with in the receive thread (``detector_stream.codec_threads``)."""
        self.on_raw = on_raw
        """sees each drained batch of raw multipart messages before decoding (receive thread); its exceptions are counted as socket errors."""
        self.forward, self.keep_blobs = forward, keep_blobs  # every message re-sent there; the compiled loop's Frame.blob kept
        self.frame_runs = frame_runs  # the compiled loop's runs of consecutive frames reach the callback as one FrameRun each
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._connected: set[str] = set()
        self._counts: dict[str, EndpointCounts] = {ep: EndpointCounts() for ep in self.endpoints}
        self.failures: dict[str, str] = {}  # endpoint -> why its socket could not be opened (it is not served)
        self._requests: list[tuple[str, str, threading.Event]] = []  # ("open" | "close", endpoint, done) asked for, not yet applied
        self._wake: zmq.Socket | None = None  # PUSH end of the thread's inproc control socket (used under ``_lock``)
        self.socket_errors = 0
        self.native = native  # the compiled receive loop (detector_stream.native): None where available, False never, True or fail at start
        self.native_unavailable: str | None = None  # why the compiled receive loop is not used (None: it is, or not started)
        self._handoff: OrderedHandoff | None = None  # the decode thread of the compiled loop's last run
        self.native_loop: NativeReceiveLoop | None = None  # the compiled loop the receive thread drains with (None: the Python path)

    # --- state, readable from any thread ----------------------------------------------

    @property
    def alive(self) -> bool:
        """The receive thread is running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def connected(self) -> bool:
        """True while the thread runs and every endpoint has a live connection."""
        return self.alive and all(self.is_connected(ep) for ep in self.endpoints)

    @property
    def connected_endpoints(self) -> list[str]:
        return [ep for ep in self.endpoints if self.is_connected(ep)]

    def is_connected(self, endpoint: str) -> bool:
        with self._lock:
            return endpoint in self._connected and self.alive

    @property
    def messages_received(self) -> int:
        """Messages received on all endpoints so far."""
        with self._lock:
            return sum(c.messages for c in self._counts.values())

    @property
    def callback_errors(self) -> int:
        """Batches whose callback raised, all endpoints."""
        with self._lock:
            return sum(c.callback_errors for c in self._counts.values())

    def counts(self, endpoint: str) -> EndpointCounts:
        """A copy of what ``endpoint`` delivered so far (zeros if unknown)."""
        with self._lock:
            c = self._counts.get(endpoint, EndpointCounts())
            return EndpointCounts(c.messages, c.callback_errors, dict(c.stream_errors), c.last_message_at)

    def messages_from(self, endpoint: str) -> int:
        """Messages received from ``endpoint`` so far (0 if unknown)."""
        return self.counts(endpoint).messages

    # --- control ----------------------------------------------------------------------

    def start(self) -> None:
        """Connect and start the receive thread (returns once the sockets exist)."""
        if self._thread is not None:
            raise RuntimeError("StreamReceiver already started")
        self.native_loop, self.native_unavailable = choose_loop(self.native, self.on_raw is not None, self.max_batch, self.forward, self.keep_blobs)
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="stream-v1-receiver", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def add(self, endpoint: str, timeout: float = 5.0) -> None:
        """Connect to one more endpoint (idempotent, thread-safe); returns once the thread has tried to open it."""
        check_endpoint(endpoint)
        with self._lock:
            if endpoint in self.endpoints:
                return
            self.endpoints.append(endpoint)
            self._counts.setdefault(endpoint, EndpointCounts())
            if self._wake is None:  # not running: opened at start
                return
            opened = threading.Event()
            self._requests.append(("open", endpoint, opened))
            self._wake.send(b"")
        opened.wait(timeout)

    def remove(self, endpoint: str, timeout: float = 5.0) -> bool:
        """Disconnect from ``endpoint`` (thread-safe): what its socket holds already is decoded and handed on first; True once closed.

        Messages the sender has queued for this connection but not yet delivered are
        lost with it (ZeroMQ PUSH does not re-deal them): remove an endpoint only while
        its sender is quiet. Its counts are kept; ``add`` connects it again.
        """
        with self._lock:
            if endpoint not in self.endpoints:
                return True
            self.endpoints.remove(endpoint)
            self.failures.pop(endpoint, None)
            if self._wake is None:  # not running: nothing open
                return True
            closed = threading.Event()
            self._requests.append(("close", endpoint, closed))
            self._wake.send(b"")
        return closed.wait(timeout)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop and close the sockets (queued messages, undecoded drains dropped; a callback in flight ends); False if not done in ``timeout`` s."""
        self._stop.set()
        with self._lock:
            if self._wake is not None:
                self._wake.send(b"")
        thread, self._thread, deadline = self._thread, None, time.monotonic() + timeout
        if thread is not None:
            thread.join(timeout)
        return (thread is None or not thread.is_alive()) and (self._handoff is None or self._handoff.join(deadline - time.monotonic()))

    def __enter__(self) -> StreamReceiver:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the receive thread ----------------------------------------------------------

    def _run(self) -> None:
        native = self.native_loop  # this thread's own: a later start() (after a stop that timed out) makes another
        handoff = self._handoff = OrderedHandoff("stream-v1-decode") if native is not None else None  # decodes the loop's drains
        ctx = zmq.Context()
        poller = zmq.Poller()
        sockets: dict[zmq.Socket, Connection] = {}
        monitors: dict[zmq.Socket, str] = {}
        control = ctx.socket(zmq.PULL)
        control.setsockopt(zmq.LINGER, 0)
        address = f"inproc://stream-v1-receiver-{id(self)}"
        control.bind(address)
        poller.register(control, zmq.POLLIN)

        def open_endpoint(endpoint: str) -> None:
            if any(entry.endpoint == endpoint for entry in sockets.values()):
                return  # one PULL per endpoint: a second would take every other message from the first (PUSH deals round-robin)
            sock = mon = None
            try:
                sock = ctx.socket(zmq.PULL)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
                mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)  # dealt to once the handshake is done
                sock.connect(endpoint)
            except Exception as err:  # e.g. a host name that does not resolve: this endpoint only
                for s in (mon, sock):
                    if s is not None:
                        s.close(0)
                with self._lock:
                    self.failures[endpoint] = f"{type(err).__name__}: {err}"
                log.error("stream receiver: cannot connect to %s (%s); the other detectors are still served", endpoint, err)
                return
            with self._lock:
                entry = Connection(endpoint, sock, mon, StreamDecoder(runs=self.frame_runs), self._counts.setdefault(endpoint, EndpointCounts()), self._lock)
                self.failures.pop(endpoint, None)
            sockets[sock] = entry
            monitors[mon] = endpoint
            poller.register(sock, zmq.POLLIN)
            poller.register(mon, zmq.POLLIN)

        def close_endpoint(endpoint: str) -> None:
            for sock, entry in list(sockets.items()):
                if entry.endpoint != endpoint:
                    continue
                while not self._stop.is_set() and self._drain(entry, native, handoff) == self.max_batch:  # hand on what was received
                    pass
                while handoff is not None and not self._stop.is_set() and handoff.alive and not handoff.wait_idle(1.0):
                    pass  # a slow consumer: remove returns once what this socket delivered is handed on (or the receiver stops)
                for s in (entry.socket, entry.monitor):
                    poller.unregister(s)
                monitors.pop(entry.monitor, None)
                del sockets[sock]
                with contextlib.suppress(zmq.ZMQError):
                    sock.disable_monitor()
                entry.monitor.close(0)
                sock.close(0)
            with self._lock:
                self._connected.discard(endpoint)

        try:
            self._set_codec_threads()
            with self._lock:
                wake = ctx.socket(zmq.PUSH)
                wake.setsockopt(zmq.LINGER, 0)
                wake.connect(address)
                self._wake = wake
                initial = list(self.endpoints)
            for ep in initial:
                open_endpoint(ep)
            if handoff is not None:
                handoff.start()
                handoff.submit(self._set_codec_threads, self._stop)  # it decodes what the compiled loop hands on whole
            self._ready.set()
            while not self._stop.is_set():
                for sock, _ in poller.poll(self.poll_ms):
                    try:
                        if sock is control:
                            self._apply_requests(control, open_endpoint, close_endpoint)
                        elif sock in monitors:
                            self._monitor(sock, monitors[sock])
                        elif sock in sockets:  # else closed earlier in this turn (a remove)
                            self._drain(sockets[sock], native, handoff)
                    except Exception as err:  # one socket's failure must not stop the others' ingest
                        self._socket_error(err)
        except Exception:
            log.exception("stream receiver: the receive thread failed; ingest has stopped")
        finally:
            if handoff is not None and (dropped := sum(len(job.args[1]) for job in handoff.stop(0.0) if isinstance(job, partial))):
                log.warning("stream receiver: stopped with %d message(s) received but not yet decoded: dropped", dropped)
            self._ready.set()
            with self._lock:
                self._wake = None
                requests, self._requests = self._requests, []
                self._connected.clear()
            for _, _, done in requests:
                done.set()
            for sock in sockets:
                with contextlib.suppress(zmq.ZMQError):
                    sock.disable_monitor()
            ctx.destroy(linger=0)  # closes every socket, including any half-made one: never blocks

    def _decode_elsewhere(self, entry: Connection, batch) -> None:
        """``hand_on_native`` on the decode thread: what it raises is counted as a socket error, as on the receive thread."""
        try:
            entry.hand_on_native(batch, self.on_events)
        except Exception as err:
            self._socket_error(err)

    def _socket_error(self, err: Exception) -> None:
        """Count one failure while serving a socket (receive or decode thread); the first is logged."""
        with self._lock:
            self.socket_errors += 1
            first = self.socket_errors == 1
        if first:
            log.error("stream receiver: %s: %s (further errors counted in socket_errors)", type(err).__name__, err)

    def _set_codec_threads(self) -> None:
        try:
            set_codec_threads(self.codec_threads)
        except Exception as err:  # decoding still works, with bitshuffle's default threads
            log.warning("stream receiver: could not set the codec's OpenMP threads (%s)", err)

    def _apply_requests(self, control: zmq.Socket, open_endpoint: Callable[[str], None], close_endpoint: Callable[[str], None]) -> None:
        """Apply the adds and removes asked since the last turn in the order asked (removals first opened an endpoint added and
        removed in one turn after its removal: untracked, and the next add made a second PULL); an open of an endpoint removed since is skipped."""
        while True:
            try:
                control.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        with self._lock:
            requests, self._requests = self._requests, []
        for what, endpoint, done in requests:
            try:
                if what == "close":
                    close_endpoint(endpoint)
                elif self._wanted(endpoint):
                    open_endpoint(endpoint)
            finally:
                done.set()

    def _wanted(self, endpoint: str) -> bool:
        with self._lock:
            return endpoint in self.endpoints

    def _monitor(self, mon: zmq.Socket, endpoint: str) -> None:
        while True:
            try:
                msg = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            with self._lock:
                if msg["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:  # (TCP connected is not enough: a PUSH deals to a peer once the ZMTP handshake is done)
                    self._connected.add(endpoint)
                elif msg["event"] == zmq.EVENT_DISCONNECTED:
                    self._connected.discard(endpoint)

    def _drain(self, entry: Connection, native: NativeReceiveLoop | None, handoff: OrderedHandoff | None = None) -> int:
        """Receive what is waiting (up to ``max_batch``; ``native``: with this compiled loop, decoded and handed on by ``handoff``'s
        worker), decode, hand on; how many messages."""
        if native is not None:
            batch = native.take(entry.socket)
            if not len(batch):
                return 0
            if len(batch) < self.max_batch and handoff.idle:  # no backlog: decoded here (a hand-off would only add a thread switch)
                entry.hand_on_native(batch, self.on_events)
            elif not handoff.submit(partial(self._decode_elsewhere, entry, batch), self._stop):
                log.warning("stream receiver: stopping: %d message(s) from %s dropped undecoded", len(batch), entry.endpoint)
            return len(batch)
        messages, received_at = [], []
        while len(messages) < self.max_batch:
            try:
                messages.append(entry.socket.recv_multipart(zmq.NOBLOCK, copy=True))
            except zmq.Again:
                break
            received_at.append(time.perf_counter())  # per message: one batch may span a whole chunk's acquisition
        if not messages:
            return 0
        if (hook := self.on_raw or (self.forward.send if self.forward is not None else None)) is not None:
            try:
                hook(entry.endpoint, messages)
            except Exception as err:  # forwarding must never stop ingest
                self.socket_errors += 1
                log.warning("stream receiver: raw-message hook failed for %s: %s", entry.endpoint, err)
        errors_before = entry.decoder.errors_total
        events = entry.decoder.feed_many(messages, received_at)
        return entry.hand_on(len(messages), events, errors_before, self.on_events)
