"""The session manager: the registry of sessions, the one lock over their state, and the compute worker's queue.

REST handlers, the ingest thread, the flusher and the compute worker call in. The rules
live elsewhere (``service.session``, ``service.tell``, ``service.routing``,
``service.restore``) and decide without side effects or raise ``SessionError``; the
manager looks sessions up, holds the lock, and applies what follows: file failures end
a session, metrics, the queue, waking asks. Nothing here computes (the worker
reconstructs and plans outside the lock and hands results back through ``publish``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import numpy as np

from service.compute import ReconOutput
from service.errors import ErrorKind, SessionError
from service.finished import FinishedSession
from service.manager_probe import ProbeNotes, record_late_probe
from service.manager_stream import StreamHandling
from service.metrics import ServiceMetrics
from service.planner import Planners
from service.prefault import Prefaulter
from service.probe_live import refinement_due, refinement_status, without_job
from service.restore import load_sessions
from service.routing import Buffered, FrameRouter, Key
from service.session import Binding, Session, SessionState
from service.settings import ServiceSettings
from service.spec import SessionSpec
from service.store import StoreError
from service.tell import apply_tell, check_tell, tell_body
from service.work import WorkItem, served, work_item

log = logging.getLogger(__name__)

NEW_RUN_WAIT_S = 2.0
"""How long a tell naming a series bound elsewhere waits for a restarted detector's header of that series (it may be behind the tell)."""


