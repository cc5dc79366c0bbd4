"""A Nion camera frame (float32 counts) -> a K x K detector frame in an unsigned pixel type, as a counting detector reports it."""

from __future__ import annotations

import numpy as np


class FrameShapeError(ValueError):
    """The camera frame cannot be binned to K x K; one line naming both shapes."""


def bin_to(frame: np.ndarray, k: int) -> np.ndarray:
    """Sum ``frame`` (H, W) over equal blocks to (k, k); H and W must be multiples of k. float64 out."""
    a = np.asarray(frame, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] % k or a.shape[1] % k:
        raise FrameShapeError(f"camera frame of shape {a.shape} cannot be binned to {k} x {k} (its sides must be multiples of {k})")
    by, bx = a.shape[0] // k, a.shape[1] // k
    return a.reshape(k, by, k, bx).sum(axis=(1, 3))


def to_counts(frame: np.ndarray, k: int, dtype: str = "uint32") -> np.ndarray:
    """``frame`` binned to (k, k), rounded to the nearest count, clipped to ``dtype``'s range (NaN -> 0)."""
    dt = np.dtype(dtype)
    binned = np.nan_to_num(bin_to(frame, k), nan=0.0, posinf=float(np.iinfo(dt).max), neginf=0.0)
    return np.clip(np.rint(binned), 0, np.iinfo(dt).max).astype(dt)
