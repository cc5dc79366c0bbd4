"""Resuming sessions after a restart (or kill -9): rebuild each session from its file.

Batches whose frames were all stored but not reconstructed are queued again; a batch
with positions still missing goes back to ``issued`` so that ``ask`` re-issues those
positions (same ``batch_id``); the series bindings already told stay in place so that
late frames of an old series still land in their slots.
"""

from __future__ import annotations

import logging

import numpy as np

from service.session import Batch, Session
from service.store import SessionStore, StoredSession, StoreError, session_files

log = logging.getLogger(__name__)


def restore_sessions(manager) -> int:
    """Load every session file in ``manager.settings.storage``; returns how many were loaded."""
    n = 0
    for path in session_files(manager.settings.storage):
        try:
            store, st = SessionStore.open(path)
        except StoreError as err:
            manager.load_errors.append(str(err))
            log.error("%s", err)
            continue
        with manager.lock:
            _restore_one(manager, store, st)
        n += 1
    with manager.lock:
        manager._active_gauge()
        endpoints = {s.endpoint for s in manager.sessions.values() if not s.terminal}
    for ep in endpoints:
        if manager.on_endpoint is not None:
            manager.on_endpoint(ep)
    return n


def _restore_one(manager, store: SessionStore, st: StoredSession) -> None:
    from service.manager import Binding

    choice = manager.planner_for(st.params["strategy"])
    s = Session(st.session_id, st.params, choice, store, state=st.state, error=st.error, created_unix=st.created_unix)
    s.positions_issued = st.positions_issued
    s.positions_used = np.where(np.isnan(st.positions_measured), st.positions_issued, st.positions_measured)
    s.received = st.received.copy()
    s.patterns = st.patterns.astype(np.float32)
    s.frames_received = s.frames_persisted = int(s.received.sum())
    done_batches = {r.batch_id for r in st.reconstructions}
    for bid in (np.unique(st.slot_batch) if len(st.slot_batch) else []):
        slots = np.flatnonzero(st.slot_batch == bid)
        b = Batch(int(bid), slots)
        if int(bid) in done_batches:
            b.status = "reconstructed"
        elif s.received[slots].all():
            b.status = "complete"
        s.batches.append(b)
        for series in {int(v) for v in st.slot_series[slots] if v >= 0}:
            sel = slots[st.slot_series[slots] == series]
            manager.bindings[(s.endpoint, series)] = Binding(s.session_id, int(bid), {int(st.slot_frame[i]): int(i) for i in sel})
    if st.reconstructions:
        last = st.reconstructions[-1]
        s.potential, s.grid_origin_nm, s.grid_pixel_nm, s.loss_history = last.potential, last.origin_nm, last.pixel_nm, last.loss_history
        s.n_reconstructed = len(st.reconstructions)
    manager.sessions[s.session_id] = s
    if s.terminal:
        store.close()
        return
    if s.pending_reconstruction() is not None or not s.batches or (s.current.status == "reconstructed" and s.n_issued < s.budget):
        s.state = "reconstructing" if s.pending_reconstruction() is not None else s.state
        manager._enqueue(s)
    elif s.current.status == "reconstructed":
        s.state = "done"
    elif s.state == "reconstructing":
        s.state = "acquiring"
    log.info("resumed session %s (%d/%d frames, state %s)", s.session_id, s.frames_received, s.budget, s.state)
