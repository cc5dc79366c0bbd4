"""What a session was asked to do, typed: the beam and the scan of a ``SessionCreate`` request (units: nm, mrad, eV).

The request is kept as the dict it was stored as (``params``: the session file and the
status report carry it verbatim); ``SessionSpec`` reads it once, so the rest of the
service asks typed fields (``spec.beam.pixel_nm``) instead of re-reading dict keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.store import pixel_dtype


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
