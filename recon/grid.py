"""The object grid: where the reconstructed potential's pixels lie, in nm."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ObjectGrid:
    """A regular pixel grid in the specimen plane.

    ``origin_nm`` is the (x, y) position in nm of the centre of pixel [0, 0]; pixel
    [i, j] (row i = y, column j = x) lies at origin + (j, i) * pixel_nm.
    """

    origin_nm: tuple[float, float]
    shape: tuple[int, int]
    """(ny, nx) pixels."""
    pixel_nm: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.pixel_nm) and self.pixel_nm > 0):
            raise ValueError(f"grid pixel_nm must be positive, got {self.pixel_nm!r}")
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"grid shape must be (ny, nx) with both >= 1, got {self.shape!r}")
        if len(self.origin_nm) != 2 or not all(math.isfinite(v) for v in self.origin_nm):
            raise ValueError(f"grid origin_nm must be finite (x, y), got {self.origin_nm!r}")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        object.__setattr__(self, "origin_nm", (float(self.origin_nm[0]), float(self.origin_nm[1])))
        object.__setattr__(self, "pixel_nm", float(self.pixel_nm))

    @classmethod
    def covering(cls, fov_nm: tuple[float, float, float, float], pixel_nm: float, window: int) -> ObjectGrid:
        """The smallest grid on which every probe centre inside ``fov_nm`` has its whole window.

        Args:
            fov_nm: (x0, y0, width, height) of the field of view in nm (probe centres).
            pixel_nm: grid pixel in nm (docs/DESIGN.md: wavelength / (K * detector_pixel_mrad)).
            window: K, the probe window in pixels.

        One spare pixel on each side absorbs rounding, so a centre exactly on the fov's
        edge is still inside.
        """
        x0, y0, width, height = (float(v) for v in fov_nm)
        if not all(math.isfinite(v) for v in (x0, y0, width, height)) or width < 0 or height < 0:
            raise ValueError(f"fov_nm must be finite (x0, y0, width, height) with width, height >= 0, got {fov_nm!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1 pixel, got {window}")
        lead = window // 2 + 1  # pixels before the first centre: floor(centre) - K//2 >= 0
        trail = window - window // 2 + 1  # pixels after the last centre's floor
        nx = math.ceil(width / pixel_nm) + lead + trail
        ny = math.ceil(height / pixel_nm) + lead + trail
        return cls((x0 - lead * pixel_nm, y0 - lead * pixel_nm), (ny, nx), pixel_nm)

    @property
    def extent_nm(self) -> tuple[float, float, float, float]:
        """(x_first, x_last, y_first, y_last) pixel centres in nm."""
        ny, nx = self.shape
        return (self.origin_nm[0], self.origin_nm[0] + (nx - 1) * self.pixel_nm, self.origin_nm[1], self.origin_nm[1] + (ny - 1) * self.pixel_nm)

    def positions_px(self, positions_nm):
        """(N, 2) probe centres (x, y) in nm -> pixels on this grid; numpy in, numpy out; torch in, torch out."""
        if isinstance(positions_nm, torch.Tensor):
            origin = torch.tensor(self.origin_nm, dtype=positions_nm.dtype, device=positions_nm.device)
            return (positions_nm - origin) / self.pixel_nm
        positions = np.asarray(positions_nm, dtype=np.float64)
        return (positions - np.asarray(self.origin_nm)) / self.pixel_nm

    def window_fits(self, positions_nm, window: int) -> np.ndarray:
        """(N,) bool: does each position's K x K probe window lie on the grid?"""
        px = np.asarray(self.positions_px(np.asarray(positions_nm, dtype=np.float64)))
        start = np.floor(px).astype(np.int64) - window // 2
        ny, nx = self.shape
        return (start[:, 0] >= 0) & (start[:, 1] >= 0) & (start[:, 0] + window <= nx) & (start[:, 1] + window <= ny)

    def coordinates_nm(self) -> tuple[np.ndarray, np.ndarray]:
        """1-D pixel-centre coordinates (x (nx,), y (ny,)) in nm."""
        ny, nx = self.shape
        return self.origin_nm[0] + np.arange(nx) * self.pixel_nm, self.origin_nm[1] + np.arange(ny) * self.pixel_nm
