"""A live session's probe as the scan goes on: when a refinement is due, and how its outcome enters the status.

The status's ``probe`` (``Session.probe``; the session file's ``probe`` attribute is the
same dict) has one shape after the first retrieval and after any refinement, whichever
method refined (``probe_refinement_method``): the aberrations in use (defocus_nm,
astigmatism_nm, astigmatism_angle_deg, cs_um), and of the job that made them ``loss``,
``positions_used``, ``evaluations``, ``seconds``, ``frames`` (the session's frames that job
had) and ``landed_frames`` (the session's when it landed); ``refinements`` (how many
succeeded), ``refinement_attempts`` (how many ended, done or failed), ``history`` (one
entry per retrieval / refinement, done or failed, the last ``HISTORY_LENGTH``: a done one
has the same job fields) and, while one is queued or running or after one failed,
``refinement`` (its ``state``, ``frames`` and, failed, ``error``). ``loss``: the final
data loss of a reconstruction (Nelder-Mead: the best-scored point's short one; gradient:
its one reconstruction's last pass), comparable only between jobs on the same positions;
``evaluations``: Nelder-Mead: aberration sets scored, one short reconstruction each;
gradient: probe updates (``recon.probe_refinement``). These functions only
build and read such dicts; ``service.manager`` holds the lock and applies them. A session
stopped (deleted) or failed forgets its queued or running probe job (``without_job``): the
job is skipped when its turn comes, a running one's result is discarded.
"""

from __future__ import annotations

from typing import Any

HISTORY_LENGTH = 12
"""entries kept in the status's ``probe.history`` (the first retrieval and the latest refinements)."""

ABERRATION_KEYS = ("defocus_nm", "astigmatism_nm", "astigmatism_angle_deg", "cs_um")
JOB_KEYS = ("loss", "positions_used", "evaluations", "seconds")
"""a done probe job's fields besides its aberrations and frames, in the status's ``probe`` and in each ``history`` entry."""


def history_entry(kind: str, report: dict[str, Any]) -> dict[str, Any]:
    """One ``history`` entry: kind (retrieval or refinement), state, frames (the session's when the job was queued: those it
    used), landed_frames (the session's when its outcome came: from then on it was used), and for a done job its aberrations,
    loss, positions_used, evaluations, seconds; for a failed one its error."""
    entry: dict[str, Any] = {"kind": kind, "state": report.get("state"), "frames": report.get("frames"),
                             "landed_frames": report.get("landed_frames")}
    if report.get("state") == "done":
        entry |= {k: report[k] for k in (*ABERRATION_KEYS, *JOB_KEYS) if k in report}
    else:
        entry["error"] = report.get("error")
    return entry


def with_history(history: list[dict[str, Any]], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """``history`` plus ``entry``, the first entry (the retrieval) always kept, at most ``HISTORY_LENGTH`` in all."""
    out = [*history, entry]
    if len(out) > HISTORY_LENGTH:
        out = out[:1] + out[len(out) - HISTORY_LENGTH + 1:]
    return out


def retrieval_status(report: dict[str, Any]) -> dict[str, Any]:
    """The status's ``probe`` once the first retrieval reports ``report`` (queued / running / done / failed)."""
    if report.get("state") not in ("done", "failed"):
        return dict(report)
    return {**report, "refinements": 0, "refinement_attempts": 0, "history": [history_entry("retrieval", report)]}


def refinement_due(probe: dict[str, Any] | None, frames_received: int, every: int | None, max_refinements: int) -> bool:
    """A refinement should be queued: the first retrieval is done, no refinement is queued or running, fewer than
    ``max_refinements`` ended (done or failed), and ``every`` frames came in since the last probe job's (None or 0: never)."""
    if not every or probe is None or probe.get("state") != "done":
        return False
    last = probe.get("refinement") or {}
    if last.get("state") in ("queued", "running"):
        return False
    if int(probe.get("refinement_attempts", 0)) >= max_refinements:
        return False
    since = max(int(probe.get("frames") or probe.get("positions_used") or 0), int(last.get("frames") or 0))
    return frames_received >= since + every


def refinement_status(probe: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """The status's ``probe`` after a refinement reports ``report``: queued / running mark it; done replaces the aberrations
    (and loss, positions, frames, seconds) and counts it; failed keeps the probe in use and says why; both add to ``history``."""
    state = report.get("state")
    out = dict(probe)
    if state in ("queued", "running"):
        out["refinement"] = {"state": state, "frames": report.get("frames", (probe.get("refinement") or {}).get("frames"))}
        return out
    if state == "dropped":
        out.pop("refinement", None)
        return out
    out["history"] = with_history(list(probe.get("history", [])), history_entry("refinement", report))
    out["refinement_attempts"] = int(probe.get("refinement_attempts", 0)) + 1
    if state == "done":
        out |= {k: report[k] for k in (*ABERRATION_KEYS, *JOB_KEYS, "frames", "landed_frames") if k in report}
        out["refinements"] = int(probe.get("refinements", 0)) + 1
        out["refinement"] = {"state": "done", "frames": report.get("frames")}
    else:
        out["refinement"] = {"state": "failed", "frames": report.get("frames"), "error": report.get("error")}
    return out


def without_job(probe: dict[str, Any] | None) -> dict[str, Any] | None:
    """The status's ``probe`` with a queued or running probe job forgotten (its session was stopped or failed): a retrieval not
    done yet leaves None (the nominal probe), a refinement leaves the probe in use as it was."""
    if probe is None or probe.get("state") in ("queued", "running"):
        return None
    if (probe.get("refinement") or {}).get("state") in ("queued", "running"):
        return refinement_status(probe, {"state": "dropped"})
    return probe


def landed(report: dict[str, Any], frames_received: int | None) -> dict[str, Any]:
    """``report`` of a probe job that ended (done or failed) with ``landed_frames``: the session's frames when it came."""
    if report.get("state") in ("done", "failed") and frames_received is not None:
        return {**report, "landed_frames": int(frames_received)}
    return report
