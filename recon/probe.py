"""Probe (illumination) of a STEM: aperture-limited, with defocus, two-fold astigmatism and spherical aberration."""

from __future__ import annotations

import math

import torch

from recon.physics import wavelength_angstrom


def probe_angles_mrad(size: int, pixel_angstrom: float, energy_ev: float, device=None) -> torch.Tensor:
    """Scattering angle in mrad of every pixel of a (size, size) unshifted FFT grid."""
    lam = wavelength_angstrom(energy_ev)
    k = torch.fft.fftfreq(size, d=pixel_angstrom, dtype=torch.float64, device=device)
    return torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2) * lam * 1e3


def spatial_frequencies(size: int, pixel_angstrom: float, device=None, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(kx, ky) in 1/Angstrom of every pixel of a (size, size) unshifted FFT grid: kx along the last axis (x), ky along rows (y)."""
    k = torch.fft.fftfreq(size, d=pixel_angstrom, dtype=dtype, device=device)
    return k[None, :].expand(size, size), k[:, None].expand(size, size)


def aberration_phase(
    kx: torch.Tensor,
    ky: torch.Tensor,
    wavelength_a: float,
    *,
    defocus_angstrom: float | torch.Tensor = 0.0,
    astigmatism_a_angstrom: float | torch.Tensor = 0.0,
    astigmatism_b_angstrom: float | torch.Tensor = 0.0,
    cs_angstrom: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Aberration phase chi (rad) at spatial frequencies (kx, ky) in 1/Angstrom (Krivanek notation).

    chi = 2 pi / lambda * (1/2 C10 a^2 + 1/2 a^2 (C12a cos 2phi + C12b sin 2phi) + 1/4 C30 a^4)
    with a = lambda |k| (rad), phi = atan2(ky, kx) measured from the x axis towards y,
    C10 = -defocus (abTEM's sign: positive defocus puts the crossover below the entrance plane) and
    (C12a, C12b) = C12 (cos 2 phi12, sin 2 phi12) the two-fold astigmatism. The
    coefficients may be tensors (differentiable: probe refinement and retrieval).
    """
    ax = wavelength_a * kx
    ay = wavelength_a * ky
    a2 = ax**2 + ay**2
    cos2 = ax**2 - ay**2  # a^2 cos 2phi
    sin2 = 2.0 * ax * ay  # a^2 sin 2phi
    return (2.0 * math.pi / wavelength_a) * (
        -0.5 * defocus_angstrom * a2 + 0.5 * (astigmatism_a_angstrom * cos2 + astigmatism_b_angstrom * sin2) + 0.25 * cs_angstrom * a2**2
    )


def aperture(size: int, pixel_angstrom: float, energy_ev: float, convergence_mrad: float, device=None) -> torch.Tensor:
    """(size, size) float64 aperture on the unshifted FFT grid, soft over one reciprocal pixel at the edge."""
    lam = wavelength_angstrom(energy_ev)
    alpha_mrad = probe_angles_mrad(size, pixel_angstrom, energy_ev, device=device)
    dalpha_mrad = lam / (size * pixel_angstrom) * 1e3
    return torch.clamp((convergence_mrad - alpha_mrad) / dalpha_mrad + 0.5, 0.0, 1.0)


def probe_from_spectrum(spectrum: torch.Tensor) -> torch.Tensor:
    """Real-space probe centred at (size//2, size//2), unit norm, from its unshifted spectrum."""
    probe = torch.fft.fftshift(torch.fft.ifft2(spectrum))
    return probe / torch.sqrt(torch.sum(torch.abs(probe) ** 2))


def make_probe(
    size: int,
    pixel_angstrom: float,
    energy_ev: float,
    convergence_mrad: float,
    *,
    defocus_angstrom: float = 0.0,
    cs_angstrom: float = 0.0,
    astigmatism_angstrom: float = 0.0,
    astigmatism_angle_deg: float = 0.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.complex64,
) -> torch.Tensor:
    """Real-space probe wave function on a (size, size) grid, centred at pixel (size//2, size//2).

    Normalised so that sum |psi|^2 = 1. The aperture edge is soft over one reciprocal
    pixel so that the probe varies smoothly with the sampling. The aberration phase is
    ``aberration_phase``: chi(alpha) = 2 pi / lambda * (-defocus * alpha^2 / 2 +
    C12 alpha^2 cos(2 (phi - phi12)) / 2 + Cs * alpha^4 / 4), with ``defocus = -C10``
    (abTEM's sign convention: a positive defocus d puts the crossover d below the
    entrance plane, the beam still converging there: Fresnel propagation by +d downstream
    brings it to focus); the spectrum is aperture * exp(-i chi).

    Args:
        size: grid size in pixels.
        pixel_angstrom: real-space pixel in Angstrom.
        energy_ev: beam energy in eV.
        convergence_mrad: convergence semi-angle in mrad.
        defocus_angstrom: defocus in Angstrom.
        cs_angstrom: third-order spherical aberration C30 in Angstrom.
        astigmatism_angstrom: two-fold astigmatism magnitude |C12| in Angstrom.
        astigmatism_angle_deg: its angle phi12 in degrees from the x axis (the last axis) towards y.
    """
    if size <= 0 or not pixel_angstrom > 0 or not convergence_mrad > 0:
        raise ValueError("probe size, pixel and convergence angle must be positive")
    lam = wavelength_angstrom(energy_ev)
    kx, ky = spatial_frequencies(size, pixel_angstrom, device=device)
    angle = math.radians(2.0 * astigmatism_angle_deg)
    chi = aberration_phase(
        kx,
        ky,
        lam,
        defocus_angstrom=defocus_angstrom,
        astigmatism_a_angstrom=astigmatism_angstrom * math.cos(angle),
        astigmatism_b_angstrom=astigmatism_angstrom * math.sin(angle),
        cs_angstrom=cs_angstrom,
    )
    spectrum = aperture(size, pixel_angstrom, energy_ev, convergence_mrad, device=device) * torch.exp(-1j * chi)
    return probe_from_spectrum(spectrum).to(dtype)
