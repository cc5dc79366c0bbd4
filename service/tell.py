"""The tell rules of one session: which tells are accepted, which are repeats, what an accepted one binds and answers.

A tell binds the slots of a batch still missing a frame to a detector series (frame i
-> i-th missing slot). A series is bound once and never re-bound, so a frame can never
move to another position. ``check_tell`` decides and changes nothing; the manager writes
the binding to the session file, then ``apply_tell`` records it in memory. Called with
the manager's lock held.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import ErrorKind, SessionError
from service.session import Batch, BatchStatus, Binding, Session, SessionState


@dataclass(frozen=True)
class Tell:
    """A tell the session accepted: bind ``slots`` of ``batch`` to detector ``series``, frame i -> ``slots[i]``."""

    batch: Batch
    series: int
    slots: np.ndarray
    measured: np.ndarray | None = None
    """(len(slots), 2) positions (x, y) the scan reported reaching, nm; None if not reported."""
    repeat: bool = False
    """a repeat of the tell that bound the batch: nothing changes (``slots``: the slots it bound)."""


def check_tell(s: Session, batch_id: int, series: int, measured: list | None, bound: Binding | None) -> Tell:
    """A tell of session ``s``'s batch ``batch_id`` as detector ``series`` (``bound``: that series' binding, if any), checked; nothing changes.

    It binds the batch's missing slots (frame i -> i-th missing slot). A repeat of the tell
    that bound the batch (same series; also after a restart, after the series ended
    short, or after a restarted detector began a new run of that series number) comes back
    with ``repeat``. (A repeat arriving after its batch was cut short and re-issued cannot
    be told from a new tell of the new run: it binds that run.) Refused (``SessionError``): a batch not issued, a
    series bound to another batch (a series is bound once, so a frame never moves to
    another position), a batch told already, measured positions not one per missing slot.
    """
    if batch_id >= len(s.batches):
        raise SessionError(ErrorKind.WRONG_STATE, f"batch {batch_id} has not been issued (ask first)")
    b = s.batches[batch_id]
    if bound is not None and bound.session_id == s.session_id and bound.batch_id == batch_id:
        # a repeat (also after a restart, or after the series ended short and the batch went back to issued)
        if b.series == series:
            told = b.told_slots if b.told_slots is not None else b.slots
        else:
            told = np.fromiter(sorted(bound.frame_to_slot.values()), np.int64)
        return Tell(b, series, told, repeat=True)
    if bound is None and b.series == series and b.status != BatchStatus.ISSUED:
        # a repeat after a restarted detector's new run of that series number retired the binding: the batch's record answers
        return Tell(b, series, b.told_slots if b.told_slots is not None else b.slots, repeat=True)
    if bound is not None:
        raise SessionError(ErrorKind.SERIES_TAKEN, f"series {series} of {s.endpoint} is already bound to another batch")
    if b.status != BatchStatus.ISSUED:
        raise SessionError(ErrorKind.WRONG_STATE, f"batch {batch_id} is {b.status} (told with series {b.series})")
    missing = s.missing_slots(b)
    meas = None
    if measured is not None:
        meas = np.asarray(measured, dtype=np.float64).reshape(-1, 2)
        if meas.shape[0] != len(missing):
            raise SessionError(ErrorKind.INVALID_REQUEST, f"measured_positions_nm has {meas.shape[0]} rows, the batch has {len(missing)} positions")
    return Tell(b, series, missing, meas)


def apply_tell(s: Session, tell: Tell) -> Binding:
    """Record an accepted tell (already written to the session file): its batch is told; returns the series' binding."""
    if tell.measured is not None:
        s.positions_measured[tell.slots] = tell.measured
    b = tell.batch
    b.series, b.told_slots, b.status = tell.series, tell.slots, BatchStatus.TOLD
    if s.state == SessionState.CREATED:
        s.state = SessionState.ACQUIRING
    return Binding(s.session_id, b.batch_id, {i: int(slot) for i, slot in enumerate(tell.slots)})


def tell_body(s: Session, tell: Tell) -> dict:
    """The answer to ``tell``: the frames it expects and how many of them are in."""
    return {
        "batch_id": tell.batch.batch_id,
        "series": tell.series,
        "accepted": True,
        "frames_expected": len(tell.slots),
        "frames_received": int(s.received[tell.slots].sum()),
    }