class SessionManager(StreamHandling, ProbeNotes):
    """Sessions in progress and finished, the lock that serialises every change to them, and the sessions queued for work."""

    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.lock = threading.RLock()
        self.work_ready = threading.Condition(self.lock)
        self.series_started = threading.Condition(self.lock)
        """notified on every series header (a tell may wait for a restarted detector's new run, ``NEW_RUN_WAIT_S``)."""
        self.sessions: dict[str, Session] = {}
        """sessions in progress (frames, batches and the latest reconstruction in memory)."""
        self.finished: dict[str, FinishedSession] = {}
        """done, stopped or failed sessions: a summary each, their files stay in storage."""
        self.router = FrameRouter(settings.max_buffered_frames, settings.max_buffered_bytes)
        """series bindings, the pre-tell buffer and per-endpoint error counts (``service.routing``)."""
        self.queue: list[str] = []
        self.accepting = True
        self.load_errors: list[str] = []
        self.storage_error: str | None = None
        self.storage_error_at: float | None = None
        self.on_endpoint = None
        """callback(endpoint) so the ingest connects to a session's detector."""
        self.on_change = None
        """callback() each time a session changes (``Session.on_change``): the live view's change feed."""
        self.on_batch_issued = None
        """callback() on each batch issued, lock held, must not block: the ingest connects its detector."""
        self.on_probe_wanted = None
        """callback(Session) when a session's probe retrieval is due (``Session.wants_probe_retrieval``), lock held, must not
        block: the retrieval is queued."""
        self.on_probe_refinement_wanted = None
        """callback(Session) when a session's probe refinement is due (``service.probe_live.refinement_due``), lock held, must
        not block: the refinement is queued (and False returned if it could not be)."""
        self.on_done = None
        """callback(FinishedSession) when a session ends done (and for each done one restored without its converged
        reconstruction), lock held, must not block: the converged reconstruction is queued."""
        self.planner_for = Planners(settings.policy_checkpoint)
        """strategy -> its planner (``PlannerChoice``), resolved once."""
        self.prefaulter = Prefaulter() if settings.prefault_session_memory else None
        """makes the frame memory of each issued batch resident off the ingest thread (``service.prefault``)."""
        self.decision_samples: deque[float] = deque(maxlen=10_000)
        """recent decision latencies (s): last frame of a chunk -> next batch published."""

    # --- helpers ---------------------------------------------------------------------

    @property
    def buffered_frames(self) -> int:
        """Frames of untold series held (all detectors)."""
        return self.router.buffered_frames

    @property
    def buffer(self) -> dict[Key, Buffered]:
        """Untold series held, oldest first."""
        return self.router.buffer

    @property
    def endpoint_errors(self) -> dict[str, dict[str, int]]:
        """Per endpoint, stream error counts no session took (and buffer overflows)."""
        return self.router.endpoint_errors

    def recent_storage_error(self, within_s: float = 60.0) -> str | None:
        """The last storage failure if it happened within ``within_s`` seconds (readiness reports it)."""
        if self.storage_error_at is not None and time.monotonic() - self.storage_error_at < within_s:
            return self.storage_error
        return None

    def get(self, sid: str) -> Session | FinishedSession:
        """Session ``sid``, in progress or finished (call with the lock held); refused (unknown-session) if there is none."""
        s = self.sessions.get(sid)
        if s is None:
            s = self.finished.get(sid)
        if s is None:
            raise SessionError(ErrorKind.UNKNOWN_SESSION, f"no session {sid!r}")
        return s

    def statuses(self) -> list[dict]:
        """The status of every session, in progress and finished."""
        with self.lock:
            return [s.status() for s in self.sessions.values()] + [f.status() for f in self.finished.values()]

    def reconstruction(self, sid: str, kind: str = "latest") -> tuple[np.ndarray, tuple[float, float], float, int, str]:
        """(potential (rad), grid origin (nm), pixel (nm), reconstructions so far, its kind) of session ``sid``.

        ``kind``: ``live`` (the latest chunk's), ``converged`` (a done session's converged reconstruction) or ``latest``
        (converged once made, else live). SessionError (wrong-state) if there is none of that kind yet.
        """
        with self.lock:
            s = self.get(sid)
            if isinstance(s, Session):
                if kind == "converged":
                    raise SessionError(ErrorKind.WRONG_STATE, f"session {sid} is {s.state}: a converged reconstruction is made once it is done")
                return (*s.reconstruction(), "live")
        return s.reconstruction(kind)  # a finished session's: read from its files, outside the lock

    def probe_report(self, sid: str) -> dict | None:
        """The probe retrieval's state and outcome of session ``sid`` (live or finished), None if none is known."""
        with self.lock:
            s = self.sessions.get(sid)
            if s is not None:
                return None if s.probe is None else dict(s.probe)
            f = self.finished.get(sid)
            return None if f is None else f.summary.get("probe")

    def note_converged(self, sid: str, info: dict) -> None:
        """Record the progress of a done session's converged reconstruction in its status (``ConvergedWorker``'s callback)."""
        with self.lock:
            f = self.finished.get(sid)
            if f is None:
                return
            f.summary["converged_reconstruction"] = info
            probe = info.get("probe") or {}
            if (f.summary.get("probe") or {}).get("source") != "retrieved" and (probe.get("source") == "retrieved" or probe.get("state") == "failed"):
                late = {"state": "done", **probe}  # retrieved (or failed) after the session ended, by this job: a restart must say so too
                record_late_probe(f, late, late)
            if self.on_change is not None:
                self.on_change()

    def _release(self, s: Session) -> None:
        """A session that ended leaves memory: its file is closed, a summary answers for it, its series are forgotten."""
        if self.sessions.get(s.session_id) is not s:
            return
        del self.sessions[s.session_id]
        if s.state != SessionState.DONE:  # stopped or failed: its probe job is skipped (``probe_job_wanted``) or its result discarded
            s.probe = without_job(s.probe)
        finished = self.finished[s.session_id] = FinishedSession.of(s)
        s.close()
        if finished.state == SessionState.DONE and self.on_done is not None:
            self.on_done(finished)
        self.router.session_ended(s.session_id)
        if s.session_id in self.queue:
            self.queue.remove(s.session_id)

    def _active_gauge(self) -> None:
        self.metrics.sessions_active.set(sum(1 for s in self.sessions.values() if not s.terminal))

    def _enqueue(self, s: Session) -> None:
        if s.session_id not in self.queue:
            self.queue.append(s.session_id)
        self.metrics.recon_queue.set(len(self.queue))
        self.work_ready.notify_all()

    def has_work(self) -> bool:
        """Some session's chunk is queued for the compute worker."""
        with self.lock:
            return bool(self.queue)

    def is_active(self, session_id: str) -> bool:
        """The session exists and is not done, stopped or failed."""
        with self.lock:
            s = self.sessions.get(session_id)
            return s is not None and not s.terminal

    def fail_unserved(self, item: WorkItem, message: str) -> None:
        """Fail ``item``'s session if the compute worker's round broke off before serving it (``service.work.served``);
        one the round did serve goes on, queued again if it awaits more work (its next chunk completed meanwhile, or its
        publish broke off before queueing it)."""
        with self.lock:
            s = self.sessions.get(item.session_id)
            if s is None or s.terminal:
                return
            if not served(s, item):
                self._fail(s, message)
                return
            if s.awaits_work:
                self._enqueue(s)
            s.notify()  # its publish may have broken off after issuing the next batch and before waking its asks

    def _storage_failed(self, err: StoreError) -> None:
        """Count a storage failure and keep it for readiness (``recent_storage_error``)."""
        self.metrics.storage_errors.inc()
        self.storage_error, self.storage_error_at = str(err), time.monotonic()

    def _fail(self, s: Session, err: Exception | str) -> None:
        """Session ``s`` failed (a storage or worker error): it ends, its asks wake, it leaves memory."""
        log.error("session %s failed: %s", s.session_id, err)
        if isinstance(err, StoreError):
            self._storage_failed(err)
        s.fail(str(err))
        s.notify()
        self._release(s)
        self._active_gauge()

    # --- sessions --------------------------------------------------------------------

    def create(self, params: dict) -> dict:
        """A new session for request ``params`` (``SessionCreate`` fields), queued to plan its first batch; its status."""
        with self.lock:
            if not self.accepting:
                raise SessionError(ErrorKind.SHUTTING_DOWN, "the service is shutting down and takes no new sessions", retry_after_s=self.settings.retry_after_s)
            if sum(1 for s in self.sessions.values() if not s.terminal) >= self.settings.max_sessions:
                raise SessionError(ErrorKind.TOO_MANY_SESSIONS, f"{self.settings.max_sessions} sessions are active already (max_sessions)")
            if (refusal := SessionSpec.from_params(params).limit_error(self.settings)) is not None:
                raise SessionError(ErrorKind.INVALID_REQUEST, refusal)
            try:
                s = Session.create(self.settings.storage, params, self.planner_for(params["strategy"]), self.settings.compressed_patterns)
            except StoreError as err:
                self._storage_failed(err)
                raise SessionError(ErrorKind.STORAGE_UNAVAILABLE, str(err)) from None
            self.sessions[s.session_id] = s
            s.on_change = self.on_change
            s.on_rows = self.prefaulter.request if self.prefaulter is not None else None
            self._enqueue(s)  # plans the first batch
            self._active_gauge()
            status = s.status()
        if self.on_endpoint is not None:
            self.on_endpoint(params["detector_endpoint"])
        return status

    def delete(self, sid: str) -> dict:
        """Stop session ``sid`` (a finished one stays as it is); its status."""
        with self.lock:
            s = self.get(sid)
            if isinstance(s, Session):
                s.stop()
                s.notify()
                self._release(s)
            self._active_gauge()
            return self.get(sid).status()

    # --- ask / tell ------------------------------------------------------------------

    def try_ask(self, sid: str, waiter=None) -> dict | None:
        """The batch to acquire now, ``done``, or None (then ``waiter`` = (loop, asyncio.Event) is woken on change)."""
        with self.lock:
            s = self.get(sid)
            answer = s.ask()
            if answer is None and waiter is not None:
                s.waiters.append(waiter)
            return answer

    def tell(self, sid: str, batch_id: int, series: int, measured: list | None) -> tuple[int, dict]:
        """Bind batch ``batch_id``'s missing slots to detector ``series`` (frame i -> i-th missing slot): (202, body).

        A repeat of the tell that bound the batch (also after a restart or after the series
        ended short, or reaching a session that finished meanwhile) answers (200, body) and
        changes nothing; ``service.tell.check_tell`` says which tells are refused. The series'
        frames buffered before the tell are stored now.
        """
        with self.lock:
            if (live := self.sessions.get(sid)) is not None and (old := self.router.binding((live.endpoint, series))) is not None:
                if (old.session_id, old.batch_id) != (sid, batch_id) and old.run_begun:  # a new run's header may be behind this tell
                    self.series_started.wait_for(lambda: self.router.binding((live.endpoint, series)) is not old, NEW_RUN_WAIT_S)
            s = self.get(sid)
            if not isinstance(s, Session):
                if (body := s.repeated_tell(batch_id, series)) is not None:
                    return 200, body  # a repeat reaching a session that finished meanwhile (e.g. during a restart)
                raise SessionError(ErrorKind.WRONG_STATE, f"session {sid} is {s.state}")
            key = (s.endpoint, series)
            tell = check_tell(s, batch_id, series, measured, self.router.binding(key))
            if tell.repeat:
                return 200, tell_body(s, tell)
            try:
                s.store.bind(tell.slots, series, tell.measured, batch_id)
            except StoreError as err:
                self._fail(s, err)
                raise SessionError(ErrorKind.STORAGE_UNAVAILABLE, str(err)) from None
            buffered = self.router.bind(key, apply_tell(s, tell))
            if buffered is not None:
                self.metrics.buffered_frames.set(self.router.buffered_frames)
                for kind, msg in buffered.errors:
                    s.note_error(kind, msg)
                stale = 0
                handed_out = s.batches[batch_id].handed_out_at
                for idx in sorted(buffered.frames):
                    for image, arrived in buffered.frames[idx]:
                        if handed_out is not None and arrived < handed_out:
                            stale += 1  # taken before the client had these positions: an earlier run's frame of this series number
                        elif self._store_frame(key, idx, image, arrived):
                            break
                if stale:
                    s.note_error("unexpected", f"series {series}: {stale} frame(s) held from before batch {batch_id} was handed out dropped")
                    self.metrics.stream_errors.labels("stale_series").inc(stale)
                if buffered.ended and stale:  # an earlier run's end may not be this run's: re-issued if no frame comes in time
                    s.batches[batch_id].stall_deadline = time.monotonic() + self.settings.resume_told_timeout_s
                elif buffered.ended:
                    self._series_end(key)
            return 202, tell_body(s, tell)

    # --- compute worker side -----------------------------------------------------------

    def take_work(self, timeout: float) -> list[WorkItem]:
        """Everything queued, as jobs (waits up to ``timeout`` s for work)."""
        with self.lock:
            if not self.queue:
                self.work_ready.wait(timeout)
            items = []
            now = time.perf_counter()
            for sid in self.queue:
                s = self.sessions.get(sid)
                if s is None or s.terminal:
                    continue
                item = work_item(s)
                if item.job is not None and item.last_frame_at is not None:
                    self.metrics.decision_wait_seconds.observe(now - item.last_frame_at)
                items.append(item)
            self.queue.clear()
            self.metrics.recon_queue.set(0)
            return items

    def publish(self, item: WorkItem, recon: ReconOutput | None, positions: np.ndarray | None, error: str | None = None,
                hold_reconstruction: bool = False) -> None:
        """Apply a worker's result (``Session.record_result``): store the reconstruction, issue the next batch (or finish), wake asks.

        ``hold_reconstruction``: a decision's reconstruction goes to the file at ``write_held`` (the round's batches first)."""
        with self.lock:
            s = self.sessions.get(item.session_id)
            if s is None or s.terminal:
                return
            if error is not None:
                self._fail(s, error)
                return
            n_batches, failed = len(s.batches), None
            try:
                s.record_result(item.batch_id, recon, positions, hold_reconstruction)
            except StoreError as err:
                failed = err
            if len(s.batches) > n_batches:  # a batch was issued (counted even if the file failed after it)
                self.metrics.batches_issued.inc()
                if self.on_batch_issued is not None:
                    self.on_batch_issued()
                if item.last_frame_at is not None:
                    latency = time.perf_counter() - item.last_frame_at
                    self.metrics.decision_seconds.observe(latency)
                    self.decision_samples.append(latency)
                    if item.batch_id is not None:
                        s.batches[item.batch_id].decision_latency_s = latency
            if failed is not None:
                self._fail(s, failed)
                return
            if s.state == SessionState.DONE:
                s.notify()
                self._release(s)
                self._active_gauge()
                return
            if s.pending_reconstruction() is not None:
                self._enqueue(s)
            if self.on_probe_wanted is not None and s.wants_probe_retrieval(self.settings.probe_retrieval_frames):
                s.probe = {"state": "queued"}
                self.on_probe_wanted(s)
            elif self.on_probe_refinement_wanted is not None and refinement_due(
                s.probe, s.frames_received, self.settings.probe_refinement_frames, self.settings.probe_refinements_max
            ):
                previous = s.probe
                s.probe = refinement_status(s.probe, {"state": "queued", "frames": s.frames_received})
                if not self.on_probe_refinement_wanted(s):
                    s.probe = previous
            s.notify()

    def write_held(self, session_id: str) -> None:
        """Write the reconstruction ``publish`` held back for ``session_id`` (nothing if it ended meanwhile); a file error fails it."""
        with self.lock:
            s = self.sessions.get(session_id)
            if s is not None and not s.terminal:
                try:
                    s.write_held_reconstruction()
                except StoreError as err:
                    self._fail(s, err)

    def restore(self) -> int:
        """Load the session files in storage (``service.restore.load_sessions``); returns how many were loaded.

        An unfinished session is rebuilt (frames, batches, series bindings, latest
        reconstruction) and resumed; of a finished one only a summary is read. A file that
        cannot be loaded is logged and listed in ``load_errors`` (readiness reports them).
        """
        loaded, errors = load_sessions(self.settings.storage, self.planner_for)
        self.load_errors.extend(errors)
        with self.lock:
            missing = []
            for item in loaded:
                if isinstance(item, FinishedSession):
                    self.finished[item.session_id] = item
                    if item.state == SessionState.DONE and not item.has_converged():
                        missing.append(item)
                else:
                    self.adopt(*item)
            if self.on_done is not None:
                self._queue_backlog(missing)
            self._active_gauge()
            endpoints = {s.endpoint for s in self.sessions.values()}
        if self.on_endpoint is not None:
            for ep in endpoints:
                self.on_endpoint(ep)
        return len(loaded)

    def _queue_backlog(self, missing: list[FinishedSession]) -> None:
        """Queue the converged reconstructions of the ``recon_converged_backlog`` most recent of ``missing`` (lock held)."""
        missing.sort(key=lambda f: f.summary.get("created_unix") or 0.0, reverse=True)
        keep = self.settings.recon_converged_backlog
        for item in missing[:keep]:
            self.on_done(item)
        if len(missing) > keep:
            log.warning("%d older done sessions have no converged reconstruction and are not queued (recon_converged_backlog %d); "
                        "make one with: ptychoscan reconstruct FILE --converged", len(missing) - keep, keep)

    def adopt(self, s: Session, bindings: dict[int, Binding]) -> None:
        """Take over a session rebuilt from its file and its series bindings; queue the work it awaits."""
        with self.lock:
            self.sessions[s.session_id] = s
            s.on_change = self.on_change
            s.on_rows = self.prefaulter.request if self.prefaulter is not None else None
            self.router.adopt(s.endpoint, bindings)
            if s.terminal:  # found finished at restore (``service.restore.load_session``)
                self._release(s)
                return
            s.set_stall_deadline(time.monotonic() + self.settings.resume_told_timeout_s)
            if s.awaits_work:
                self._enqueue(s)
            log.info("resumed session %s (%d/%d frames, state %s)", s.session_id, s.frames_received, s.budget, s.state)

    def close(self) -> None:
        """Take no new sessions, wake every ask and close every file (shutdown)."""
        if self.prefaulter is not None:
            self.prefaulter.stop()
        with self.lock:
            self.accepting = False
            for s in list(self.sessions.values()):  # SessionStore.close never raises: one full disk must not leave the other files open
                s.notify()
                try:  # a round stopped between its next batches and their reconstructions (shutdown timed out)
                    s.write_held_reconstruction()
                except StoreError as err:
                    log.error("%s", err)
                s.store.close()
