"""Probe jobs reporting back to the sessions (``service.probe_job``'s callbacks), for ``SessionManager``.

A mixin: the methods use the manager's ``lock``, ``sessions``, ``finished`` and ``on_change``.
"""

from __future__ import annotations

import logging

from service.probe_live import landed, refinement_status, retrieval_status
from service.session import SessionState
from service.store import StoreError

log = logging.getLogger(__name__)


class ProbeNotes:
    """Probe retrieval and refinement progress applied to live and finished sessions (see the module docstring)."""

    def note_probe(self, sid: str, beam, report: dict) -> None:
        """Record a probe retrieval's progress (``service.probe_job``'s callback): in the session's status, its beam once
        retrieved, its file once done or failed. ``dropped`` (the service stopped first) forgets it: a restart queues it again.
        A session that ended done meanwhile gets it as for ``note_probe_refinement``; one stopped or failed does not."""
        with self.lock:
            s = self.sessions.get(sid)
            if s is not None:
                report = landed(report, s.frames_received)
                s.probe = None if report.get("state") == "dropped" else retrieval_status(report)
                if beam is not None:
                    s.retrieved_beam = beam
                if report.get("state") in ("done", "failed"):
                    try:
                        s.store.set_probe(s.probe)
                    except StoreError as err:  # the session goes on with the probe in memory; a restart would retrieve it again
                        log.error("%s", err)
                s.notify()
                return
            f = self.finished.get(sid)
            if f is not None and f.state == SessionState.DONE and report.get("state") != "dropped":
                record_late_probe(f, retrieval_status(landed(report, f.summary.get("frames_received"))), report)
                if self.on_change is not None:
                    self.on_change()

    def note_probe_refinement(self, sid: str, beam, report: dict) -> None:
        """Record a probe refinement's progress (``service.probe_job.refinement_job``'s callback): the status's ``probe``
        (``service.probe_live.refinement_status``), the session's beam once refined, its file once done or failed. A session
        that ended done meanwhile gets it in its summary (its converged reconstruction, queued after, uses it); one stopped or
        failed does not."""
        with self.lock:
            s = self.sessions.get(sid)
            if s is not None and s.probe is not None:
                s.probe = refinement_status(s.probe, landed(report, s.frames_received))
                if beam is not None:
                    s.retrieved_beam = beam
                if report.get("state") in ("done", "failed"):
                    try:
                        s.store.set_probe(s.probe)
                    except StoreError as err:  # the session goes on with the probe in memory
                        log.error("%s", err)
                s.notify()
                return
            f = self.finished.get(sid)
            if f is not None and f.state == SessionState.DONE and f.summary.get("probe") is not None:
                record_late_probe(f, refinement_status(f.summary["probe"], landed(report, f.summary.get("frames_received"))), report)
                if self.on_change is not None:
                    self.on_change()

    def probe_job_wanted(self, sid: str) -> bool:
        """A probe job of session ``sid`` is worth running: the session is live or done (its converged reconstruction uses it)."""
        with self.lock:
            s = self.sessions.get(sid) or self.finished.get(sid)
            return s is not None and s.state not in (SessionState.STOPPED, SessionState.FAILED)


def record_late_probe(f, probe: dict, report: dict) -> None:
    """A probe job (or converged reconstruction) of a session that ended meanwhile reported (lock held): its summary gets
    ``probe``; a done or failed job's outcome is also recorded beside the closed file (``FinishedSession.record_probe``),
    so that a restart keeps it."""
    if report.get("state") in ("done", "failed"):
        try:
            f.record_probe(probe)
        except StoreError as err:  # the summary has it until a restart
            log.error("%s", err)
    else:
        f.summary["probe"] = probe
