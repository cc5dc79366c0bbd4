"""What a receiver re-sends every detector message to, byte for byte (the service's ``Forwarder`` is one)."""

from __future__ import annotations

from typing import Protocol

import zmq


class ForwardTarget(Protocol):
    """A bound PUSH socket for a second consumer of the detector's stream (LiberTEM-live, a viewer)."""

    @property
    def socket(self) -> zmq.Socket | None:
        """The bound socket (None: not bound; nothing is forwarded). Used from the receive thread only."""

    def send(self, endpoint: str, messages: list[list[bytes]]) -> None:
        """Re-send ``messages`` received from ``endpoint`` (the Python receive loop calls this)."""

    def counted(self, sent: int, dropped: int) -> None:
        """Messages the compiled receive loop re-sent, and dropped because the socket would have blocked, since the last call."""
