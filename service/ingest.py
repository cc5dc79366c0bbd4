"""Detector ingest: one ``StreamReceiver`` (PULL, stream v1) per detector endpoint, events into the session manager.

Endpoints come from the settings (connected at start, required for readiness) and
from sessions (connected when a session names a new one). The receiver decodes on its
own thread and never raises on bad input; the manager counts and attributes problems.
"""

from __future__ import annotations

import logging
import threading

from service.manager import SessionManager
from service.receiver import StreamReceiver

log = logging.getLogger(__name__)


class Ingest:
    def __init__(self, manager: SessionManager, required: list[str]) -> None:
        self.manager = manager
        self.required = list(required)
        self.receivers: dict[str, StreamReceiver] = {}
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        for ep in self.required:
            self.ensure(ep)

    def ensure(self, endpoint: str) -> None:
        """Connect to ``endpoint`` unless already connected (idempotent, thread-safe)."""
        with self._lock:
            if self._stopped or endpoint in self.receivers:
                return
            rx = StreamReceiver([endpoint], self.manager.on_event)
            rx.start()
            self.receivers[endpoint] = rx
            log.info("ingest connected PULL to %s", endpoint)

    def status(self) -> dict:
        with self._lock:
            return {
                ep: {
                    "connected": rx.connected,
                    "messages": rx.messages_received,
                    "callback_errors": rx.callback_errors,
                    "required": ep in self.required,
                }
                for ep, rx in self.receivers.items()
            }

    @property
    def ready(self) -> bool:
        with self._lock:
            return all(ep in self.receivers and self.receivers[ep].connected for ep in self.required)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            receivers, self.receivers = list(self.receivers.values()), {}
        for rx in receivers:
            rx.stop()
