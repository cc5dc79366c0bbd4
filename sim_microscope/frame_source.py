"""Where the simulated detector's frames come from: the probe position in, a diffraction pattern out.

``DatasetReplay`` returns the pattern of the nearest position of a dense dataset file;
``GroundTruthSource`` simulates the exact position from a dataset's ground-truth phase;
``SpecimenSource`` simulates patterns on the fly (one batched simulation per call);
``SyntheticSource`` is a cheap analytic stand-in (a bright disc whose centre follows
the probe) for tests and rate benchmarks. All return float intensities per pattern
or integer counts; ``to_counts`` turns them into detector counts of a pixel type.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


def clamp_positions(positions_nm: np.ndarray, bounds: tuple[float, float, float, float]) -> np.ndarray:
    """(N, 2) positions (x, y) in nm clamped into ``bounds`` = (x0, x1, y0, y1) nm."""
    p = np.asarray(positions_nm, dtype=np.float64).reshape(-1, 2).copy()
    x0, x1, y0, y1 = bounds
    p[:, 0] = np.clip(p[:, 0], x0, x1)
    p[:, 1] = np.clip(p[:, 1], y0, y1)
    return p


def raster_extent_nm(positions_nm: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, width, height) in nm of positions' bounding box."""
    p = np.asarray(positions_nm)
    lo, hi = p.min(axis=0), p.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])


class FrameSource(Protocol):
    detector_pixels: int

    def patterns(self, positions_nm: np.ndarray) -> np.ndarray:
        """(N, K, K) patterns at probe positions (x, y) in nm: float intensities or integer counts."""
        ...


class DatasetReplay:
    """Replay a dense dataset: each position gets the pattern of the nearest raster position."""

    def __init__(self, path: str) -> None:
        from scipy.spatial import cKDTree

        from recon.dataset import read_dataset

        ds = read_dataset(path, with_acquisition_truth=True)
        self.dataset = ds
        self.detector_pixels = ds.detector_pixels
        self._patterns = np.asarray(ds.patterns)
        self._tree = cKDTree(np.asarray(ds.positions_nm, dtype=np.float64))

    @property
    def extent_nm(self) -> tuple[float, float, float, float]:
        """(x0, y0, width, height) of the replayed raster in nm."""
        p = np.asarray(self.dataset.positions_nm)
        lo, hi = p.min(axis=0), p.max(axis=0)
        return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])

    def patterns(self, positions_nm: np.ndarray) -> np.ndarray:
        _, index = self._tree.query(np.asarray(positions_nm, dtype=np.float64).reshape(-1, 2))
        return self._patterns[np.asarray(index)]

    def beam_positions(self, positions_nm: np.ndarray) -> np.ndarray:
        """Where the frames really come from: the nearest raster position of each requested one (nm)."""
        _, index = self._tree.query(np.asarray(positions_nm, dtype=np.float64).reshape(-1, 2))
        return np.asarray(self.dataset.positions_nm, dtype=np.float64)[np.asarray(index)]


