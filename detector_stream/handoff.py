"""``OrderedHandoff``: work handed from one thread to a worker thread that does it in the order given.

The receive thread drains a socket with the compiled loop (no interpreter held while it
receives and decompresses) and hands each drain's decoding and delivery to the worker,
so that the next drain's receiving overlaps this one's Python work (two cores busy
instead of one). Only a backlog is worth the switch of threads: a drain that emptied
its socket while the worker is idle is decoded in the receive thread itself (at a
scan's pace, a frame or a few per drain, a hand-off per drain only costs wake-ups and
latency). The queue is bounded (``depth`` jobs, besides the one running and one the giver
holds while it waits): when the worker falls behind, ``submit`` waits,
the socket's queue fills, and ZeroMQ's high-water mark holds the sender back, as when
one thread did both.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_STOP = object()


class _Marker:
    """``wait_idle``'s job: sets its event when the jobs before it have run."""

    def __init__(self, done: threading.Event) -> None:
        self.done = done

    def __call__(self) -> None:
        self.done.set()


class OrderedHandoff:
    """Jobs run one at a time, in submission order, on one worker thread (``start`` it; ``stop`` drops what is still queued, then ends it).

    ``submit``, ``wait_idle``, ``idle`` and ``stop`` belong to one giving thread; ``join`` to any.
    """

    def __init__(self, name: str, depth: int = 4) -> None:
        """``depth``: jobs waiting at most (each a drained batch: up to ``max_batch`` frames)."""
        self._jobs: queue.Queue = queue.Queue(depth)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._submitted = self._finished = 0
        self.failures = 0
        """jobs that raised (logged once; a job is expected to handle its own errors)."""

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def idle(self) -> bool:
        """Every job submitted has run (read by the submitting thread: then nothing runs on the worker until it submits again)."""
        return self._finished == self._submitted

    def submit(self, job: Callable[[], None], stop: threading.Event, poll_s: float = 0.05) -> bool:
        """Queue ``job``, waiting while the queue is full; False (not queued) if ``stop`` is set or the worker ended meanwhile."""
        while not stop.is_set():
            try:
                self._jobs.put(job, timeout=poll_s)
                self._submitted += 1
                return True
            except queue.Full:
                if not self.alive:
                    return False
        return False

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every job submitted so far has run; False if that took longer than ``timeout`` s (or the worker is gone)."""
        done = threading.Event()
        try:
            self._jobs.put(_Marker(done), timeout=timeout)
        except queue.Full:
            return False
        self._submitted += 1
        return done.wait(timeout)

    def stop(self, timeout: float = 5.0) -> list[Callable[[], None]]:
        """Drop the jobs still queued (returned: the submitted ones, not ``wait_idle``'s markers) and end the worker once the job
        in flight (if any) has run, waiting up to ``timeout`` s for that (``alive``: still running)."""
        dropped = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP and not isinstance(job, _Marker):
                dropped.append(job)
        self._jobs.put(_STOP)  # room now: only the giving thread puts, and it is the one stopping
        self.join(timeout)
        return dropped

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the worker to end; True if it has (or never started)."""
        if self._thread.is_alive():
            self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            try:
                job()
            except Exception:
                self.failures += 1
                if self.failures == 1:
                    log.exception("%s: a handed-off job raised (further failures counted)", self._thread.name)
            finally:
                self._finished += 1
