"""Which detector endpoints the service must listen to now: those a session has a batch in flight on.

A batch is in flight from the moment it is issued (the microscope may arm and acquire
before it tells) until all of its frames arrived (told, then complete); a told batch
whose series ended short goes back to issued and stays in flight. Only while some
session of the service has a batch in flight on an endpoint does the service hold a
PULL connection to it (``service.ingest``): a detector's PUSH socket deals messages
round-robin, so a needless connection steals every other message from any other
consumer of that detector.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.session import BatchStatus, Session

IN_FLIGHT = (BatchStatus.ISSUED, BatchStatus.TOLD)


def endpoints_in_flight(sessions: Iterable[Session]) -> set[str]:
    """Endpoints of the sessions in progress that await a tell or frames of some batch (call with the manager's lock held)."""
    return {s.endpoint for s in sessions if not s.terminal and any(b.status in IN_FLIGHT for b in reversed(s.batches))}
