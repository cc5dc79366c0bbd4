"""What a session was asked to do, typed: the beam and the scan of a ``SessionCreate`` request (units: nm, mrad, eV).

The request is kept as the dict it was stored as (``params``: the session file and the
status report carry it verbatim); ``SessionSpec`` reads it once, so the rest of the
service asks typed fields (``spec.beam.pixel_nm``) instead of re-reading dict keys.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.store import pixel_dtype

if TYPE_CHECKING:
    from recon.aberrations import ProbeAberrations
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
    """probe defocus, nm (positive: the crossover below the specimen entrance, abTEM's sign)."""
    astigmatism_nm: float = 0.0
    """two-fold astigmatism |C12|, nm."""
    astigmatism_angle_deg: float = 0.0
    """astigmatism angle, deg from the scan's x axis towards y."""
    cs_um: float = 0.0
    """spherical aberration C30, um."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Beam:
        """The beam of a session request (``SessionCreate`` fields, as stored; files from before the aberration fields have none)."""
        return cls(
            float(params["energy_ev"]),
            float(params["convergence_mrad"]),
            int(params["detector_pixels"]),
            float(params["detector_pixel_mrad"]),
            float(params["defocus_nm"]),
            float(params.get("astigmatism_nm", 0.0)),
            float(params.get("astigmatism_angle_deg", 0.0)),
            float(params.get("cs_um", 0.0)),
        )

    @property
    def aberrations(self) -> ProbeAberrations:
        """Its defocus, astigmatism and Cs as ``recon.aberrations.ProbeAberrations``."""
        from recon.aberrations import ProbeAberrations

        return ProbeAberrations(defocus_nm=self.defocus_nm, astigmatism_nm=self.astigmatism_nm,
                                astigmatism_angle_deg=self.astigmatism_angle_deg, cs_um=self.cs_um)

    def with_aberrations(self, aberrations: ProbeAberrations) -> Beam:
        """The same beam with other aberrations (a retrieved probe)."""
        return dataclasses.replace(self, defocus_nm=float(aberrations.defocus_nm), astigmatism_nm=float(aberrations.astigmatism_nm),
                                   astigmatism_angle_deg=float(aberrations.astigmatism_angle_deg), cs_um=float(aberrations.cs_um))

    def report(self, source: str = "nominal") -> dict:
        """Its aberrations as a status's ``probe``: source, defocus_nm, astigmatism_nm, astigmatism_angle_deg, cs_um."""
        return {"source": source, "defocus_nm": self.defocus_nm, "astigmatism_nm": self.astigmatism_nm,
                "astigmatism_angle_deg": self.astigmatism_angle_deg, "cs_um": self.cs_um}

    def with_reported(self, report: Mapping[str, Any]) -> Beam:
        """The same beam with the aberrations of a retrieval's report (its defocus_nm, astigmatism_nm, astigmatism_angle_deg, cs_um)."""
        return dataclasses.replace(self, defocus_nm=float(report["defocus_nm"]), astigmatism_nm=float(report["astigmatism_nm"]),
                                   astigmatism_angle_deg=float(report["astigmatism_angle_deg"]), cs_um=float(report["cs_um"]))

    def probe(self, device=None):
        """(K, K) complex64 unit-norm probe on the reconstruction grid (torch tensor), with these aberrations."""
        return self.aberrations.probe(self.detector_pixels, self.pixel_nm * 10.0, self.energy_ev, self.convergence_mrad, device=device)

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
    """the request's beam (its aberrations as given: nominal)."""
    retrieve_probe: bool
    """the probe's aberrations are to be retrieved from the data (``probe: retrieve``)."""
    pixel_dtype: np.dtype
    """pixel type of the counts in the session file (``service.store.pixel_dtype``)."""
    correct_positions: bool = False
    """the converged reconstruction refines the positions (``position_correction``)."""

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
            params.get("probe", "nominal") == "retrieve",
            pixel_dtype(dict(params)),
            bool(params.get("position_correction", False)),
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
        if self.correct_positions and not settings.recon_converged:
            return "position_correction: this service makes no converged end-of-session reconstructions (setting recon_converged is off)"
        return self.size_error(settings.max_grid_pixels, settings.max_session_bytes)

    def size_error(self, max_grid_pixels: int, max_session_bytes: int) -> str | None:
        """Why this session's reconstruction grid (at most ``max_grid_pixels`` across) or frame stack
        (at most ``max_session_bytes``, the frames as float32: what a reconstruction of all of them holds) would not fit; None if they fit."""
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
        # session memory holds the file's pixel type, but a reconstruction of every frame holds them as float32 too: that is the peak
        stack = self.budget * k * k * 4
        if stack > max_session_bytes:
            return f"budget x detector_pixels^2 needs {stack / 2**30:.1f} GiB of frames (max_session_bytes {max_session_bytes / 2**30:.1f} GiB)"
        return None


def clip_to_fov(positions_nm: np.ndarray, fov_nm: tuple[float, float, float, float]) -> np.ndarray:
    """Positions (N, 2) nm moved onto the field of view (x0, y0, width, height) nm, a new float64 array.

    Measured positions may stray off the fov (the microscope reports where the beam was) and
    a planner's may too; the reconstruction grid covers only the fov, so every reconstruction
    (live, converged, probe retrieval) and every plan uses the clipped positions.
    """
    x0, y0, w, h = fov_nm
    p = np.asarray(positions_nm, dtype=np.float64).reshape(-1, 2)
    return np.stack([np.clip(p[:, 0], x0, x0 + w), np.clip(p[:, 1], y0, y0 + h)], axis=1)
