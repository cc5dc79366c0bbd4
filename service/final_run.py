"""A session's final reconstruction, advanced a little at a time between other sessions' decisions.

A session's last chunk gets a full reconstruction (every position, all passes) on which
no decision waits and which costs many decisions' compute. The compute worker runs it
in slices between rounds (``service.scheduler``): ``advance(stop)`` runs at least one
slice and goes on until ``stop()`` says a decision is waiting, so that decision waits
for at most one slice.

Two ways to slice it:

* ``SteppedRun``: one optimizer step (one mini-batch of positions) per slice, from a
  generator of steps (``recon.engine.Reconstructor.steps``): the scans are prepared once
  for the whole reconstruction, and a slice is a few milliseconds on a CPU.
* ``PassByPass``: one ``reconstruct`` call per pass, warm-started from the pass before
  with the mini-batch order continued (with plain gradient descent the same result as
  one call): for backends that only have ``reconstruct`` (test doubles, the latency
  bench's overhead-only backend).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from service.compute import ReconBackend, ReconJob, ReconOutput


class FinalRun(Protocol):
    def advance(self, stop: Callable[[], bool]) -> ReconOutput | None:
        """Run at least one slice, more until ``stop()`` is true; the output once the reconstruction is complete, else None."""
        ...


class SteppedRun:
    """A final reconstruction a generator step at a time.

    Args:
        start: makes the generator (called at the first ``advance``, under ``lock``); it yields
            after every step and returns the results.
        finish: the output from the generator's return value.
        lock: held while stepping (the backend's one-call-at-a-time lock).
        wait: called after every step, before ``stop()`` is asked (on a GPU: wait for the device, so that
            a slice's time is the device's and a slice does not leave queued steps that a decision's
            reconstruction would then wait behind); None on a CPU, where a step is done when it returns.
    """

    def __init__(
        self, start: Callable[[], Generator[None, None, list]], finish: Callable[[list], ReconOutput], lock: threading.Lock,
        wait: Callable[[], None] | None = None,
    ) -> None:
        self._start = start
        self._finish = finish
        self._lock = lock
        self._wait = wait
        self._run: Generator[None, None, list] | None = None
        self.steps = 0
        """steps run so far."""

    def advance(self, stop: Callable[[], bool]) -> ReconOutput | None:
        with self._lock:
            if self._run is None:
                self._run = self._start()
            while True:
                try:
                    next(self._run)
                except StopIteration as done:
                    return self._finish(done.value)
                self.steps += 1
                if self._wait is not None:
                    self._wait()
                if stop():
                    return None


class PassByPass:
    """A final reconstruction as one ``backend.reconstruct`` call per pass (see the module docstring).

    Args:
        backend: what reconstructs.
        job: the session's final job (``job.final``).
        passes: passes of the full reconstruction.
    """

    def __init__(self, backend: ReconBackend, job: ReconJob, passes: int) -> None:
        self.backend = backend
        self.job = job
        self.passes = max(int(passes), 1)
        self.done = 0
        self._output: ReconOutput | None = None
        self._losses: list[float] = []

    def advance(self, stop: Callable[[], bool]) -> ReconOutput | None:
        while True:
            init = self.job.init if self._output is None else self._output.potential
            self._output = self.backend.reconstruct([dataclasses.replace(self.job, init=init, passes=1, first_pass=self.done)])[0]
            self.done += 1
            self._losses += self._output.loss_history
            if self.done >= self.passes:
                return dataclasses.replace(self._output, loss_history=self._losses)
            if stop():
                return None
