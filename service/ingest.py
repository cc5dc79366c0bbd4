"""Detector ingest: one ``StreamReceiver`` thread (PULL, stream v1) for every detector endpoint, events into the session manager.

Endpoints come from the settings (connected at start, required for readiness) and
from sessions (connected when a session names a new one). The receiver decodes on its
own thread, hands each drained batch of one endpoint's events to the manager in one
call (one lock acquisition per batch, not per frame) and never raises on bad input; the
manager counts and attributes problems.
"""

from __future__ import annotations

import logging
import threading

from detector_stream.receiver import StreamReceiver
from service.manager import SessionManager

log = logging.getLogger(__name__)


class Ingest:
    def __init__(self, manager: SessionManager, required: list[str]) -> None:
        self.manager = manager
        self.required = list(required)
        self.receiver: StreamReceiver | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        """Start the receive thread and connect the required endpoints."""
        self._running()

    def _running(self) -> StreamReceiver | None:
        """The receiver, started with the required endpoints on first use; None once stopped."""
        with self._lock:
            if self._stopped:
                return None
            if self.receiver is None:
                self.receiver = StreamReceiver(self.required, on_events=self.manager.on_events)
                self.receiver.start()
                for ep in self.required:
                    log.info("ingest connected PULL to %s", ep)
            return self.receiver

    def ensure(self, endpoint: str) -> None:
        """Connect to ``endpoint`` unless already connected (idempotent, thread-safe)."""
        receiver = self._running()
        if receiver is not None and endpoint not in receiver.endpoints:
            receiver.add(endpoint)
            log.info("ingest connected PULL to %s", endpoint)

    def status(self) -> dict:
        """Per endpoint: connected, messages, callback_errors, required, and ``error`` when its socket could not be opened."""
        receiver = self.receiver
        if receiver is None:
            return {ep: {"connected": False, "messages": 0, "callback_errors": 0, "required": True} for ep in self.required}
        out = {}
        for ep in list(receiver.endpoints):
            counts = receiver.counts(ep)
            out[ep] = {"connected": receiver.is_connected(ep), "messages": counts.messages, "callback_errors": counts.callback_errors, "required": ep in self.required}
            if ep in receiver.failures:
                out[ep]["error"] = receiver.failures[ep]
        return out

    @property
    def ready(self) -> bool:
        """The receive thread runs and every required detector is connected."""
        receiver = self.receiver
        if receiver is None:
            return not self.required
        return receiver.alive and all(receiver.is_connected(ep) for ep in self.required)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.stop()
