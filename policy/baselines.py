"""Baseline scan patterns and the dose models that make strategies comparable.

A field of view ``fov_nm = (x0, y0, width, height)`` in nm holds the probe centres.
Every generator returns (n, 2) float64 positions (x, y) in nm inside the fov.

Dose: a strategy measuring n of the N raster positions gets ``dose`` electrons per
position; the full raster at "low dose" spreads the same total, n * dose, over all N
positions (dose * n / N each). Normalised (noise-free, float) patterns are turned into
counts by Poisson sampling; count patterns (uint) are thinned binomially.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import qmc


def check_fov(fov_nm) -> tuple[float, float, float, float]:
    """Validate (x0, y0, width, height) in nm; returns it as floats."""
    try:
        x0, y0, width, height = (float(v) for v in fov_nm)
    except (TypeError, ValueError):
        raise ValueError(f"fov_nm must be (x0, y0, width, height) in nm, got {fov_nm!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, width, height)) or width <= 0 or height <= 0:
        raise ValueError(f"fov_nm must be finite with positive width and height, got {fov_nm!r}")
    return x0, y0, width, height


def _check_n(n: int) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"number of positions must be a positive integer, got {n!r}")
    return int(n)


def to_nm(unit_positions: np.ndarray, fov_nm) -> np.ndarray:
    """Positions in fov units [0, 1]^2 -> nm."""
    x0, y0, width, height = check_fov(fov_nm)
    u = np.asarray(unit_positions, dtype=np.float64)
    return np.column_stack([x0 + u[:, 0] * width, y0 + u[:, 1] * height])


def to_unit(positions_nm: np.ndarray, fov_nm) -> np.ndarray:
    """Positions in nm -> fov units [0, 1]^2."""
    x0, y0, width, height = check_fov(fov_nm)
    p = np.asarray(positions_nm, dtype=np.float64).reshape(-1, 2)
    return np.column_stack([(p[:, 0] - x0) / width, (p[:, 1] - y0) / height])


def sparse_grid_unit(n: int, offset: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """n positions on a near-square grid in fov units, row-major (y rows, x within a row).

    ``rows = round(sqrt(n))``; the n positions are spread over the rows as evenly as
    possible (row counts differ by at most one, longer rows first). Within its cell a
    position sits at ``offset`` (0.5, 0.5 = cell centre).
    """
    n = _check_n(n)
    rows = max(1, round(math.sqrt(n)))
    base, extra = divmod(n, rows)
    out = []
    for i in range(rows):
        count = base + (1 if i < extra else 0)
        y = (i + offset[1]) / rows
        out.extend(((j + offset[0]) / count, y) for j in range(count))
    return np.asarray(out, dtype=np.float64)


def sparse_grid(fov_nm, n: int) -> np.ndarray:
    """Sparse grid of n positions (nm), cell-centred; the policy's first sub-sequence."""
    return to_nm(sparse_grid_unit(n), fov_nm)


def sparse_grid_shape(budget: int, width: float, height: float) -> tuple[int, int]:
    """(ny, nx) of the smallest grid with >= budget points whose spacing is close to square on the fov."""
    aspect = width / height if height > 0 else 1.0
    nx = max(1, round(math.sqrt(budget * aspect)))
    ny = max(1, math.ceil(budget / nx))
    return ny, nx


def bit_reverse_order(n: int) -> np.ndarray:
    """A permutation of range(n) whose every prefix is spread over the range (van der Corput order)."""
    bits = max(1, (n - 1).bit_length())
    keys = [int(f"{i:0{bits}b}"[::-1], 2) for i in range(n)]
    return np.argsort(keys, kind="stable")


def sparse_grid_coarse_to_fine(fov_nm: tuple[float, float, float, float], budget: int) -> np.ndarray:
    """(budget, 2) positions on a regular grid over the fov, ordered so that every chunk covers the whole fov.

    Rows and columns are visited in bit-reversed order, so the first chunk is itself a
    coarse sparse grid (the paper's first sub-sequence) and later chunks fill it in.
    """
    x0, y0, width, height = fov_nm
    ny, nx = sparse_grid_shape(budget, width, height)
    xs = x0 + (np.arange(nx) + 0.5) * width / nx
    ys = y0 + (np.arange(ny) + 0.5) * height / ny
    order_y, order_x = bit_reverse_order(ny), bit_reverse_order(nx)
    rank = np.empty((ny, nx))
    ry = np.empty(ny)
    ry[order_y] = np.arange(ny)
    rx = np.empty(nx)
    rx[order_x] = np.arange(nx)
    # level of refinement first (max of the two ranks), then row-major inside a level
    rank = np.maximum(ry[:, None], rx[None, :]) * (ny * nx) + ry[:, None] * nx + rx[None, :]
    idx = np.argsort(rank, axis=None, kind="stable")[:budget]
    iy, ix = np.unravel_index(idx, (ny, nx))
    return np.stack([xs[ix], ys[iy]], axis=1)


def candidate_raster(fov_nm, step_nm: float) -> np.ndarray:
    """(N, 2) row-major raster of positions (x, y) in nm at ``step_nm`` over the fov, both edges included (the paper: 0.02 nm)."""
    x0, y0, width, height = check_fov(fov_nm)
    if not (math.isfinite(step_nm) and step_nm > 0):
        raise ValueError(f"raster step must be positive nm, got {step_nm!r}")
    nx = math.floor(width / step_nm + 1e-9) + 1
    ny = math.floor(height / step_nm + 1e-9) + 1
    ys, xs = np.meshgrid(y0 + np.arange(ny) * step_nm, x0 + np.arange(nx) * step_nm, indexing="ij")
    return np.column_stack([xs.ravel(), ys.ravel()])


