"""What the live view reads that the session status does not carry: every position with its sub-sequence, the session's file.

A session in progress answers from memory (under the manager's lock); a finished one
from its file (closed, read outside the lock), as its reconstruction is.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from service.errors import ErrorKind, SessionError
from service.finished import FinishedSession
from service.manager import SessionManager
from service.session import Session


def positions_view(s: Session) -> dict:
    """Session ``s``'s positions, nm, by slot: where each frame was (or will be) taken, its batch, whether its frame is in."""
    batch = np.full(s.n_issued, -1, np.int64)
    for b in s.batches:
        batch[b.slots] = b.batch_id
    cur = s.current
    return {
        "session_id": s.session_id,
        "fov_nm": list(s.fov),
        "positions_nm": s.positions_used.tolist(),
        "batch": batch.tolist(),
        "received": s.received[: s.n_issued].astype(bool).tolist(),
        "latest_batch": None if cur is None else cur.batch_id,
    }


def read_positions(f: FinishedSession) -> dict:
    """``positions_view`` of a finished session, read from its file (SessionError storage-unavailable if it cannot be read)."""
    try:
        with h5py.File(f.path, "r") as h5:
            positions = np.asarray(h5["positions_nm"][()], np.float64)
            batch = np.asarray(h5["slot_batch"][()], np.int64)
            received = np.asarray(h5["received"][()], bool)
    except (OSError, KeyError) as err:
        raise SessionError(ErrorKind.STORAGE_UNAVAILABLE, f"cannot read {f.path.name}: {err}") from None
    return {
        "session_id": f.session_id,
        "fov_nm": [float(v) for v in f.summary["params"]["fov_nm"]],
        "positions_nm": positions.tolist(),
        "batch": batch.tolist(),
        "received": received.tolist(),
        "latest_batch": int(batch.max()) if batch.size else None,
    }


def session_positions(manager: SessionManager, sid: str) -> dict:
    """The positions of session ``sid``, in progress or finished (SessionError unknown-session if there is none)."""
    with manager.lock:
        s = manager.get(sid)
        if isinstance(s, Session):
            return positions_view(s)
    return read_positions(s)


def session_file(manager: SessionManager, sid: str) -> Path:
    """The file of finished session ``sid``, to download.

    Refused while the session is in progress (wrong-state: the file is being written, a
    copy taken now could be torn) and when the file is gone (storage-unavailable).
    """
    with manager.lock:
        s = manager.get(sid)
        if isinstance(s, Session):
            raise SessionError(ErrorKind.WRONG_STATE, f"session {sid} is {s.state}: its file is being written; stop it or wait until it ends")
        path = s.path
    if not path.is_file():
        raise SessionError(ErrorKind.STORAGE_UNAVAILABLE, f"the file of session {sid} ({path.name}) is missing from storage")
    return path


def statuses_by_id(manager: SessionManager, sid: str | None = None) -> dict[str, dict]:
    """Session id -> status, every session's or only ``sid``'s (SessionError unknown-session if there is no such session)."""
    with manager.lock:
        if sid is not None:
            return {sid: manager.get(sid).status()}
        return {st["session_id"]: st for st in manager.statuses()}


def service_view(manager: SessionManager, ingest_status: dict) -> dict:
    """What the live view shows of the service as a whole: each detector stream, untold frames held, errors no session took."""
    with manager.lock:
        return {
            "ingest": ingest_status,
            "buffered_frames": manager.buffered_frames,
            "endpoint_errors": {ep: dict(counts) for ep, counts in manager.endpoint_errors.items()},
            "accepting_sessions": manager.accepting,
        }
