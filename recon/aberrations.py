"""The aberrations that matter after alignment, and the probe they make.

``ProbeAberrations`` holds defocus (nm), two-fold astigmatism (magnitude nm, angle deg)
and spherical aberration Cs (um) in the sign convention of ``recon.probe.make_probe``
(defocus = -C10, abTEM's sign; astigmatism angle from the x axis towards y). The same
numbers build the simulator's true probe, the reconstructor's probe and the retrieval's
estimate, so a dataset simulated with some aberrations and reconstructed with the probe
they make is self-consistent.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recon.physics import real_space_pixel_angstrom
from recon.probe import make_probe


class ProbeAberrations(BaseModel):
    """Axial aberrations of the probe-forming lens (Krivanek C10, C12, C30)."""

    model_config = ConfigDict(extra="forbid")

    defocus_nm: float = Field(0.0, description="defocus = -C10, nm (abTEM's sign: positive puts the crossover that far below the specimen entrance)")
    astigmatism_nm: float = Field(0.0, ge=0, description="two-fold astigmatism |C12|, nm")
    astigmatism_angle_deg: float = Field(0.0, description="astigmatism angle phi12, deg from the scan's x axis towards y")
    cs_um: float = Field(0.0, description="spherical aberration C30, um")

    @field_validator("defocus_nm", "astigmatism_nm", "astigmatism_angle_deg", "cs_um")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"aberration coefficients must be finite, got {value}")
        return value

    @classmethod
    def from_cartesian(cls, defocus_nm: float, c12a_nm: float, c12b_nm: float, cs_um: float) -> ProbeAberrations:
        """From (C12a, C12b) = |C12| (cos 2 phi12, sin 2 phi12) in nm; the angle is returned in [0, 180) deg."""
        magnitude = math.hypot(c12a_nm, c12b_nm)
        angle = math.degrees(0.5 * math.atan2(c12b_nm, c12a_nm)) % 180.0 if magnitude > 0 else 0.0
        return cls(defocus_nm=defocus_nm, astigmatism_nm=magnitude, astigmatism_angle_deg=angle, cs_um=cs_um)

    @property
    def astigmatism_cartesian_nm(self) -> tuple[float, float]:
        """(C12a, C12b) in nm: |C12| (cos 2 phi12, sin 2 phi12); continuous where the angle wraps."""
        angle = math.radians(2.0 * self.astigmatism_angle_deg)
        return self.astigmatism_nm * math.cos(angle), self.astigmatism_nm * math.sin(angle)

    def astigmatism_error_nm(self, other: ProbeAberrations) -> float:
        """|C12 - C12'| in nm as complex numbers: the astigmatism error that accounts for the angle too."""
        a, b = self.astigmatism_cartesian_nm
        c, d = other.astigmatism_cartesian_nm
        return math.hypot(a - c, b - d)

    def probe(
        self,
        size: int,
        pixel_angstrom: float,
        energy_ev: float,
        convergence_mrad: float,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.complex64,
    ) -> torch.Tensor:
        """(size, size) unit-norm probe with these aberrations (``make_probe``; pixel in Angstrom, energy eV, semi-angle mrad)."""
        return make_probe(
            size,
            pixel_angstrom,
            energy_ev,
            convergence_mrad,
            defocus_angstrom=10.0 * self.defocus_nm,
            cs_angstrom=1e4 * self.cs_um,
            astigmatism_angstrom=10.0 * self.astigmatism_nm,
            astigmatism_angle_deg=self.astigmatism_angle_deg,
            device=device,
            dtype=dtype,
        )

    def reconstruction_probe(self, energy_ev: float, convergence_mrad: float, detector_pixels: int, detector_pixel_mrad: float) -> torch.Tensor:
        """(K, K) probe on the reconstruction grid (pixel = lambda / (K * detector mrad/pixel))."""
        pixel = real_space_pixel_angstrom(energy_ev, detector_pixels, detector_pixel_mrad)
        return self.probe(detector_pixels, pixel, energy_ev, convergence_mrad)

    def summary(self) -> str:
        """One line: defocus, astigmatism (angle) and Cs with units."""
        return f"defocus {self.defocus_nm:+.2f} nm, astigmatism {self.astigmatism_nm:.2f} nm at {self.astigmatism_angle_deg:.0f} deg, Cs {self.cs_um:+.2f} um"
