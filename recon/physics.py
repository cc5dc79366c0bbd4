"""Physical constants and relativistic electron optics.

Internally the physics code works in Angstrom (A); public interfaces take nm, mrad
and eV and convert at the edge (see docs/DESIGN.md section 3).
"""

from __future__ import annotations

import math

ELECTRON_REST_ENERGY_EV = 510_998.95
"""m0 c^2 in eV."""
HC_EV_ANGSTROM = 12_398.419843320026
"""h c in eV * Angstrom."""
KIRKLAND_POTENTIAL_PREFACTOR_V_A2 = 47.878_009_3
"""h^2 / (2 pi m0 e) = 2 pi a0 e in V * Angstrom^2: V(r) = 47.878 * FT^-1[f_e(q)] (Kirkland 2010, eq. 5.9)."""

NM_PER_ANGSTROM = 0.1


def wavelength_angstrom(energy_ev: float) -> float:
    """Relativistic electron wavelength in Angstrom for a beam energy in eV (60 keV -> 0.0487 A)."""
    if not energy_ev > 0:
        raise ValueError(f"beam energy must be positive, got {energy_ev} eV")
    return HC_EV_ANGSTROM / math.sqrt(energy_ev * (2.0 * ELECTRON_REST_ENERGY_EV + energy_ev))


def interaction_parameter(energy_ev: float) -> float:
    """Relativistic interaction parameter sigma in rad / (V * Angstrom).

    The transmission function of a thin specimen is exp(i * sigma * v_z) with v_z the
    projected potential in V * Angstrom (sigma = 2 pi m e lambda / h^2).
    """
    lam = wavelength_angstrom(energy_ev)
    e0 = ELECTRON_REST_ENERGY_EV
    return 2.0 * math.pi / (lam * energy_ev) * (e0 + energy_ev) / (2.0 * e0 + energy_ev)


def real_space_pixel_angstrom(energy_ev: float, detector_pixels: int, detector_pixel_mrad: float) -> float:
    """Reconstruction / simulation real-space pixel in Angstrom.

    pixel = wavelength / (K * detector_pixel_mrad * 1e-3), the sampling at which a
    K x K pattern at that angular pixel is the Fourier transform of the exit wave.
    """
    if detector_pixels <= 0 or not detector_pixel_mrad > 0:
        raise ValueError("detector_pixels and detector_pixel_mrad must be positive")
    return wavelength_angstrom(energy_ev) / (detector_pixels * detector_pixel_mrad * 1e-3)