def interleaved_grids_unit(sizes: list[int]) -> list[np.ndarray]:
    """One sparse grid per sub-sequence (fov units), in-cell offsets on a rank-1 lattice.

    Sub-sequence t of T has offset ((0.5 + t/T) mod 1, (0.5 + 2t/T) mod 1): the first is
    the cell-centred sparse grid, each one covers the whole fov, and together they
    interleave (the policy's pre-training targets).
    """
    n_sub = len(sizes)
    return [sparse_grid_unit(size, ((0.5 + t / n_sub) % 1.0, (0.5 + 2 * t / n_sub) % 1.0)) for t, size in enumerate(sizes)]


def chunk_sizes(n: int, chunk: int) -> list[int]:
    """Sub-sequence lengths of n positions in chunks of ``chunk``: full chunks, then the remainder."""
    n, chunk = _check_n(n), _check_n(chunk)
    return [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])


def interleaved_grids(fov_nm, n: int, chunk: int) -> np.ndarray:
    """n positions (nm) in sub-sequences of ``chunk``, each an interleaved sparse grid over the fov."""
    return to_nm(np.concatenate(interleaved_grids_unit(chunk_sizes(n, chunk))), fov_nm)


def uniform_random(fov_nm, n: int, seed: int) -> np.ndarray:
    """n positions drawn uniformly in the fov (nm), seeded."""
    n = _check_n(n)
    rng = np.random.default_rng(seed)
    return to_nm(rng.random((n, 2)), fov_nm)


def low_discrepancy(fov_nm, n: int, seed: int, kind: str = "halton") -> np.ndarray:
    """n positions of a scrambled Halton (or Sobol) sequence in the fov (nm), seeded."""
    n = _check_n(n)
    if kind == "halton":
        sampler = qmc.Halton(d=2, scramble=True, seed=seed)
    elif kind == "sobol":
        sampler = qmc.Sobol(d=2, scramble=True, seed=seed)
    else:
        raise ValueError(f"unknown low-discrepancy kind {kind!r} (use 'halton' or 'sobol')")
    return to_nm(sampler.random(n), fov_nm)


def strategy_positions(strategy: str, fov_nm, n: int, seed: int, chunk: int | None = None) -> np.ndarray:
    """Positions (nm) of a non-adaptive strategy: 'sparse-grid', 'random', 'low-discrepancy' or 'interleaved-grid' (needs chunk)."""
    if strategy == "interleaved-grid":
        if chunk is None:
            raise ValueError("strategy 'interleaved-grid' needs the sub-sequence length (chunk)")
        return interleaved_grids(fov_nm, n, chunk)
    if strategy == "sparse-grid":
        return sparse_grid(fov_nm, n)
    if strategy == "random":
        return uniform_random(fov_nm, n, seed)
    if strategy == "low-discrepancy":
        return low_discrepancy(fov_nm, n, seed)
    raise ValueError(f"strategy {strategy!r} has no fixed positions (choose sparse-grid, random or low-discrepancy)")


def apply_dose(patterns: np.ndarray, dose: float | None, rng: np.random.Generator) -> np.ndarray:
    """Patterns at ``dose`` electrons per position, float32.

    Float patterns are normalised to unit sum and Poisson-sampled at ``dose``; count
    (integer) patterns are binomially thinned to an expected ``dose`` per pattern
    (never above the measured counts). ``dose=None`` returns float patterns unchanged.
    """
    patterns = np.asarray(patterns)
    if dose is None:
        return patterns.astype(np.float32)
    if not (math.isfinite(dose) and dose > 0):
        raise ValueError(f"dose must be positive electrons per position, got {dose!r}")
    if patterns.dtype.kind in "ui":
        totals = patterns.reshape(len(patterns), -1).sum(-1).astype(np.float64)
        p = np.clip(dose / np.maximum(totals, 1.0), 0.0, 1.0)[:, None, None]
        return rng.binomial(patterns.astype(np.int64), p).astype(np.float32)
    sums = patterns.reshape(len(patterns), -1).sum(-1)[:, None, None].astype(np.float64)
    normalised = patterns / np.maximum(sums, 1e-30)
    return rng.poisson(normalised * dose).astype(np.float32)


def thin_counts(patterns: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Binomial thinning of count patterns: each electron kept with probability ``fraction``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"thinning fraction must be in (0, 1], got {fraction!r}")
    return rng.binomial(np.asarray(patterns).astype(np.int64), fraction).astype(np.float32)


def full_raster_low_dose(patterns: np.ndarray, n_budget: int, dose: float | None, seed: int) -> np.ndarray:
    """All N raster patterns at the dose of ``n_budget`` positions spread over N, float32.

    Float patterns: Poisson at ``dose * n_budget / N`` electrons each (``dose`` required).
    Count patterns: binomial thinning with probability ``n_budget / N`` (``dose`` ignored,
    the measured counts are the dose).
    """
    patterns = np.asarray(patterns)
    n_all = len(patterns)
    n_budget = _check_n(n_budget)
    if n_budget > n_all:
        raise ValueError(f"budget {n_budget} exceeds the {n_all} raster positions")
    rng = np.random.default_rng(seed)
    if patterns.dtype.kind in "ui":
        return thin_counts(patterns, n_budget / n_all, rng)
    if dose is None:
        raise ValueError("full-raster-low-dose on noise-free patterns needs a dose per position")
    return apply_dose(patterns, dose * n_budget / n_all, rng)
