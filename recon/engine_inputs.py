"""Checks of the reconstructor's inputs, with errors that name the scan: patterns onto the device, positions, warm starts."""

from __future__ import annotations

import numpy as np
import torch


def patterns_on_device(patterns, window: int, b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Patterns as a (N, K, K) tensor of ``dtype`` on ``device``; ValueError naming the scan for a bad shape."""
    if isinstance(patterns, torch.Tensor):
        values = patterns.detach().to(device=device, dtype=dtype)
    else:
        p = np.asarray(patterns)
        values = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32 if dtype == torch.float32 else np.float64)).to(device)
    if values.ndim != 3 or values.shape[0] == 0:
        raise ValueError(f"scan {b}: patterns must have shape (N, K, K) with N >= 1, got {tuple(values.shape)}")
    if tuple(values.shape[1:]) != (window, window):
        raise ValueError(f"scan {b}: pattern size {values.shape[1]}x{values.shape[2]} does not match the {window}x{window} probe")
    return values


def raise_bad_patterns(values: torch.Tensor, b: int) -> None:
    """ValueError naming scan ``b``'s first non-finite or negative frame (called once its sum or minimum showed one)."""
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        frame = int(torch.nonzero(~finite)[0, 0])
        raise ValueError(f"scan {b}: patterns contain NaN or infinite values (first in frame {frame})")
    negative = values < 0
    if bool(negative.any()):
        frame = int(torch.nonzero(negative)[0, 0])
        raise ValueError(f"scan {b}: patterns contain negative intensities (first in frame {frame})")
    raise ValueError(f"scan {b}: the patterns' sum is not finite (overflow)")


def check_positions(positions_nm, n_patterns: int, b: int) -> np.ndarray:
    """Scan ``b``'s positions (nm) as a float64 (N, 2) array, checked against its ``n_patterns``; ValueError naming the scan."""
    pos = positions_nm.detach().cpu().double().numpy() if isinstance(positions_nm, torch.Tensor) else np.asarray(positions_nm, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"scan {b}: positions_nm must have shape (N, 2), got {pos.shape}")
    if pos.shape[0] != n_patterns:
        raise ValueError(f"scan {b}: {pos.shape[0]} positions but {n_patterns} patterns")
    if not np.isfinite(pos).all():
        raise ValueError(f"scan {b}: positions_nm contains NaN or infinite values (first at row {int(np.argwhere(~np.isfinite(pos))[0, 0])})")
    return pos


def check_windows_fit(grid, positions_nm: np.ndarray, window: int, b: int, what: str) -> None:
    """ValueError unless every probe window (``window`` px) at ``positions_nm`` (N, 2) nm lies on ``grid`` (an ObjectGrid)."""
    fits = grid.window_fits(positions_nm, window)
    if not fits.all():
        i = int(np.flatnonzero(~fits)[0])
        raise ValueError(
            f"scan {b}: {int((~fits).sum())} {what} have probe windows outside the {grid.shape[0]}x{grid.shape[1]} object grid "
            f"(first: row {i} at ({positions_nm[i, 0]:.3f}, {positions_nm[i, 1]:.3f}) nm); make the grid with ObjectGrid.covering"
        )


def initial_potential(shapes: list[tuple[int, int]], init, pad: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (B, H, W) stack of starting potentials (rad), each scan's grid (``shapes``: (ny, nx)) padded by ``pad`` px on every
    side: ``init[b]`` (a warm start on that grid) or zeros; ValueError naming the scan for a wrong shape or a non-finite value."""
    height = max(shape[0] for shape in shapes) + 2 * pad
    width = max(shape[1] for shape in shapes) + 2 * pad
    potential = torch.zeros((len(shapes), height, width), dtype=dtype, device=device)
    for b, shape in enumerate(shapes):
        start = None if init is None else init[b]
        if start is None:
            continue
        start = torch.as_tensor(start)
        if tuple(start.shape) != tuple(shape):
            raise ValueError(f"scan {b}: init has shape {tuple(start.shape)} but the grid is {tuple(shape)}")
        if start.is_complex() or not bool(torch.isfinite(start).all()):
            raise ValueError(f"scan {b}: init must be a finite real potential in rad")
        potential[b, pad : pad + shape[0], pad : pad + shape[1]] = start.to(device, dtype)
    return potential
