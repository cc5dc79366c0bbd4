"""Frames with a ground truth for ``bench/service_latency.py --quality``, and the scores of what the sessions made.

The latency bench normally streams one bright-field disk over and over: the cost of a
decision does not depend on what the frames show. What a shrunk update costs in quality
does, so ``--quality`` streams frames of a specimen with a known phase (a ``ptychoscan
simulate`` dataset). Simulating each asked position on demand costs ~8 ms of CPU per
pattern here (a 256-pixel window), far more than a 1 ms dwell, so the field is simulated
once, before the service starts, on a raster (``RASTER_STEP_NM``, 0.04 nm) and cached in
``bench/out/latency_raster/``; a session's asked position is served the pattern of the
nearest raster point, and the tell reports that raster point as the measured position
(the reconstruction then uses the position the pattern belongs to). Noise: Poisson at
``dose`` electrons per position, seeded by (session seed, chunk index), so that the same
session with and without the deadline sees the same noise draws chunk by chunk.

Scores: Pearson r and SSIM against the registered ground truth over the field
(``policy.scores.score_against_truth``, what ``ptychoscan evaluate`` reports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RASTER_STEP_NM = 0.04
"""Raster the patterns are simulated on (2,601 points over 2 x 2 nm, ~20 s on 2 cores; twice the evaluation's candidate
step): an asked position is at most 0.028 nm from one, and the tell reports the raster point."""

CACHE = Path(__file__).resolve().parent / "out" / "latency_raster"


@dataclass
class RasterFrames:
    """Noise-free unit-sum patterns of one dataset's ground truth on a raster over its field."""

    path: str
    """the dataset file (its ground truth is what sessions are scored against)."""
    fov_nm: tuple[float, float, float, float]
    step_nm: float
    shape: tuple[int, int]
    """(ny, nx) raster points."""
    patterns_file: str
    """.npy of (ny * nx, K, K) float32 patterns, row-major (y, then x)."""
    beam: dict
    """the session body's beam fields (energy, convergence, detector)."""

    @classmethod
    def prepare(cls, dataset_path: str, step_nm: float = RASTER_STEP_NM) -> RasterFrames:
        """Simulate (or load from the cache) the dataset's raster; needs the dataset's ground truth."""
        from policy.baselines import candidate_raster
        from recon.dataset import read_dataset
        from recon.inputs import fov_of
        from sim_microscope.ondemand import PhaseObjectSimulator

        ds = read_dataset(dataset_path)
        if ds.ground_truth is None:
            raise SystemExit(f"{dataset_path}: --quality needs a dataset with a ground truth (ptychoscan simulate)")
        fov = fov_of(ds.positions_nm)
        raster = candidate_raster(fov, step_nm)
        nx = math.floor(fov[2] / step_nm + 1e-9) + 1
        shape = (len(raster) // nx, nx)
        beam = {"energy_ev": ds.energy_ev, "convergence_mrad": ds.convergence_mrad, "detector_pixels": ds.detector_pixels,
                "detector_pixel_mrad": ds.detector_pixel_mrad, "defocus_nm": ds.defocus_nm}
        CACHE.mkdir(parents=True, exist_ok=True)
        out = CACHE / f"{Path(dataset_path).stem}_{step_nm:g}nm.npy"
        if not out.exists():
            sim = PhaseObjectSimulator.from_dataset(ds, device="cpu")
            patterns = np.empty((len(raster), ds.detector_pixels, ds.detector_pixels), np.float32)
            for start in range(0, len(raster), 256):
                patterns[start : start + 256] = sim.patterns(raster[start : start + 256])
            tmp = out.with_suffix(".tmp.npy")
            np.save(tmp, patterns)
            tmp.rename(out)
        return cls(dataset_path, fov, step_nm, shape, str(out), beam)

    def snap(self, positions_nm: np.ndarray) -> np.ndarray:
        """Raster index of the point nearest each (x, y) position (nm), clipped to the raster."""
        pos = np.asarray(positions_nm, dtype=np.float64).reshape(-1, 2)
        ix = np.clip(np.rint((pos[:, 0] - self.fov_nm[0]) / self.step_nm), 0, self.shape[1] - 1).astype(np.int64)
        iy = np.clip(np.rint((pos[:, 1] - self.fov_nm[1]) / self.step_nm), 0, self.shape[0] - 1).astype(np.int64)
        return iy * self.shape[1] + ix

    def position(self, index: np.ndarray) -> np.ndarray:
        """(N, 2) positions (x, y) in nm of raster indices."""
        iy, ix = np.divmod(np.asarray(index, dtype=np.int64), self.shape[1])
        return np.column_stack([self.fov_nm[0] + ix * self.step_nm, self.fov_nm[1] + iy * self.step_nm])


class FrameMaker:
    """The microscope side's frames of one session: counts at the raster point nearest each asked position."""

    def __init__(self, raster: RasterFrames, dose: float, seed: int) -> None:
        self.raster = raster
        self.patterns = np.load(raster.patterns_file, mmap_mode="r")
        self.dose = dose
        self.seed = seed

    def frames(self, positions_nm: np.ndarray, chunk_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint16 counts (N, K, K), the positions they were simulated at (N, 2) nm) for the session's chunk ``chunk_index``."""
        idx = self.raster.snap(positions_nm)
        rng = np.random.default_rng([self.seed, chunk_index])
        counts = rng.poisson(np.asarray(self.patterns[idx], dtype=np.float64) * self.dose)
        return np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16), self.raster.position(idx)


def score(potential: np.ndarray, origin_nm, pixel_nm: float, dataset_path: str, fov_nm) -> dict:
    """Pearson r and SSIM of a reconstruction (rad) against the dataset's ground truth over ``fov_nm``."""
    from policy.scores import score_against_truth
    from recon.dataset import read_dataset
    from recon.grid import ObjectGrid

    gt = read_dataset(dataset_path).ground_truth
    grid = ObjectGrid(tuple(origin_nm), tuple(potential.shape), float(pixel_nm))
    s = score_against_truth(np.asarray(potential, np.float32), grid, gt, tuple(fov_nm))
    return {"pearson_r": s["pearson_r"], "ssim": s["ssim"]}


def paired(on: list[float], off: list[float]) -> tuple[float, float, int]:
    """(mean of on - off, its standard error, pairs on > off) over paired sessions."""
    d = np.asarray(on, np.float64) - np.asarray(off, np.float64)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()), se, int((d > 0).sum())
