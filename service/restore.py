"""Sessions read back from storage after a restart (or kill -9): each file becomes a finished session's summary or a session to resume.

Nothing here touches the manager: ``load_session`` returns what one file holds and
``SessionManager.restore`` adopts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.detector_mask import DetectorMask
from service.finished import FinishedSession
from service.planner import PlannerChoice
from service.session import TERMINAL, UNKNOWN_HAND_OUT, Batch, BatchStatus, Binding, Session, SessionState
from service.store import SessionStore, StoredSession, StoreError, session_files
from service.store_read import read_state, read_summary

log = logging.getLogger(__name__)

Resumed = tuple[Session, dict[int, Binding]]
"""a session rebuilt from its file and its series bindings by series number."""


def load_sessions(storage: Path, planner_for: Callable[[str], PlannerChoice]) -> tuple[list[FinishedSession | Resumed], list[str]]:
    """Every session file in ``storage`` loaded (``load_session``), and the error of each one that could not be (logged)."""
    loaded: list[FinishedSession | Resumed] = []
    errors: list[str] = []
    for path in session_files(storage):
        try:
            loaded.append(load_session(path, planner_for))
        except (StoreError, ValueError) as err:
            errors.append(str(err))
            log.error("%s: %s", path, err)
    return loaded, errors


def load_session(path: Path, planner_for: Callable[[str], PlannerChoice]) -> FinishedSession | Resumed:
    """What the session file at ``path`` holds: the summary of a finished session (nothing else is read), or an unfinished
    session rebuilt to resume (``restored_session``, its planner from ``planner_for(strategy)``; it may turn out finished).

    Raises ``StoreError`` for a file that cannot be read or whose stored request lacks a field or has one of the wrong type
    (a file that opened is closed again), ``ValueError`` for an unknown state or strategy.
    """
    path = Path(path)
    if SessionState(read_state(path)) in TERMINAL:
        summary = read_summary(path)
        try:
            return FinishedSession.from_file(summary, path)
        except (KeyError, TypeError) as err:
            raise _damaged_params(path, err) from None
    store, stored = SessionStore.open(path)
    try:
        s, bindings = restored_session(stored, store, planner_for(stored.params["strategy"]))
    except (KeyError, TypeError, ValueError) as err:
        store.close()
        if isinstance(err, ValueError):
            raise
        raise _damaged_params(path, err) from None
    if s.terminal:  # found finished (its last chunk was reconstructed before the restart): the file says so too
        try:
            store.set_state(s.state, s.error)
        except StoreError as err:
            log.error("%s", err)
    return s, bindings


def _damaged_params(path: Path, err: KeyError | TypeError) -> StoreError:
    """The load error of a file whose stored session request cannot be read (a field missing or of the wrong type)."""
    why = f"no {err} in its session parameters" if isinstance(err, KeyError) else f"session parameters: {err}"
    return StoreError(f"{path.name}: damaged session file ({why})")


def restored_session(st: StoredSession, store: SessionStore, planner: PlannerChoice) -> tuple[Session, dict[int, Binding]]:
    """A session rebuilt from its file after a restart (or kill -9), and its series bindings by series number.

    Batches: ``reconstructed`` if a reconstruction of theirs is stored, ``complete`` if
    every frame is in, ``told`` if their missing slots are bound to the series of their
    last tell (frames of that series still complete them), else ``issued`` (``ask``
    re-issues the missing positions under the same ``batch_id``). Every stored binding
    is kept, so late frames of a told series land in their own slots and a repeated
    tell is recognised as one; but the missing slots of an issued batch are bound to no
    series (as after a series end), since the next tell binds them anew.
    """
    s = Session(st.session_id, st.params, planner, store, state=SessionState(st.state), error=st.error, created_unix=st.created_unix)
    s.positions_issued = st.positions_issued
    if st.probe is not None and st.probe.get("state") in ("done", "failed"):  # a retrieval queued or running when it stopped runs again
        s.probe = dict(st.probe)  # with its refinements (the aberrations are the latest refined ones) and their history
        if (s.probe.get("refinement") or {}).get("state") in ("queued", "running"):  # one in flight is due again, from the frames
            s.probe.pop("refinement")
        if st.probe.get("state") == "done":
            s.retrieved_beam = s.spec.beam.with_reported(st.probe)
    s.positions_measured = np.array(st.positions_measured, dtype=np.float64)
    s.received = st.received.copy()
    s.patterns = np.zeros((max(s.budget, s.n_issued), s.k, s.k), s.pixel_dtype)  # as the file holds them
    s.patterns[: len(st.patterns)] = st.patterns
    s.detector_mask = DetectorMask(s.k, st.detector_mask)
    if len(st.patterns):  # a file written before the mask was recorded: its marks in the file's own pixel type
        s.detector_mask.observe([st.patterns.max(axis=0)])
    s.frames_received = s.frames_persisted = int(s.received.sum())
    done_batches = set(st.reconstructed_batches)
    bindings: dict[int, Binding] = {}
    for bid in (np.unique(st.slot_batch) if len(st.slot_batch) else []):
        slots = np.flatnonzero(st.slot_batch == bid)
        b = Batch(int(bid), slots, handed_out_at=UNKNOWN_HAND_OUT)  # the client may hold its positions from before the restart
        missing = slots[~s.received[slots]]
        told = _last_told_series(st, int(bid), slots, missing)
        if told is not None:
            b.series, b.told_slots = told, slots[st.slot_series[slots] == told]
        if int(bid) in done_batches:
            b.status = BatchStatus.RECONSTRUCTED
        elif len(missing) == 0:
            b.status = BatchStatus.COMPLETE
        elif told is not None and (st.slot_series[missing] == told).all():
            b.status = BatchStatus.TOLD
        else:
            b.series = None
        s.batches.append(b)
        # A missing slot stays bound only to the series a told batch awaits. In an issued batch it is asked for again
        # and the next tell binds it to a new series, so a frame of an earlier series (received before the restart but
        # lost with the process, or still to come) must not land there as well: it is refused, as after a series end.
        live = s.received[slots].copy()
        if b.status == BatchStatus.TOLD:
            live |= st.slot_series[slots] == b.series
        for series in {int(v) for v in st.slot_series[slots] if v >= 0}:
            sel = slots[(st.slot_series[slots] == series) & live]
            begun = bool(s.received[slots[st.slot_series[slots] == series]].any())  # else its header may still come (told before it)
            bindings[series] = Binding(s.session_id, int(bid), {int(st.slot_frame[i]): int(i) for i in sel}, run_begun=begun)  # kept if empty: a repeated tell
    if st.latest_reconstruction is not None:
        last = st.latest_reconstruction
        s.potential, s.grid_origin_nm, s.grid_pixel_nm, s.loss_history = last.potential, last.origin_nm, last.pixel_nm, last.loss_history
        s.n_reconstructed = len(st.reconstructed_batches)
    if not s.terminal:
        if s.pending_reconstruction() is not None:
            s.state = SessionState.RECONSTRUCTING
        elif s.batches and s.current.status == BatchStatus.RECONSTRUCTED and s.n_issued >= s.budget:
            s.state = SessionState.DONE
        elif s.state == SessionState.RECONSTRUCTING:
            s.state = SessionState.ACQUIRING
    return s, bindings


def _last_told_series(st: StoredSession, batch_id: int, slots: np.ndarray, missing: np.ndarray) -> int | None:
    """The series of batch ``batch_id``'s last tell, None if it awaits one.

    From ``batch_series``; in older files, the one series its missing slots are bound to
    (or, for a batch with every frame in, the series of its last slot).
    """
    if st.batch_series is not None and batch_id < len(st.batch_series):
        v = int(st.batch_series[batch_id])
        return v if v >= 0 else None
    pool = st.slot_series[missing] if len(missing) else st.slot_series[slots[-1:]]
    values = {int(v) for v in pool}
    return values.pop() if len(values) == 1 and min(values) >= 0 else None
