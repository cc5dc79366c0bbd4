"""Scan errors of a real microscope: where the beam really was, given where it was sent.

The scan coils place the beam with random jitter, a slow drift and a linear distortion
(miscalibrated gains, shear, rotation). ``ScanErrors.true_positions`` turns the nominal
(commanded) positions into the true ones the simulator uses; the dataset keeps the
nominal ones for the reconstructor and records the true ones for scoring only.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator


class ScanErrors(BaseModel):
    """Position errors, in the order applied: distortion about the scan centre, drift, jitter."""

    model_config = ConfigDict(extra="forbid")

    jitter_nm: float = Field(0.0, ge=0, allow_inf_nan=False,
                             description="standard deviation of independent Gaussian jitter per axis and position, nm")
    drift_nm_per_position: tuple[float, float] = Field(
        (0.0, 0.0), description="(x, y) drift added per position in acquisition order, nm (position i moves by i times this)"
    )
    distortion: tuple[float, float, float, float] = Field(
        (0.0, 0.0, 0.0, 0.0),
        description="linear scan distortion D = (Dxx, Dxy, Dyx, Dyy), dimensionless: true = centre + (I + D)(nominal - centre); "
        "(0.01, 0, 0, 0.01) is a 1 % scale error",
    )
    seed: int = Field(0, ge=0, description="seed of the jitter")

    @field_validator("drift_nm_per_position", "distortion")
    @classmethod
    def _finite(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not all(math.isfinite(v) for v in value):
            raise ValueError(f"scan errors must be finite, got {value}")
        return value

    @field_validator("distortion")
    @classmethod
    def _invertible(cls, value: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        dxx, dxy, dyx, dyy = value
        if abs((1 + dxx) * (1 + dyy) - dxy * dyx) < 0.5:
            raise ValueError(f"distortion {value} is not a small distortion: I + D must stay close to the identity (determinant >= 0.5)")
        return value

    @property
    def is_zero(self) -> bool:
        return self.jitter_nm == 0 and not any(self.drift_nm_per_position) and not any(self.distortion)

    def true_positions(self, nominal_nm: np.ndarray, centre_nm: tuple[float, float] | None = None, first_index: int = 0) -> np.ndarray:
        """(N, 2) true positions (x, y) in nm for nominal positions in acquisition order.

        ``centre_nm``: the point the distortion is about (default: the positions' mean, a whole
        scan's centre); ``first_index``: how many positions were placed before these (a live
        scan placed list by list: drift goes on, and each list gets its own jitter draw).
        """
        nominal = np.asarray(nominal_nm, dtype=np.float64)
        if nominal.ndim != 2 or nominal.shape[1] != 2:
            raise ValueError(f"positions must have shape (N, 2), got {nominal.shape}")
        centre = nominal.mean(axis=0) if centre_nm is None else np.asarray(centre_nm, dtype=np.float64)
        matrix = np.eye(2) + np.asarray(self.distortion, dtype=np.float64).reshape(2, 2)
        true = centre + (nominal - centre) @ matrix.T
        true = true + (first_index + np.arange(len(nominal)))[:, None] * np.asarray(self.drift_nm_per_position)[None, :]
        if self.jitter_nm > 0:
            rng = np.random.default_rng(self.seed if first_index == 0 else [self.seed, first_index])
            true = true + rng.normal(0.0, self.jitter_nm, size=true.shape)
        return true
