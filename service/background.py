"""Work that no decision waits on, in one background thread that yields to decisions.

Two kinds of job run here: a live session's probe retrieval (``service.probe_job``) and a
done session's converged reconstruction (``service.converged``). Each is many short
torch calls; between them the job calls ``pause()``, which waits while a decision's
reconstruction is queued or running, so a decision waits for at most one such call. Jobs
run one at a time: urgent ones (a live session's probe) before the others, each kind
oldest first. At shutdown the job in progress stops at its next ``pause()`` (``Stopped``)
and is dropped with those queued; each kind knows how a restart makes it again. A job whose
``wanted()`` says False when its turn comes (its session was deleted meanwhile) is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class Stopped(Exception):
    """Raised by ``pause()`` when the service is stopping: the job in progress is dropped."""


@dataclass
class BackgroundJob:
    key: str
    """what the job makes, e.g. ``converged:<session id>``: a job whose key is queued or running is not queued twice."""
    run: Callable[[Callable[[], None]], None]
    """the work; called with ``pause``, to call between its steps. It reports its own results and errors."""
    urgent: bool = False
    """runs before the queued non-urgent jobs."""
    on_dropped: Callable[[], None] | None = None
    """called when the service stops before the job ends (in progress or queued)."""
    wanted: Callable[[], bool] | None = None
    """asked when the job's turn comes (no lock held): False skips it, unrun and unreported (None: always run)."""


class BackgroundWorker:
    """One thread running ``BackgroundJob``s, pausing them while ``busy()`` (a decision is being computed)."""

    def __init__(self, busy: Callable[[], bool], poll_s: float = 0.02) -> None:
        self._busy = busy
        self._poll_s = poll_s
        self._urgent: deque[BackgroundJob] = deque()
        self._other: deque[BackgroundJob] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: str | None = None
        self.completed = 0
        self.skipped = 0
        """jobs not run: ``wanted()`` said False when their turn came."""

    def submit(self, job: BackgroundJob) -> bool:
        """Queue ``job``; False (and nothing queued) if a job with its key is queued or running."""
        with self._cond:
            if job.key == self.current or any(j.key == job.key for j in (*self._urgent, *self._other)):
                return False
            (self._urgent if job.urgent else self._other).append(job)
            self._cond.notify_all()
        return True

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._urgent) + len(self._other) + (self.current is not None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="background-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop at the running job's next pause; it and the queued jobs are dropped (``on_dropped``)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            dropped = [*self._urgent, *self._other]
            self._urgent.clear()
            self._other.clear()
        if dropped:
            log.info("stopping with %d background job(s) queued (%s)", len(dropped), ", ".join(j.key for j in dropped))
        for job in dropped:
            self._dropped(job)

    def pause(self) -> None:
        """Between a job's steps: wait while a decision is being computed; raise ``Stopped`` when the service stops."""
        while self._busy() and not self._stop.is_set():
            time.sleep(self._poll_s)
        if self._stop.is_set():
            raise Stopped

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not (self._urgent or self._other) and not self._stop.is_set():
                    self._cond.wait(0.5)
                if self._stop.is_set():
                    return
                job = (self._urgent or self._other).popleft()
                self.current = job.key
            try:
                if not self._wanted(job):
                    log.info("background job %s skipped: no longer wanted", job.key)
                    self.skipped += 1
                    continue
                job.run(self.pause)
                self.completed += 1
            except Stopped:
                log.info("background job %s dropped at shutdown", job.key)
                self._dropped(job)
            except Exception:  # a job reports its own errors; one that escapes must not end the worker
                log.exception("background job %s failed", job.key)
            finally:
                with self._cond:
                    self.current = None

    @staticmethod
    def _wanted(job: BackgroundJob) -> bool:
        try:
            return job.wanted is None or job.wanted()
        except Exception:  # cannot tell: run it, as before there was a question
            log.exception("background job %s: wanted failed", job.key)
            return True

    @staticmethod
    def _dropped(job: BackgroundJob) -> None:
        if job.on_dropped is not None:
            try:
                job.on_dropped()
            except Exception:
                log.exception("background job %s: on_dropped failed", job.key)
