"""What a session was asked to do, typed: the beam and the scan of a ``SessionCreate`` request (units: nm, mrad, eV).

The request is kept as the dict it was stored as (``params``: the session file and the
status report carry it verbatim); ``SessionSpec`` reads it once, so the rest of the
service asks typed fields (``spec.beam.pixel_nm``) instead of re-reading dict keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.store import pixel_dtype

if TYPE_CHECKING:
    from service.settings import ServiceSettings


@dataclass(frozen=True)
class Beam:
    """What fixes the probe, and the key of a probe cache: hashable, compared by value."""

    energy_ev: float
    """beam energy, eV."""
    convergence_mrad: float
    """probe convergence semi-angle, mrad."""
    detector_pixels: int
    """K: patterns are K x K detector pixels after binning."""
    detector_pixel_mrad: float
    """one detector pixel after binning, mrad."""
    defocus_nm: float
    """probe defocus, nm."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Beam:
        """The beam of a session request (``SessionCreate`` fields, as stored)."""
        return cls(
            float(params["energy_ev"]),
            float(params["convergence_mrad"]),
            int(params["detector_pixels"]),
            float(params["detector_pixel_mrad"]),
            float(params["defocus_nm"]),
        )

    @property
    def pixel_nm(self) -> float:
        """Reconstruction pixel in nm: wavelength / (K * detector_pixel_mrad * 1e-3)."""
        from recon.physics import real_space_pixel_angstrom

        return real_space_pixel_angstrom(self.energy_ev, self.detector_pixels, self.detector_pixel_mrad) / 10.0


@dataclass(frozen=True)
class SessionSpec:
    """A session request read once: scan, detector and beam."""

    budget: int
    """total probe positions."""
    chunk: int
    """positions per batch."""
    endpoint: str
    """detector stream v1 endpoint (tcp://host:port)."""
    fov: tuple[float, float, float, float]
    """(x0, y0, width, height) of the probe positions, nm."""
    strategy: str
    beam: Beam
    pixel_dtype: np.dtype
    """pixel type of the counts in the session file (``service.store.pixel_dtype``)."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SessionSpec:
        """The spec of a session request (``SessionCreate`` fields, as stored)."""
        return cls(
            int(params["budget"]),
            int(params["chunk"]),
            str(params["detector_endpoint"]),
            tuple(float(v) for v in params["fov_nm"]),  # type: ignore[arg-type]
            str(params.get("strategy", "adaptive")),
            Beam.from_params(params),
            pixel_dtype(dict(params)),
        )

    @property
    def k(self) -> int:
        """Detector pixels per side (K)."""
        return self.beam.detector_pixels

    def limit_error(self, settings: ServiceSettings) -> str | None:
        """Why the service's limits refuse this session (budget, detector, grid or frame stack), None if they take it."""
        if self.budget > settings.max_budget:
            return f"budget: at most {settings.max_budget} positions"
        if not settings.detector_allowed(self.endpoint):
            return f"detector_endpoint: {self.endpoint} is not an allowed detector (settings detectors, detector_allow)"
        return self.size_error(settings.max_grid_pixels, settings.max_session_bytes)

    def size_error(self, max_grid_pixels: int, max_session_bytes: int) -> str | None:
        """Why this session's reconstruction grid (at most ``max_grid_pixels`` across) or frame stack
        (at most ``max_session_bytes``, float32 frames) would not fit; None if they fit."""
        k = self.k
        try:
            pixel_nm = self.beam.pixel_nm
        except (ArithmeticError, ValueError) as err:  # the request model's ranges keep this from happening
            return f"energy_ev, detector_pixels, detector_pixel_mrad: no reconstruction pixel ({err})"
        if not (math.isfinite(pixel_nm) and pixel_nm > 0):
            return f"energy_ev, detector_pixels, detector_pixel_mrad give a reconstruction pixel of {pixel_nm} nm"
        side = max(self.fov[2], self.fov[3]) / pixel_nm + k
        if not side <= max_grid_pixels:
            return f"fov_nm: the reconstruction grid would be {side:.0f} pixels across at {pixel_nm:.4g} nm/pixel (max_grid_pixels {max_grid_pixels})"
        stack = self.budget * k * k * 4
        if stack > max_session_bytes:
            return f"budget x detector_pixels^2 needs {stack / 2**30:.1f} GiB of frames (max_session_bytes {max_session_bytes / 2**30:.1f} GiB)"
        return None
