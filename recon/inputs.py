"""From a dataset file to scan chunks: grids, position subsets, chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recon.beam import reconstruction_pixel_nm
from recon.dataset import Dataset4D
from recon.engine import ScanChunk
from recon.grid import ObjectGrid


def fov_of(positions_nm: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, width, height) in nm of the positions' bounding box."""
    pos = np.asarray(positions_nm, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise ValueError(f"positions_nm must have shape (N, 2) with N >= 1, got {pos.shape}")
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])


def grid_for_dataset(dataset: Dataset4D, fov_nm: tuple[float, float, float, float] | None = None) -> ObjectGrid:
    """Grid at the docs/DESIGN.md pixel covering ``fov_nm`` (default: all the dataset's positions) with whole probe windows."""
    pixel = reconstruction_pixel_nm(dataset.energy_ev, dataset.detector_pixels, dataset.detector_pixel_mrad)
    return ObjectGrid.covering(fov_nm or fov_of(dataset.positions_nm), pixel, dataset.detector_pixels)


def select_subset(dataset: Dataset4D, spec: str | None, seed: int = 0) -> np.ndarray:
    """Indices of the positions to use: None/"all", "sparse-grid:N", "random:N" or a path to an indices .npy file.

    sparse-grid:N takes the positions nearest to an evenly spaced ~sqrt(N) x sqrt(N)
    lattice over the positions' bounding box (a raster thinned to every k-th row and
    column), so N is approximate for non-square fields.
    """
    n = dataset.n_positions
    if spec is None or spec == "all":
        return np.arange(n)
    kind, _, arg = spec.partition(":")
    if kind in ("sparse-grid", "random"):
        try:
            count = int(arg)
        except ValueError:
            raise ValueError(f"--positions-subset {spec!r}: expected {kind}:N with an integer N") from None
        if count < 1:
            raise ValueError(f"--positions-subset {spec!r}: empty subset (N must be >= 1)")
        if count > n:
            raise ValueError(f"--positions-subset {spec!r}: asks for {count} positions but the dataset has {n}")
        if kind == "random":
            return np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
        return _sparse_grid(dataset.positions_nm, count)
    path = Path(spec)
    if path.suffix != ".npy":
        raise ValueError(f"--positions-subset {spec!r}: use sparse-grid:N, random:N or a .npy file of indices")
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such indices file")
    indices = np.load(path)
    if indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise ValueError(f"{spec}: indices must be a 1-D integer array, got {indices.dtype} {indices.shape}")
    if len(indices) == 0:
        raise ValueError(f"{spec}: empty subset")
    if indices.min() < 0 or indices.max() >= n:
        raise ValueError(f"{spec}: indices must lie in 0..{n - 1}, got {indices.min()}..{indices.max()}")
    return np.unique(indices)


def _sparse_grid(positions_nm: np.ndarray, count: int) -> np.ndarray:
    from scipy.spatial import cKDTree

    x0, y0, width, height = fov_of(positions_nm)
    side = max(1, round(np.sqrt(count)))
    xs = np.linspace(x0, x0 + width, side)
    ys = np.linspace(y0, y0 + height, side)
    lattice = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    _, nearest = cKDTree(positions_nm).query(lattice)
    return np.unique(nearest)


def chunk_from_dataset(dataset: Dataset4D, indices: np.ndarray | None = None, grid: ObjectGrid | None = None) -> ScanChunk:
    """A ScanChunk of the dataset's positions ``indices`` (default all) on ``grid`` (default: covering all positions), without its invalid
    detector pixels (``Dataset4D.invalid_pixels``)."""
    idx = np.arange(dataset.n_positions) if indices is None else np.asarray(indices)
    if len(idx) == 0:
        raise ValueError("empty subset: no positions to reconstruct")
    return ScanChunk(dataset.patterns[idx], dataset.positions_nm[idx], grid or grid_for_dataset(dataset), invalid_pixels=dataset.invalid_pixels)
