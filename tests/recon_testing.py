"""Shared pieces of the reconstruction tests."""

from __future__ import annotations

import numpy as np
import torch


def blob_phase(shape: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """A smooth random 'atomic' phase (float64, rad): one Gaussian blob of 0.3 rad (sigma 1.2 px) per 20 pixels."""
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    v = np.zeros((ny, nx))
    for _ in range(ny * nx // 20):
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        v += 0.3 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.2**2))
    return torch.tensor(v)
