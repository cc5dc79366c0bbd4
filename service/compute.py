"""Batched reconstruction for the scheduler: jobs of many sessions in one ``Reconstructor.reconstruct`` call per beam setting.

Sessions sharing a beam/detector setting (the probe) and the same iteration count go
into one batched call; each job is warm-started from its session's previous potential.
The reconstructor comes from ``recon.engine`` (section A of the contracts), imported
lazily.

What a chunk's reconstruction covers (``ChunkUpdate``): a session's first chunk, its
last chunk (no decision waits on it) and any job without a previous potential are
reconstructed in full: every position so far, ``iterations`` passes. In between, with
``mode="incremental"`` (the default), only the chunk's new positions plus a random
sample of older ones (``replay`` times as many) are revisited, for
``update_iterations`` passes from the previous potential. The cost of a decision then
stays constant along the scan instead of growing with every position measured so far.
When a round of many sessions' updates would not fit the microscope's pace, it is
shrunk (``service.deadline``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.deadline import Level, UpdateDeadline, replayed
from service.final_run import FinalRun, SteppedRun
from service.spec import Beam

log = logging.getLogger(__name__)


BeamKey = Beam
"""What fixes the probe (``service.spec.Beam``): the key jobs are grouped and probes cached by."""


@dataclass
class ReconJob:
    beam: BeamKey
    fov_nm: tuple[float, float, float, float]
    patterns: np.ndarray
    """(N, K, K) counts of every position so far, in the session file's pixel type (or float32; ``counts_as_float``)."""
    positions_nm: np.ndarray
    """(N, 2) positions (x, y) in nm."""
    init: np.ndarray | None
    """(ny, nx) previous potential (rad) on the same grid, or None."""
    n_new: int | None = None
    """How many of the positions (the last ones) are new since ``init`` was made; None: all."""
    final: bool = False
    """The session's last chunk: no decision waits on it, so it is always reconstructed in full."""
    seed: int = 0
    """Seed of the replay sample (the chunk's index, so a rerun revisits the same positions)."""
    acquisition_s: float | None = None
    """How long the microscope took to acquire the new positions (s), None if unknown: the deadline of an incremental update."""
    passes: int | None = None
    """Passes of a full reconstruction to run in this call (None: all of them); a final run pass by pass (``service.final_run.PassByPass``) asks for one per call."""
    first_pass: int = 0
    """Passes of this reconstruction run by earlier calls (its mini-batch order continues from there)."""
    correct_positions: bool = False
    """Refine the positions with the object (converged reconstructions only)."""
    invalid_pixels: np.ndarray | None = None
    """(K, K) bool, True where a detector pixel is not a measurement (``service.detector_mask``): left out of the loss; None: none."""


class ChunkUpdate(BaseModel):
    """How much of a session a chunk's reconstruction revisits (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["incremental", "full"] = Field("incremental", description="incremental: new positions + a replay sample; full: every position so far")
    iterations: int = Field(5, ge=1, description="passes of a full reconstruction (first and last chunk; paper: 5)")
    update_iterations: int = Field(2, ge=1, description="passes of an incremental update")
    replay: float = Field(1.0, ge=0, description="older positions revisited per new position in an incremental update")
    deadline_fraction: float | None = Field(
        0.5, gt=0, description="shrink a round's incremental updates to finish within this fraction of its chunks' acquisition time (None: never)"
    )

    def new_positions(self, job: ReconJob) -> int | None:
        """The job's new positions if it gets an incremental update, None if it is reconstructed in full."""
        n = len(job.positions_nm)
        n_new = n if job.n_new is None else min(max(int(job.n_new), 0), n)
        if self.mode == "full" or job.init is None or job.final or n_new >= n or n_new == 0:
            return None
        return n_new

    def fresh(self, job: ReconJob) -> bool:
        """A full reconstruction from zero on which a decision waits (a session's first chunk): the deadline may cut its passes."""
        return self.mode == "incremental" and job.init is None and not job.final and job.passes is None

    def scope(self, job: ReconJob, level: Level | None = None) -> tuple[np.ndarray, int]:
        """(indices of the job's positions to use, iterations) for one job.

        ``level`` (passes, replay), when given, is a shrunk update: it replaces the update's
        passes and replay, and a first chunk's passes.
        """
        n = len(job.positions_nm)
        n_new = self.new_positions(job)
        if n_new is None:
            return np.arange(n), level[0] if level is not None and self.fresh(job) else job.passes or self.iterations
        passes, replay_per_new = level or (self.update_iterations, self.replay)
        older = n - n_new
        k = replayed((passes, replay_per_new), n_new, older)
        rng = np.random.default_rng(job.seed)
        replay = np.sort(rng.choice(older, size=k, replace=False)) if k else np.zeros(0, np.int64)
        return np.concatenate([replay, np.arange(older, n)]), passes


