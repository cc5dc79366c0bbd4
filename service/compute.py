"""Batched reconstruction for the scheduler: jobs of many sessions in one ``Reconstructor.reconstruct`` call per beam setting.

Sessions sharing a beam/detector setting (the probe) go into one batched call; each
job is warm-started from its session's previous potential. The reconstructor comes
from ``recon.engine`` (section A of the contracts), imported lazily.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BeamKey:
    """What fixes the probe: beam energy (eV), convergence (mrad), K, detector pixel (mrad), defocus (nm)."""

    energy_ev: float
    convergence_mrad: float
    detector_pixels: int
    detector_pixel_mrad: float
    defocus_nm: float

    @property
    def pixel_nm(self) -> float:
        """Reconstruction pixel in nm: wavelength / (K * detector_pixel_mrad * 1e-3)."""
        from recon.physics import real_space_pixel_angstrom

        return real_space_pixel_angstrom(self.energy_ev, self.detector_pixels, self.detector_pixel_mrad) / 10.0


@dataclass
class ReconJob:
    beam: BeamKey
    fov_nm: tuple[float, float, float, float]
    patterns: np.ndarray
    """(N, K, K) float32 intensities of every position so far."""
    positions_nm: np.ndarray
    """(N, 2) positions (x, y) in nm."""
    init: np.ndarray | None
    """(ny, nx) previous potential (rad) on the same grid, or None."""


@dataclass
class ReconOutput:
    potential: np.ndarray
    """(ny, nx) float32 phase in rad."""
    origin_nm: tuple[float, float]
    pixel_nm: float
    loss_history: list[float]


class ReconBackend(Protocol):
    name: str
    calls: int
    """batched calls made so far (one per beam setting per scheduler round)."""

    def warmup(self) -> None: ...

    def reconstruct(self, jobs: list[ReconJob]) -> list[ReconOutput]: ...


class TorchReconBackend:
    """``recon.engine.Reconstructor`` behind the ``ReconBackend`` seam; one Reconstructor per beam setting."""

    name = "recon.engine.Reconstructor"

    def __init__(self, iterations: int = 5, device: str = "auto", torch_threads: int | None = None, detector_binning: int | None = None) -> None:
        self.iterations = iterations
        self.detector_binning = detector_binning
        self.device = device
        self.torch_threads = torch_threads
        self.calls = 0
        self._recons: dict[BeamKey, object] = {}

    def _reconstructor(self, beam: BeamKey):
        if beam not in self._recons:
            from recon.beam import probe_for
            from recon.device import pick_device
            from recon.engine import Reconstructor
            from recon.options import ReconOptions

            device = pick_device(None if self.device == "auto" else self.device)
            probe = probe_for(
                energy_ev=beam.energy_ev,
                convergence_mrad=beam.convergence_mrad,
                detector_pixels=beam.detector_pixels,
                detector_pixel_mrad=beam.detector_pixel_mrad,
                defocus_nm=beam.defocus_nm,
            ).to(device)
            extra = {} if self.detector_binning is None else {"detector_binning": self.detector_binning}
            self._recons[beam] = Reconstructor(probe, ReconOptions(iterations=self.iterations, **extra), device=device)
        return self._recons[beam]

    def warmup(self) -> None:
        """Import the engine, build a probe and reconstruct a tiny scan once (so the first chunk is not slow)."""
        import torch

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        beam = BeamKey(60_000.0, 33.0, 16, 6.0, 0.0)
        rng = np.random.default_rng(0)
        job = ReconJob(beam, (0.0, 0.0, 0.2, 0.2), rng.random((4, 16, 16), dtype=np.float32), rng.random((4, 2)) * 0.2, None)
        t0 = time.perf_counter()
        self._run_group([job])
        self._recons.pop(beam, None)
        log.info("reconstructor warm in %.2f s", time.perf_counter() - t0)

    def _run_group(self, jobs: list[ReconJob]) -> list[ReconOutput]:
        import torch

        from recon.engine import ScanChunk
        from recon.grid import ObjectGrid

        beam = jobs[0].beam
        recon = self._reconstructor(beam)
        scans, init = [], []
        for job in jobs:
            grid = ObjectGrid.covering(job.fov_nm, beam.pixel_nm, beam.detector_pixels)
            scans.append(ScanChunk(torch.from_numpy(job.patterns), torch.from_numpy(job.positions_nm), grid))
            ok = job.init is not None and tuple(job.init.shape) == tuple(grid.shape)
            init.append(torch.from_numpy(job.init) if ok else None)
        results = recon.reconstruct(scans, init=init)
        out = []
        for r in results:
            pot = r.potential.detach().to("cpu", torch.float32).numpy()
            out.append(ReconOutput(pot, tuple(r.grid.origin_nm), float(r.grid.pixel_nm), [float(v) for v in r.loss_history]))
        return out

    def reconstruct(self, jobs: list[ReconJob]) -> list[ReconOutput]:
        """All jobs, one batched call per beam setting; outputs in job order."""
        out: list[ReconOutput | None] = [None] * len(jobs)
        groups: dict[BeamKey, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.beam, []).append(i)
        for idx in groups.values():
            self.calls += 1
            for i, res in zip(idx, self._run_group([jobs[i] for i in idx]), strict=True):
                out[i] = res
        return out  # type: ignore[return-value]
