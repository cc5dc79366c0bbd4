"""What one detector endpoint delivered to the receiver (``detector_stream.receiver``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from detector_stream.errors import StreamErrorKind


@dataclass
class EndpointCounts:
    """What one endpoint delivered so far (kept across stop and start)."""

    messages: int = 0
    callback_errors: int = 0
    stream_errors: dict[StreamErrorKind, int] = field(default_factory=dict)
    """``StreamError`` events its decoder returned, by kind."""
    last_message_at: float | None = None
    """time.monotonic() (s) when its latest message came off the socket; None before the first."""