class GroundTruthSource:
    """Simulate each frame at exactly its probe position from a dataset's ground-truth phase (``sim_microscope.ondemand``).

    For a sparse scan at the paper's density the dense raster a ``DatasetReplay`` needs
    (10,000 patterns over 2 x 2 nm at 0.02 nm) costs far more than the frames measured;
    here a file with ground truth and a coarse raster is enough, and no position is
    moved to a raster point. Positions whose probe window would leave the ground truth
    are clamped to the field that can be simulated. The probe is the microscope's: the
    true one of a file simulated with an aberrated probe (its ``acquisition_truth``), not
    the nominal beam the file (and so the reconstructor) is told.
    """

    def __init__(self, path: str) -> None:
        from recon.dataset import read_dataset
        from sim_microscope.ondemand import PhaseObjectSimulator

        ds = read_dataset(path, with_acquisition_truth=True)
        self.dataset = ds
        self.simulator = PhaseObjectSimulator.from_dataset(ds, device="cpu")
        self.detector_pixels = ds.detector_pixels
        gt = ds.ground_truth
        half = (self.simulator.window // 2 + 1) * gt.pixel_nm
        ny, nx = gt.phase.shape
        self._bounds = (gt.origin_nm[0] + half, gt.origin_nm[0] + (nx - 1) * gt.pixel_nm - half,
                        gt.origin_nm[1] + half, gt.origin_nm[1] + (ny - 1) * gt.pixel_nm - half)

    @property
    def extent_nm(self) -> tuple[float, float, float, float]:
        """(x0, y0, width, height) of the dataset's raster in nm."""
        return raster_extent_nm(self.dataset.positions_nm)

    def beam_positions(self, positions_nm: np.ndarray) -> np.ndarray:
        """Requested positions clamped to where the ground truth holds a whole probe window (nm)."""
        return clamp_positions(positions_nm, self._bounds)

    def patterns(self, positions_nm: np.ndarray) -> np.ndarray:
        return self.simulator.patterns(self.beam_positions(positions_nm))


class SpecimenSource:
    """Simulate patterns of a specimen on the fly (sim_microscope.simulate), probe positions clamped to it."""

    def __init__(
        self,
        kind: str = "mos2",
        size_nm: float = 3.0,
        *,
        seed: int = 0,
        energy_ev: float = 60_000.0,
        convergence_mrad: float = 33.0,
        detector_pixels: int = 64,
        detector_pixel_mrad: float = 1.68,
        defocus_nm: float = 0.0,
        oversample: int | None = None,
    ) -> None:
        from sim_microscope.simulate import specimen_extent_angstrom
        from sim_microscope.specimens import SpecimenConfig, build_specimen

        self.atoms = build_specimen(SpecimenConfig(kind=kind, size_nm=(size_nm, size_nm)), seed=seed)
        x0, x1, y0, y1 = (v / 10.0 for v in specimen_extent_angstrom(self.atoms))
        self._bounds = (x0, x1, y0, y1)
        self.detector_pixels = detector_pixels
        self._options = dict(
            energy_ev=energy_ev,
            convergence_mrad=convergence_mrad,
            detector_pixels=detector_pixels,
            detector_pixel_mrad=detector_pixel_mrad,
            defocus_nm=defocus_nm,
            oversample=oversample,
            device="cpu",
        )

    @property
    def extent_nm(self) -> tuple[float, float, float, float]:
        x0, x1, y0, y1 = self._bounds
        return x0, y0, x1 - x0, y1 - y0

    def beam_positions(self, positions_nm: np.ndarray) -> np.ndarray:
        """Requested positions clamped to the specimen (nm): where the frames really come from."""
        return clamp_positions(positions_nm, self._bounds)

    def patterns(self, positions_nm: np.ndarray) -> np.ndarray:
        from sim_microscope.simulate import simulate_patterns

        return simulate_patterns(self.atoms, self.beam_positions(positions_nm), **self._options)


class SyntheticSource:
    """A disc of radius K/4 whose centre shifts with the probe position (0.1 px per 0.01 nm); sums to 1."""

    def __init__(self, detector_pixels: int = 64) -> None:
        if detector_pixels < 4:
            raise ValueError(f"detector_pixels must be at least 4, got {detector_pixels}")
        self.detector_pixels = detector_pixels

    def patterns(self, positions_nm: np.ndarray) -> np.ndarray:
        k = self.detector_pixels
        p = np.asarray(positions_nm, dtype=np.float64).reshape(-1, 2)
        shift = np.round(np.sin(p * 10.0) * 2.0 * 16) / 16  # centre offsets, 1/16 px steps
        unique, index = np.unique(shift, axis=0, return_inverse=True)
        yy, xx = np.mgrid[0:k, 0:k].astype(np.float32)
        cx = (k // 2 + unique[:, 0, None, None]).astype(np.float32)
        cy = (k // 2 + unique[:, 1, None, None]).astype(np.float32)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2 <= (k / 4) ** 2).astype(np.float32) + 1e-3
        disc /= disc.sum(axis=(1, 2), keepdims=True)
        return disc[np.asarray(index).ravel()]


def to_counts(patterns: np.ndarray, dtype: str, dose: float, rng: np.random.Generator, noise: str = "poisson") -> np.ndarray:
    """Detector counts of ``dtype``: float intensities become Poisson(pattern * dose / sum); counts are kept.

    ``noise="none"`` rounds the expected counts instead (no shot noise; ~15x faster at 64x64).

    Values beyond the pixel type saturate at its maximum, as a counting detector does.
    """
    dt = np.dtype(dtype)
    patterns = np.asarray(patterns)
    if noise not in ("poisson", "none"):
        raise ValueError(f"noise must be 'poisson' or 'none', got {noise!r}")
    if np.issubdtype(patterns.dtype, np.integer):
        return np.clip(patterns, 0, np.iinfo(dt).max).astype(dt)
    total = patterns.sum(axis=(-2, -1), keepdims=True, dtype=np.float64)
    scale = (dose / np.where(total > 0, total, 1.0)).astype(np.float32)
    mean = np.clip(patterns.astype(np.float32) * scale, 0, None)
    counts = rng.poisson(mean) if noise == "poisson" else np.rint(mean, out=mean)
    return np.clip(counts, 0, np.iinfo(dt).max).astype(dt)