@dataclass
class ReconOutput:
    potential: np.ndarray
    """(ny, nx) float32 phase in rad."""
    origin_nm: tuple[float, float]
    pixel_nm: float
    loss_history: list[float]
    positions_nm: np.ndarray | None = None
    """(N, 2) corrected positions, nm (position correction only)."""
    scan_matrix: np.ndarray | None = None
    """(2, 2) fitted scan matrix I + D of the corrected positions (position correction only)."""
    shrunk: bool = False
    """This reconstruction was shrunk below the configured update to meet the deadline (``service.deadline``)."""


class ReconBackend(Protocol):
    name: str
    calls: int
    """batched calls made so far (one per beam setting and iteration count per scheduler round)."""
    reduced_updates: int
    """incremental updates shrunk below the configured one to meet the deadline, so far."""

    def warmup(self) -> None: ...

    def reconstruct(self, jobs: list[ReconJob]) -> list[ReconOutput]: ...

    def start_final(self, job: ReconJob) -> FinalRun:
        """A session's final reconstruction (``job.final``) to be advanced between decisions (``service.final_run``)."""
        ...


class TorchReconBackend:
    """``recon.engine.Reconstructor`` behind the ``ReconBackend`` seam; one Reconstructor (probe, shifted-probe cache) per beam setting.

    Args:
        update: what each chunk's reconstruction covers (an int: the full-reconstruction passes alone).
        device: auto (CUDA when present), cpu or cuda.
        torch_threads: torch CPU threads set at warm-up (None: torch's default).
        options: ``ReconOptions`` fields other than ``iterations`` (validated here, at start-up).
    """

    name = "recon.engine.Reconstructor"

    def __init__(
        self, update: ChunkUpdate | int | None = None, device: str = "auto", torch_threads: int | None = None, options: dict | None = None
    ) -> None:
        if isinstance(update, int):  # the full-reconstruction iteration count alone
            update = ChunkUpdate(iterations=update)
        self.update = update or ChunkUpdate()
        self.options = dict(options or {})
        """``recon.options.ReconOptions`` fields other than ``iterations`` (e.g. detector_binning, batch_positions)."""
        from recon.options import ReconOptions

        ReconOptions(**self.options)  # a bad option fails here, at start-up, not at the first chunk
        self.device = device
        self.torch_threads = torch_threads
        self.calls = 0
        self.reduced_updates = 0
        self.position_passes = 0
        """positions x passes reconstructed by ``reconstruct`` so far (the work the deadline sizes; finals not included)."""
        self.deadline = UpdateDeadline(self.update.update_iterations, self.update.replay, self.update.deadline_fraction)
        self._lock = threading.Lock()
        """one call at a time: a Reconstructor's cache of shifted probes is not thread-safe."""
        self._recons: OrderedDict[BeamKey, object] = OrderedDict()
        """One reconstructor per beam setting (its probe and its cache of shifted probes, up to ``probe_cache_mb``),
        the ``MAX_BEAMS`` most recently used; passes are per call."""

    MAX_BEAMS = 4
    """Beam settings whose reconstructors (and probe caches) are kept."""

    def _reconstructor(self, beam: BeamKey):
        if beam in self._recons:
            self._recons.move_to_end(beam)
        else:
            self._recons[beam] = self._new_reconstructor(beam)
            while len(self._recons) > self.MAX_BEAMS:
                self._recons.popitem(last=False)
        return self._recons[beam]

    def _new_reconstructor(self, beam: BeamKey):
        from recon.device import pick_device
        from recon.engine import Reconstructor
        from recon.options import ReconOptions

        device = pick_device(self.device)
        return Reconstructor(beam.probe().to(device), ReconOptions(**{**self.options, "iterations": self.update.iterations}), device=device,
                             energy_ev=beam.energy_ev, pixel_nm=beam.pixel_nm)

    def start_final(self, job: ReconJob) -> FinalRun:
        """``job``'s full reconstruction (all passes, never shrunk) a mini-batch step at a time, prepared once.

        It gets a reconstructor of its own, so that the other calls between its steps cannot
        touch the shifted probes it holds (a reconstructor's cache is reused in place when full).
        """

        from recon.device import pick_device

        device = pick_device(self.device)

        def start():
            scan, init = self._scan(job)
            return self._new_reconstructor(job.beam).steps([scan], init=[init], iterations=job.passes or self.update.iterations,
                                                           first_pass=job.first_pass)

        return SteppedRun(start, lambda results: _output(results[0]), self._lock, wait=_device_wait(device))

    def converged(self, job: ReconJob, on_pass) -> tuple[ReconOutput, dict]:
        """Every position of ``job`` from zero with the evaluation's final recipe (``policy.evaluation``): (output, recipe fields).

        Its own reconstructor (the shared ones' probe caches are not thread-safe); ``on_pass(pass)`` is called after
        every pass (the caller yields to decisions there). A run whose loss diverged is redone with half the step.
        """
        import torch

        from policy.evaluation import EvaluationOptions, final_passes
        from recon.convergence import reconstruct_with_backoff
        from recon.device import pick_device
        from recon.engine import Reconstructor, ScanChunk
        from recon.grid import ObjectGrid

        beam, evaluation = job.beam, EvaluationOptions()
        device = pick_device(self.device)
        probe = beam.probe().to(device)
        options = evaluation.final_recon.model_copy(update={k: v for k, v in self.options.items() if k in _RECIPE_NEUTRAL})
        if job.correct_positions:
            from recon.options import PositionCorrectionOptions

            options = options.model_copy(update={"position_correction": PositionCorrectionOptions()})
        rec = Reconstructor(probe, options, device=device)
        grid = ObjectGrid.covering(job.fov_nm, beam.pixel_nm, beam.detector_pixels)
        scan = ScanChunk(counts_as_float(job.patterns), torch.from_numpy(job.positions_nm), grid, invalid_pixels=job.invalid_pixels)
        (result,), steps = reconstruct_with_backoff(rec, [scan], max_passes=final_passes(len(job.positions_nm), evaluation),
                                                    on_pass=lambda i, _potentials: on_pass(i))
        recipe = options.model_dump(mode="json") | {"step_size_used": float(steps[0])}
        out = ReconOutput(result.potential.numpy(), tuple(result.grid.origin_nm), float(result.grid.pixel_nm), [float(v) for v in result.loss_history],
                          result.positions_nm, result.scan_matrix)
        return out, recipe

    def warmup(self) -> None:
        """Import the engine and reconstruct a small scan (the first chunk is then not slow; it also calibrates the deadline's cost model)."""
        import torch

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        beam = BeamKey(60_000.0, 33.0, _COST_K, 1.68, 0.0)
        rng = np.random.default_rng(0)
        n = 32
        job = ReconJob(beam, (0.0, 0.0, 0.5, 0.5), rng.random((n, _COST_K, _COST_K), dtype=np.float32), rng.random((n, 2)) * 0.5, None)
        t0 = time.perf_counter()
        with self._lock:  # the compute worker may already be running chunks (a service takes sessions while warming up)
            existed = beam in self._recons
            self._run_group([job], 1)  # compiles/allocates what a first call needs
            t1 = time.perf_counter()
            self._run_group([job], 1)
            if self.deadline.seconds_per_pass is None:
                self.deadline.observe(time.perf_counter() - t1, n)
            if not existed:
                self._recons.pop(beam, None)
        log.info("reconstructor warm in %.2f s", time.perf_counter() - t0)

    def _run_group(self, jobs: list[ReconJob], iterations: int, scopes: list[np.ndarray] | None = None, first_pass: int = 0) -> list[ReconOutput]:
        recon = self._reconstructor(jobs[0].beam)
        scans, init = zip(*(self._scan(job, None if scopes is None else scopes[i]) for i, job in enumerate(jobs)), strict=True)
        results = recon.reconstruct(list(scans), init=list(init), iterations=iterations, first_pass=first_pass)
        return [_output(r) for r in results]

    @staticmethod
    def _scan(job: ReconJob, use: np.ndarray | None = None):
        """(``recon.engine.ScanChunk`` of the job's positions ``use`` (None: all), its warm start or None)."""
        import torch

        from recon.engine import ScanChunk
        from recon.grid import ObjectGrid

        beam = job.beam
        grid = ObjectGrid.covering(job.fov_nm, beam.pixel_nm, beam.detector_pixels)
        use = slice(None) if use is None else use
        scan = ScanChunk(counts_as_float(job.patterns[use]), torch.from_numpy(job.positions_nm[use]), grid, invalid_pixels=job.invalid_pixels)
        ok = job.init is not None and tuple(job.init.shape) == tuple(grid.shape)
        return scan, torch.from_numpy(job.init) if ok else None

    def reconstruct(self, jobs: list[ReconJob]) -> list[ReconOutput]:
        """All jobs, one batched call per beam setting, pass count and first pass; outputs in job order.

        The incremental updates among them share one level (``service.deadline``), the
        costliest that is expected to finish within the deadline.
        """
        with self._lock:
            return self._reconstruct(jobs)

    def _reconstruct(self, jobs: list[ReconJob]) -> list[ReconOutput]:
        out: list[ReconOutput | None] = [None] * len(jobs)
        level, shrinkable = self._level(jobs)
        shrunk = level != self.deadline.ladder[0]
        scopes = [self.update.scope(job, level if shrunk else None) for job in jobs]
        if shrunk:
            self.reduced_updates += shrinkable
        t0 = time.perf_counter()
        groups: dict[tuple[BeamKey, int, int], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.beam, scopes[i][1], job.first_pass), []).append(i)
        for (_, iterations, first_pass), idx in groups.items():
            self.calls += 1
            results = self._run_group([jobs[i] for i in idx], iterations, [scopes[i][0] for i in idx], first_pass)
            for i, res in zip(idx, results, strict=True):
                res.shrunk = shrunk and self._shrinkable(jobs[i])
                out[i] = res
        position_passes = sum(len(use) * passes for use, passes in scopes)
        self.position_passes += position_passes
        self.deadline.observe((time.perf_counter() - t0) / _cost_scale(jobs), position_passes)
        return out  # type: ignore[return-value]

    def _shrinkable(self, job: ReconJob) -> bool:
        """Whether the deadline's level applies to ``job``: an incremental update or a first chunk a decision waits on."""
        return self.update.new_positions(job) is not None or self.update.fresh(job)

    def _level(self, jobs: list[ReconJob]) -> tuple[Level, int]:
        """(the level of this round's incremental updates and first chunks, how many such jobs there are).

        The level is the configured update's unless that would miss the deadline.
        """
        n_new, n_older, fresh, acquisition, fixed = [], [], [], [], 0
        for job in jobs:
            new = self.update.new_positions(job)
            if new is not None:
                n_new.append(new)
                n_older.append(len(job.positions_nm) - new)
            elif self.update.fresh(job):
                fresh.append(len(job.positions_nm))
            else:
                fixed += len(job.positions_nm) * (job.passes or self.update.iterations)
                continue
            acquisition.append(job.acquisition_s)
        if not acquisition:
            return self.deadline.ladder[0], 0
        level = self.deadline.choose(n_new, n_older, acquisition, fixed, fresh, self.update.iterations, cost_scale=_cost_scale(jobs))
        return level, len(acquisition)


