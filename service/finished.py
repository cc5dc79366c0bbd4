"""Finished sessions (done, stopped, failed) as small summaries: their frames leave memory, their files stay.

A finished session answers ``GET /sessions/{id}`` from the summary it left (a few
hundred bytes) and ``GET .../reconstruction`` by reading its file's latest
reconstruction on request. A restart reads only such a summary from the file of a
finished session, never its frames.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.converged_store import ConvergedStoreError, converged_path, read_converged, read_converged_recipe
from service.errors import ErrorKind, SessionError
from service.session import Session, SessionState
from service.spec import Beam
from service.store import StoredReconstruction, StoreError
from service.store_read import SessionSummary, read_latest_reconstruction

log = logging.getLogger(__name__)


def late_probe_path(path: Path) -> Path:
    """``<id>.probe.json`` beside the session file ``<id>.h5``: the session's probe as a probe job or its converged reconstruction
    left it after the session had ended (``FinishedSession.record_probe``); it overrides the file's ``probe`` attribute."""
    return Path(path).with_suffix(".probe.json")


def _late_probe(path: Path) -> dict | None:
    """The probe ``record_probe`` left for the session in ``path``; None if there is none (or it is unreadable: logged)."""
    try:
        probe = json.loads(late_probe_path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.error("session file %s: its late probe record is unreadable (%s); using the file's own", path, err)
        return None
    return probe if isinstance(probe, dict) else None


def _converged_recipe(path: Path) -> dict:
    """The recipe of the converged reconstruction of the session in ``path``; {} if none or unreadable (the status then says less)."""
    try:
        return read_converged_recipe(path) or {}
    except ConvergedStoreError:
        return {}


def _converged_probe(recipe: dict, params: dict) -> dict:
    """The retrieved probe (status shape) a converged reconstruction's ``recipe`` was made with; nominal if unknown."""
    aberrations, source = recipe.get("probe_aberrations"), recipe.get("probe_source", "retrieved")  # files before probe_source: retrieved
    nominal = Beam.from_params(params)
    if aberrations is None or source != "retrieved":  # e.g. the retrieval failed and the nominal probe was used
        return nominal.report()
    return nominal.with_reported(aberrations).report("retrieved")


@dataclass
class FinishedSession:
    """A session that will not change any more: its status as it ended, and where its file is."""

    session_id: str
    state: SessionState
    error: str | None
    path: Path
    summary: dict
    """the status body (``Session.status`` shape)."""
    tells: dict[int, tuple[int, int]]
    """batch id -> (series of its last tell, positions it bound)."""

    terminal = True

    def status(self) -> dict:
        return dict(self.summary)

    def note_error(self, kind: str, message: str) -> None:
        """Count a stream problem attributed to this session after it ended (a late frame of one of its series)."""
        counts = self.summary["stream_errors"] = dict(self.summary.get("stream_errors") or {})
        counts[kind] = counts.get(kind, 0) + 1
        recent = self.summary["recent_errors"] = list(self.summary.get("recent_errors") or [])[-19:]
        recent.append({"kind": kind, "detail": message, "at_unix": round(time.time(), 3)})

    def record_probe(self, probe: dict) -> None:
        """The session's ``probe`` (status shape) after a probe job or converged reconstruction that ended after the session did:
        in the summary and in ``late_probe_path`` beside the closed file (a restart reads it back; StoreError if it cannot be
        written, the summary has it). Not in the session file itself: that stays as it was when the session ended (a reader or a
        download may have it open, and HDF5 refuses to open it for writing then)."""
        self.summary["probe"] = probe
        target = late_probe_path(self.path)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            tmp.write_text(json.dumps(probe))
            os.replace(tmp, target)  # whole or not at all
        except OSError as err:
            raise StoreError(f"session {self.session_id}: could not record the probe in {target}: {err}") from err

    def ask(self) -> dict:
        """The answer to an ask: ``done``; refused (wrong-state) if the session was stopped or failed."""
        if self.state != SessionState.DONE:
            raise SessionError(ErrorKind.WRONG_STATE, f"session {self.session_id} is {self.state}" + (f": {self.error}" if self.error else ""))
        return {"batch_id": None, "positions_nm": [], "done": True}

    def repeated_tell(self, batch_id: int, series: int) -> dict | None:
        """The 200 body for a repeat of a tell this session (done) recorded, None if it is not one."""
        told = self.tells.get(batch_id)
        if self.state != SessionState.DONE or told is None or told[0] != series:
            return None
        return {"batch_id": batch_id, "series": series, "accepted": True, "frames_expected": told[1], "frames_received": told[1]}

    def latest_reconstruction(self) -> tuple[StoredReconstruction, int] | None:
        """(the latest reconstruction, how many there are), read from the file; None if there is none (StoreError if unreadable)."""
        return read_latest_reconstruction(self.path)

    def has_converged(self) -> bool:
        """Its converged reconstruction (``service.converged``) is on disk."""
        return converged_path(self.path).exists()

    def reconstruction(self, kind: str = "latest") -> tuple[np.ndarray, tuple[float, float], float, int, str]:
        """(potential (rad), grid origin (nm), pixel (nm), reconstructions, its kind), read from its files (not under the manager's lock).

        ``kind``: ``live`` (the last chunk's), ``converged`` or ``latest`` (converged once it is made, else live). Refused if
        there is none of that kind (wrong-state) or a file cannot be read (storage-unavailable).
        """
        try:
            latest = self.latest_reconstruction()
            converged = read_converged(self.path) if self.state == SessionState.DONE and kind != "live" else None
        except (StoreError, ConvergedStoreError) as err:
            raise SessionError(ErrorKind.STORAGE_UNAVAILABLE, str(err)) from None
        if converged is not None:
            n = latest[1] if latest is not None else 0
            return converged.potential, converged.origin_nm, converged.pixel_nm, n, "converged"
        if kind == "converged":
            state = (self.summary.get("converged_reconstruction") or {}).get("state", "not asked for")
            raise SessionError(ErrorKind.WRONG_STATE, f"session {self.session_id} ({self.state}) has no converged reconstruction ({state})")
        if latest is None:
            raise SessionError(ErrorKind.WRONG_STATE, f"session {self.session_id} has no reconstruction")
        rec, n = latest
        return rec.potential, rec.origin_nm, rec.pixel_nm, n, "live"

    @classmethod
    def of(cls, s: Session) -> FinishedSession:
        """The summary a session leaves when it ends (called with its state already terminal)."""
        tells = {b.batch_id: (b.series, len(b.told_slots)) for b in s.batches if b.series is not None and b.told_slots is not None}
        return cls(s.session_id, SessionState(s.state), s.error, s.store.path, s.status(), tells)

    @classmethod
    def from_file(cls, summary: SessionSummary, path: Path) -> FinishedSession:
        """The summary of a finished session's file (a restart: nothing but attributes and counts are read)."""
        planner = summary.planner
        status = {
            "session_id": summary.session_id,
            "state": summary.state,
            "error": summary.error,
            "params": summary.params,
            "strategy": {
                "requested": planner.get("requested"),
                "used": planner.get("used"),
                "planner_version": planner.get("version"),
                "fallback": planner.get("fallback"),
            },
            "budget": int(summary.params["budget"]),
            "positions_issued": summary.positions_issued,
            "frames_received": summary.frames_received,
            "frames_persisted": summary.frames_received,
            "batches_issued": summary.batches_issued,
            "batches_reconstructed": summary.batches_reconstructed,
            "current_batch": None,
            "stream_errors": {},
            "recent_errors": [],
            "reconstruction": summary.reconstruction,
            "probe": summary.probe or Beam.from_params(summary.params).report("nominal"),
            "created_unix": summary.created_unix,
            "file": Path(path).name,
        }
        if summary.state == SessionState.DONE.value and converged_path(path).exists():
            status["converged_reconstruction"] = {"state": "done"}
            probe_after_end = summary.probe is None and summary.params.get("probe") == "retrieve"
            if probe_after_end or summary.params.get("position_correction"):  # only these need its recipe (a file read at start-up)
                recipe = _converged_recipe(path)
                if recipe.get("positions_moved") is not None:
                    status["converged_reconstruction"]["positions"] = recipe["positions_moved"]
                if probe_after_end:  # retrieved after the session ended: only its converged reconstruction recorded it
                    status["probe"] = _converged_probe(recipe, summary.params)
        if (late := _late_probe(path)) is not None:  # a probe job or converged reconstruction that ended after the session did
            status["probe"] = late
        return cls(summary.session_id, SessionState(summary.state), summary.error, Path(path), status, dict(summary.tells))
