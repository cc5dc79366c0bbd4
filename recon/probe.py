"""Probe (illumination) of a STEM: aperture-limited, with defocus and spherical aberration."""

from __future__ import annotations

import math

import torch

from recon.physics import wavelength_angstrom


def probe_angles_mrad(size: int, pixel_angstrom: float, energy_ev: float, device=None) -> torch.Tensor:
    """Scattering angle in mrad of every pixel of a (size, size) unshifted FFT grid."""
    lam = wavelength_angstrom(energy_ev)
    k = torch.fft.fftfreq(size, d=pixel_angstrom, dtype=torch.float64, device=device)
    return torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2) * lam * 1e3


def make_probe(
    size: int,
    pixel_angstrom: float,
    energy_ev: float,
    convergence_mrad: float,
    *,
    defocus_angstrom: float = 0.0,
    cs_angstrom: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.complex64,
) -> torch.Tensor:
    """Real-space probe wave function on a (size, size) grid, centred at pixel (size//2, size//2).

    Normalised so that sum |psi|^2 = 1. The aperture edge is soft over one reciprocal
    pixel so that the probe varies smoothly with the sampling. The aberration phase is
    chi(alpha) = 2 pi / lambda * (-defocus * alpha^2 / 2 + Cs * alpha^4 / 4), with
    ``defocus = -C10`` (positive defocus focuses the beam above the specimen entrance,
    abTEM's sign convention).

    Args:
        size: grid size in pixels.
        pixel_angstrom: real-space pixel in Angstrom.
        energy_ev: beam energy in eV.
        convergence_mrad: convergence semi-angle in mrad.
        defocus_angstrom: defocus in Angstrom.
        cs_angstrom: third-order spherical aberration C30 in Angstrom.
    """
    if size <= 0 or not pixel_angstrom > 0 or not convergence_mrad > 0:
        raise ValueError("probe size, pixel and convergence angle must be positive")
    lam = wavelength_angstrom(energy_ev)
    alpha_mrad = probe_angles_mrad(size, pixel_angstrom, energy_ev, device=device)
    dalpha_mrad = lam / (size * pixel_angstrom) * 1e3
    aperture = torch.clamp((convergence_mrad - alpha_mrad) / dalpha_mrad + 0.5, 0.0, 1.0)
    alpha = alpha_mrad * 1e-3
    chi = 2.0 * math.pi / lam * (-0.5 * defocus_angstrom * alpha**2 + 0.25 * cs_angstrom * alpha**4)
    spectrum = aperture * torch.exp(-1j * chi)
    probe = torch.fft.fftshift(torch.fft.ifft2(spectrum))
    probe = probe / torch.sqrt(torch.sum(torch.abs(probe) ** 2))
    return probe.to(dtype)
