"""Detector ingest: one ``StreamReceiver`` thread (PULL, stream v1) for the detector endpoints in use, events into the session manager.

Which endpoints are connected depends on ``detector_connection``:

- ``in_flight`` (default): an endpoint is connected only while a session has a batch in
  flight on it (``service.demand``), so another consumer (LiberTEM-live) can use the
  detector between and after sessions: a detector's PUSH deals messages round-robin
  between its PULL peers. The connection is made before ask hands a batch out
  (``wait_connected``) and dropped once nothing is in flight and the endpoint has been
  quiet (no message) for ``quiet_s``: the end of the series and any late frame still
  arrive, and no message the detector has already dealt to this connection is lost with
  it. What the socket holds is decoded and handed on before it closes; frames of a series
  not told yet are held for their tell as always.
- ``always``: every endpoint configured or named by a session stays connected (needed
  to forward the whole stream, ``service.forward``).

The receiver decodes on its own thread, hands each drained batch of one endpoint's
events to the manager in one call and never raises on bad input; the manager counts
and attributes problems.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from detector_stream.receiver import StreamReceiver
from service.demand import endpoints_in_flight
from service.forward import Forwarder
from service.manager import SessionManager

log = logging.getLogger(__name__)

RECONCILE_S = 0.1
IDLE_CAP_FACTOR = 3.0
"""with nothing in flight, an endpoint is let go after this many ``quiet_s`` even while messages keep arriving."""
"""How often (s) the in-flight connections are brought in line with the sessions (and at once when a batch is issued)."""


def reachable(endpoint: str, timeout_s: float = 0.5) -> bool:
    """Someone listens at ``endpoint``: a plain TCP connect (closed at once, before ZeroMQ's handshake, so no message is dealt to it); an ipc path exists."""
    if endpoint.startswith("tcp://"):
        host, port = endpoint[len("tcp://") :].rsplit(":", 1)
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            return False
    if endpoint.startswith("ipc://"):
        return os.path.exists(endpoint[len("ipc://") :])
    return True


class Ingest:
    def __init__(
        self,
        manager: SessionManager,
        required: list[str],
        *,
        on_demand: bool = True,
        quiet_s: float = 1.0,
        forwarder: Forwarder | None = None,
        probe: Callable[[str], bool] = reachable,
    ) -> None:
        """``required``: the configured detectors (always allowed, checked for readiness); ``on_demand``: connect only while a batch is in flight.

        ``quiet_s``: an endpoint with nothing in flight is disconnected once no message came
        from it for this long (s); ``forwarder``: re-sends every message received (then
        ``on_demand`` must be False); ``probe``: reachability of a required endpoint that is
        not connected (readiness).
        """
        if forwarder is not None and on_demand:
            raise ValueError("forwarding needs the detectors connected always (on_demand=False)")
        self.manager = manager
        self.required = list(required)
        self.on_demand = on_demand
        self.quiet_s = quiet_s
        self.forwarder = forwarder
        self.probe = probe
        self.receiver: StreamReceiver | None = None
        self._lock = threading.Lock()
        self._reconcile_lock = threading.Lock()
        """serialises reconciling: a batch handed out by ask is never followed by a disconnect decided before it was issued."""
        self._idle_since: dict[str, float] = {}
        """per connected endpoint with nothing in flight, since when (time.monotonic(), s)."""
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        """Start the receive thread (connected to the required endpoints unless on demand; the forward socket bound first) and,
        on demand, the reconciler."""
        self._running()
        if self.on_demand and self._thread is None:
            self._thread = threading.Thread(target=self._reconcile_loop, name="ingest-connections", daemon=True)
            self._thread.start()

    def _running(self) -> StreamReceiver | None:
        """The receiver, started on first use; None once stopped."""
        with self._lock:
            if self._stopped:
                return None
            if self.receiver is None:
                if self.forwarder is not None:  # bound before the receiver exists: its compiled loop takes the socket when made
                    self.forwarder.bind()       # (a restored session starts the receiver before start() runs)
                initial = [] if self.on_demand else self.required
                keep = self.manager.settings.compressed_patterns  # only compressed session files store the detector's blobs
                self.receiver = StreamReceiver(initial, on_events=self.manager.on_events, forward=self.forwarder, keep_blobs=keep, frame_runs=True)
                self.receiver.start()
                self.manager.metrics.compiled_receive_loop.set(1 if self.receiver.native_loop is not None else 0)
                for ep in initial:
                    log.info("ingest connected PULL to %s", ep)
            return self.receiver

    def ensure(self, endpoint: str) -> None:
        """A session names ``endpoint``: connect it now (always) or when a batch is in flight on it (on demand). Thread-safe, never blocks on demand."""
        if self.on_demand:
            self.poke()
            return
        receiver = self._running()
        if receiver is not None and endpoint not in receiver.endpoints:
            receiver.add(endpoint)
            log.info("ingest connected PULL to %s", endpoint)

    def poke(self) -> None:
        """Reconcile the connections soon (a batch was issued); safe to call with the manager's lock held."""
        self._wake.set()

    def wait_listening(self, session_id: str, timeout_s: float = 1.0) -> bool:
        """``wait_connected`` for the detector of session ``session_id`` (in progress; True at once for one that has ended)."""
        with self.manager.lock:
            s = self.manager.sessions.get(session_id)
            endpoint = None if s is None or s.terminal else s.endpoint
        return self.wait_connected(endpoint, timeout_s)

    def wait_connected(self, endpoint: str | None, timeout_s: float = 1.0) -> bool:
        """Before a batch on ``endpoint`` is handed out: reconcile now and wait (up to ``timeout_s``) until its connection is up; True if it is.

        A detector that is not reachable yet is not waited for longer: ZeroMQ connects when
        it appears, and its PUSH holds the series for a sole consumer meanwhile.
        """
        if not self.on_demand or endpoint is None:
            return True
        self.reconcile()
        receiver = self.receiver
        deadline = time.monotonic() + timeout_s
        while receiver is not None and not receiver.is_connected(endpoint):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return receiver is not None

    def reconcile(self) -> None:
        """Connect the endpoints with a batch in flight; disconnect those with none that have been quiet for ``quiet_s`` (or
        idle for ``IDLE_CAP_FACTOR`` x ``quiet_s`` while messages keep coming: another consumer's acquisition)."""
        receiver = self._running()
        if receiver is None:
            return
        with self._reconcile_lock:
            with self.manager.lock:
                wanted = endpoints_in_flight(self.manager.sessions.values())
            now = time.monotonic()
            for ep in sorted(wanted):
                self._idle_since.pop(ep, None)
                if ep not in receiver.endpoints:
                    receiver.add(ep)
                    log.info("ingest connected PULL to %s (a batch is in flight)", ep)
            for ep in [ep for ep in receiver.endpoints if ep not in wanted]:
                since = self._idle_since.setdefault(ep, now)
                last = receiver.counts(ep).last_message_at
                # quiet, or idle for IDLE_CAP_FACTOR x quiet_s whatever arrives: with nothing in flight, what another consumer's
                # acquisition deals us is not ours, and it would keep us connected (and taking half its frames) for good (review)
                quiet = last is None or now - last >= self.quiet_s or now - since >= IDLE_CAP_FACTOR * self.quiet_s
                if now - since >= self.quiet_s and quiet:
                    receiver.remove(ep)
                    self._idle_since.pop(ep, None)
                    log.info("ingest disconnected from %s (no batch in flight, quiet for %.1f s)", ep, self.quiet_s)

    def _reconcile_loop(self) -> None:
        while not self._stopped:
            self._wake.wait(RECONCILE_S)
            self._wake.clear()
            try:
                self.reconcile()
            except Exception:  # keep reconciling: a failure here must not leave a detector connected (or not) for good
                log.exception("ingest: reconciling detector connections failed")

    def status(self) -> dict:
        """Per endpoint: connected, messages, callback_errors, required, and ``error`` when its socket could not be opened."""
        receiver = self.receiver
        if receiver is None:
            return {ep: {"connected": False, "messages": 0, "callback_errors": 0, "required": True} for ep in self.required}
        out = {}
        for ep in list(dict.fromkeys([*receiver.endpoints, *self.required])):
            counts = receiver.counts(ep)
            out[ep] = {"connected": receiver.is_connected(ep), "messages": counts.messages, "callback_errors": counts.callback_errors, "required": ep in self.required}
            if self.on_demand:
                out[ep]["in_use"] = ep in receiver.endpoints
            if ep in receiver.failures:
                out[ep]["error"] = receiver.failures[ep]
        return out

    @property
    def receive_loop(self) -> str:
        """Which receive loop drains the detectors: ``compiled`` (``detector_stream.native``), or ``python: <why>``."""
        receiver = self.receiver
        if receiver is None or not receiver.alive:
            return "not started"
        return "compiled" if receiver.native_loop is not None else f"python: {receiver.native_unavailable}"

    @property
    def ready(self) -> bool:
        """The receive thread runs and every required detector is connected (on demand: connected, or reachable while not in use)."""
        receiver = self.receiver
        if receiver is None:
            return not self.required
        if not receiver.alive:
            return False
        if not self.on_demand:
            return all(receiver.is_connected(ep) for ep in self.required)
        return all(receiver.is_connected(ep) or (ep not in receiver.endpoints and self.probe(ep)) for ep in self.required)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            receiver, self.receiver = self.receiver, None
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        stopped = receiver.stop() if receiver is not None else True
        if self.forwarder is not None and stopped:
            self.forwarder.close()
        elif self.forwarder is not None:  # the compiled loop may still send on it: left open rather than freed under it
            log.error("ingest: the receive thread did not stop in time; the forward socket is left open")