_RECIPE_NEUTRAL = ("detector_binning",)
"""Service reconstruction options the converged recipe takes over (what the detector is, not how to optimise)."""

_COST_K = 64
"""The deadline's cost model is kept per position-pass of K = 64 patterns (what warm-up measures)."""


def _device_wait(device) -> Callable[[], None] | None:
    """What waits for ``device`` to finish the work queued on it: ``torch.cuda.synchronize`` on a GPU, None on a CPU."""
    if device.type != "cuda":
        return None
    import torch

    return lambda: torch.cuda.synchronize(device)


def _output(result) -> ReconOutput:
    """A ``recon.engine.ReconResult`` (potential float32 on the CPU) as the service's ``ReconOutput``."""
    return ReconOutput(result.potential.numpy(), tuple(result.grid.origin_nm), float(result.grid.pixel_nm), [float(v) for v in result.loss_history])


def counts_as_float(patterns: np.ndarray):
    """``patterns`` (N, K, K) as a float32 torch tensor: converted here, in the compute worker (session memory holds the detector's
    pixel type, so the ingest only copies); no copy when they are float32 already."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(patterns, dtype=np.float32))


def _cost_scale(jobs: list[ReconJob]) -> float:
    """Cost of one position-pass of these jobs relative to K = 64 (the largest K: (K / 64)^2)."""
    k = max(job.beam.detector_pixels for job in jobs)
    return (k / _COST_K) ** 2
