"""Converged end-of-session reconstructions: every frame of a done session once more, with the evaluation's final recipe.

The live reconstruction a session ends on is the planner's working image (a few
mini-batch passes, warm-started chunk by chunk): it shows where the scan went more than
the specimen. When a session is done, this worker reconstructs all its frames from zero
with the same recipe ``ptychoscan evaluate`` and ``ptychoscan reconstruct --converged``
use (full-batch gradient descent with Nesterov momentum, passes set by the position
count, a diverged run retried with half the step) and stores it beside the session file
(``service.converged_store``). The reconstruction route then serves it.

It yields to decisions: between passes it waits while any session's chunk is queued or
being reconstructed, so a decision waits for at most one pass of it. Jobs run one at a
time, oldest first. A job the service is stopped in the middle of is dropped and made
again after a restart (a done session without its converged file is queued at start).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from service.compute import ReconJob, ReconOutput
from service.converged_store import ConvergedReconstruction, read_measured_frames, write_converged
from service.spec import Beam

log = logging.getLogger(__name__)


class ConvergedState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class ConvergedRequest:
    """A done session to reconstruct: its file (closed), beam and field of view (nm)."""

    session_id: str
    session_file: Path
    beam: Beam
    fov_nm: tuple[float, float, float, float]


ConvergedRun = Callable[[ReconJob, Callable[[int], None]], tuple[ReconOutput, dict]]
"""(the job, a callback after every pass) -> (the output, the recipe used); ``TorchReconBackend.converged``."""


class Stopped(Exception):
    """The service is stopping: the job in progress is dropped (a restart makes it again)."""


class ConvergedWorker:
    """One background thread making converged reconstructions of done sessions.

    Args:
        run: the reconstruction itself (``TorchReconBackend.converged``).
        busy: True while a decision's reconstruction is queued or running (the worker waits between passes).
        on_state: called with (session id, status dict) on every change: ``state`` (a ``ConvergedState``),
            and ``passes``, ``final_loss`` when done or ``error`` when failed.
        poll_s: how often a waiting worker looks again, s.
    """

    def __init__(self, run: ConvergedRun, busy: Callable[[], bool], on_state: Callable[[str, dict], None], poll_s: float = 0.02) -> None:
        self._run_job = run
        self._busy = busy
        self._on_state = on_state
        self._poll_s = poll_s
        self._queue: deque[ConvergedRequest] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.completed = 0
        self.current: str | None = None

    def submit(self, request: ConvergedRequest) -> None:
        """Queue a done session (once: a second submit of a queued or running session is ignored)."""
        with self._cond:
            if request.session_id == self.current or any(r.session_id == request.session_id for r in self._queue):
                return
            self._queue.append(request)
            self._cond.notify_all()
        self._on_state(request.session_id, {"state": ConvergedState.QUEUED.value})

    @property
    def pending(self) -> int:
        """Sessions queued or in progress."""
        with self._cond:
            return len(self._queue) + (self.current is not None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="converged-recon", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the pass in flight; the job in progress and those queued are dropped (made again after a restart)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            if self._queue:
                log.info("stopping with %d converged reconstruction(s) queued; they are made after a restart", len(self._queue))
            self._queue.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait(0.5)
                if self._stop.is_set():
                    return
                request = self._queue.popleft()
                self.current = request.session_id
            try:
                self._make(request)
            finally:
                with self._cond:
                    self.current = None

    def _yield(self, _pass: int) -> None:
        """Between passes: wait while a decision is being computed; raise ``Stopped`` when the service stops."""
        while self._busy() and not self._stop.is_set():
            time.sleep(self._poll_s)
        if self._stop.is_set():
            raise Stopped

    def _make(self, request: ConvergedRequest) -> None:
        sid = request.session_id
        self._on_state(sid, {"state": ConvergedState.RUNNING.value})
        t0 = time.perf_counter()
        try:
            self._yield(0)
            patterns, positions = read_measured_frames(request.session_file)
            if len(positions) == 0:
                raise ValueError("the session has no frames")
            job = ReconJob(request.beam, request.fov_nm, patterns, positions, None, final=True)
            output, recipe = self._run_job(job, self._yield)
            rec = ConvergedReconstruction(
                output.potential, output.origin_nm, output.pixel_nm, len(positions), len(output.loss_history), output.loss_history, recipe,
            )
            write_converged(request.session_file, rec)
        except Stopped:
            log.info("converged reconstruction of %s dropped at shutdown", sid)
            self._on_state(sid, {"state": ConvergedState.QUEUED.value})
            return
        except Exception as err:  # one session's failure must not end the worker
            log.exception("converged reconstruction of %s failed", sid)
            self._on_state(sid, {"state": ConvergedState.FAILED.value, "error": f"{type(err).__name__}: {err}"})
            return
        self.completed += 1
        final_loss = output.loss_history[-1] if output.loss_history else None
        log.info("converged reconstruction of %s: %d positions, %d passes in %.1f s", sid, len(positions), rec.passes, time.perf_counter() - t0)
        self._on_state(sid, {"state": ConvergedState.DONE.value, "passes": rec.passes, "final_loss": final_loss,
                             "seconds": round(time.perf_counter() - t0, 3)})
