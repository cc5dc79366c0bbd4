"""``Connection``: one open detector connection of the receiver, and the handing on of what it delivers."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from detector_stream.decoder import StreamDecoder
from detector_stream.endpoint_counts import EndpointCounts
from detector_stream.events import Event, StreamError
from detector_stream.native.batch import NativeBatch

log = logging.getLogger(__name__)


@dataclass
class Connection:
    """A detector's PULL socket and its monitor (the receive thread's), its decoder (one thread at a time), its counts (under ``lock``)."""

    endpoint: str
    socket: zmq.Socket
    monitor: zmq.Socket
    decoder: StreamDecoder
    counts: EndpointCounts
    lock: threading.Lock
    """the receiver's lock, which guards ``counts``."""

    def hand_on_native(self, batch: NativeBatch, on_events: Callable[[str, list[Event]], None]) -> None:
        """Decode one drain of the compiled loop and hand its events on."""
        errors_before = self.decoder.errors_total
        self.hand_on(len(batch), self.decoder.feed_native(batch), errors_before, on_events)

    def hand_on(self, received: int, events: list[Event], errors_before: int, on_events: Callable[[str, list[Event]], None]) -> int:
        """Count ``received`` messages and the decoder's new errors, and give ``events`` to ``on_events``; returns ``received``.

        The callback's exceptions are counted (``callback_errors``) and the first is logged: one batch's failure must not stop ingest.
        """
        with self.lock:
            self.counts.messages += received
            self.counts.last_message_at = time.monotonic()
        if self.decoder.errors_total != errors_before:
            by_kind = Counter(e.kind for e in events if isinstance(e, StreamError))
            with self.lock:
                for kind, n in by_kind.items():
                    self.counts.stream_errors[kind] = self.counts.stream_errors.get(kind, 0) + n
        if not events:
            return received
        try:
            on_events(self.endpoint, events)
        except Exception:
            with self.lock:
                self.counts.callback_errors += 1
                first = self.counts.callback_errors == 1
            if first:
                log.exception("stream receiver: the event callback for %s raised (further errors counted per endpoint)", self.endpoint)
        return received
