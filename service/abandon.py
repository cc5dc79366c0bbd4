"""Abandoning a batch: the client gives up on an issued or told batch, and its positions still missing a frame are issued again.

It is the path a series cut short takes (``SessionManager.reissue_missing``, as when the
detector ends a series with frames missing): the slots still missing a frame are unbound
from the batch's series, in memory and in the session file, and the batch goes back to
issued, so ask offers those positions again and a new tell binds them to a new series.
A series is bound once and never re-bound: a late frame of the abandoned series for one of
those slots is refused (counted ``unexpected``) and can never land where the new series'
frame belongs. Frames already stored stay, each at the position its series bound it to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import ErrorKind, SessionError
from service.manager import SessionManager
from service.session import Batch, BatchStatus, Binding, Session


@dataclass(frozen=True)
class Abandon:
    """What abandoning ``batch`` does: its ``missing`` slots are issued again; ``series``: the series cut off (None if not told)."""

    batch: Batch
    series: int | None
    missing: np.ndarray
    kept: int
    """frames of the batch already stored (they stay)."""


def check_abandon(s: Session, batch_id: int) -> Abandon:
    """Whether session ``s``'s batch ``batch_id`` may be abandoned; nothing changes. Refused (wrong-state): not issued, or every frame in."""
    if batch_id >= len(s.batches):
        raise SessionError(ErrorKind.WRONG_STATE, f"batch {batch_id} has not been issued (ask first)")
    b = s.batches[batch_id]
    if b.status in (BatchStatus.COMPLETE, BatchStatus.RECONSTRUCTED):
        raise SessionError(ErrorKind.WRONG_STATE, f"batch {batch_id} is {b.status}: every frame is in, nothing to abandon")
    missing = s.missing_slots(b)
    series = b.series if b.status == BatchStatus.TOLD else None
    return Abandon(b, series, missing, len(b.slots) - len(missing))


def abandon_batch(manager: SessionManager, sid: str, batch_id: int) -> dict:
    """Abandon batch ``batch_id`` of session ``sid`` (a ``BatchAbandoned`` body). An issued batch is left as it is (idempotent).

    Refused: unknown session (unknown-session), a session that ended or a batch not
    issued or complete (wrong-state), the session file failing (storage-unavailable).
    """
    with manager.lock:
        s = manager.get(sid)
        if not isinstance(s, Session) or s.terminal:
            raise SessionError(ErrorKind.WRONG_STATE, f"session {sid} is {s.state}")
        plan = check_abandon(s, batch_id)
        if plan.series is not None:
            key = (s.endpoint, plan.series)
            bind = manager.router.binding(key)
            if bind is None or (bind.session_id, bind.batch_id) != (sid, batch_id):
                bind = Binding(sid, batch_id, {})  # no live binding (cannot happen while told): the file is still unbound
            plan.batch.stall_deadline = None
            note = f"batch {batch_id} abandoned by the client: series {plan.series} cut off, {len(plan.missing)} position(s) re-issued"
            if not manager.reissue_missing(s, bind, plan.missing, note):
                raise SessionError(ErrorKind.STORAGE_UNAVAILABLE, s.error or "the session file could not be written")
        return {"batch_id": batch_id, "series": plan.series, "positions_reissued": len(plan.missing), "frames_kept": plan.kept}
