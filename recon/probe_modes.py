"""Incoherent probe modes for a partially coherent beam (mixed-state probe).

A partially coherent probe is a weighted set of coherent probes whose diffraction
intensities add (``recon.coherence.PartialCoherence``): at position R the model pattern is

    I(k) = sum_n w_n |F[P_n(r - R) exp(i V(r))]|^2 .

Each mode here is stored as sqrt(w_n) P_n, so that the sum needs no weights and the
object gradient of any loss of I is the sum over modes of the coherent one with
dL/dI shared: Im(conj(P_n O) F^-1[2 dL/dI F[P_n O]]) summed over n. The modes are made
from the reconstructor's coherent probe: a defocus offset dz is the Fresnel phase
exp(i pi lambda dz |k|^2) on its spectrum (``recon.probe.make_probe``'s sign: the probe of
defocus d + dz), a source offset (dx, dy) a sub-pixel Fourier shift. Cost: memory and
time per update scale with the number of modes (nodes_per_axis for a focal spread,
nodes_per_axis^2 for a source size, their product for both).

Any set of modes with the same sum_n |P_n><P_n| gives the same patterns, so the nodes can be
replaced by that operator's orthogonal eigenmodes (an SVD of the stacked modes), and the
weak ones dropped: ``power`` keeps the fewest that hold that fraction of the beam's power
(for the 60 kV, 33 mrad probe on 0.045 nm pixels: a 0.02 nm source's 9 nodes -> 6 modes at
0.995, 3 nm focal spread and 0.02 nm source together: 27 -> 10 at 0.99).

Tensors with modes carry them on the axis before the last two: (..., n, K, K).
"""

from __future__ import annotations

import math

import torch

from recon.coherence import PartialCoherence
from recon.forward import fourier_shift
from recon.physics import wavelength_angstrom
from recon.probe import spatial_frequencies


def coherent_modes(probe: torch.Tensor, coherence: PartialCoherence, pixel_nm: float, energy_ev: float,
                   power: float | None = None) -> torch.Tensor:
    """(n, K, K) modes sqrt(w_n) P_n of a (K, K) coherent probe under ``coherence``, in the probe's dtype and device.

    Args:
        probe: (K, K) complex probe centred at pixel (K//2, K//2) on the reconstruction grid.
        coherence: the spreads (focal spread nm, source size nm, 1 sigma) and nodes per spread.
        pixel_nm: the reconstruction grid's pixel, nm.
        energy_ev: beam energy, eV (the wavelength of the defocus phase).
        power: None: the quadrature nodes' probes as they are; else the fewest orthogonal modes of the
            same mixed state that hold this fraction (0, 1] of its power, scaled up to the full power.

    The modes' total intensity sum_n ||sqrt(w_n) P_n||^2 equals ||P||^2 (defocus and shift are unitary).
    """
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1] or not probe.is_complex():
        raise ValueError(f"probe must be a complex square (K, K) array, got {probe.dtype} of shape {tuple(probe.shape)}")
    if not pixel_nm > 0 or not energy_ev > 0:
        raise ValueError(f"coherence modes need a positive pixel and beam energy, got pixel_nm={pixel_nm}, energy_ev={energy_ev}")
    size = probe.shape[-1]
    pixel_a = 10.0 * pixel_nm
    kx, ky = spatial_frequencies(size, pixel_a, device=probe.device)
    k2 = kx**2 + ky**2
    lam = wavelength_angstrom(energy_ev)
    spectrum = torch.fft.fft2(probe.to(torch.complex128))
    modes = []
    for dz_nm, dx_nm, dy_nm, weight in coherence.nodes():
        wave = torch.fft.ifft2(spectrum * torch.exp(1j * math.pi * lam * (10.0 * dz_nm) * k2)) if dz_nm else probe.to(torch.complex128)
        if dx_nm or dy_nm:
            wave = fourier_shift(wave, torch.tensor([dx_nm / pixel_nm, dy_nm / pixel_nm], dtype=torch.float64, device=probe.device))
        modes.append(math.sqrt(weight) * wave)
    stacked = torch.stack(modes)
    if power is not None:
        stacked = strongest_modes(stacked, power)
    return stacked.to(probe.dtype)


def strongest_modes(modes: torch.Tensor, power: float) -> torch.Tensor:
    """The fewest orthogonal modes of the mixed state sum_n |P_n><P_n| of (n, K, K) ``modes`` that hold ``power`` of its total
    (its eigenmodes, strongest first, each scaled by its eigenvalue's square root), rescaled to the total."""
    if not 0 < power <= 1:
        raise ValueError(f"power must lie in (0, 1], got {power}")
    n, size = modes.shape[0], modes.shape[-1]
    _, values, vectors = torch.linalg.svd(modes.reshape(n, -1), full_matrices=False)
    share = torch.cumsum(values.square(), 0) / values.square().sum()
    keep = min(n, int(torch.searchsorted(share, torch.tensor(power - 1e-12, dtype=share.dtype))) + 1)
    kept = values[:keep, None] * vectors[:keep]
    return (kept * torch.sqrt(values.square().sum() / values[:keep].square().sum())).reshape(keep, size, size)


def total_power(probes: torch.Tensor, modes: bool) -> torch.Tensor:
    """|P|^2 of (m, K, K) probes, or sum_n |P_n|^2 of (m, n, K, K) modes: the illumination of each position."""
    power = torch.abs(probes) ** 2
    return power.sum(dim=1) if modes else power


def exit_waves_of_modes(patches: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """(m, n, W, W) exit waves P_n O of (m, W, W) object patches O under (m, n, W, W) modes."""
    return patches[:, None] * probes


def incoherent_sum(intensity: torch.Tensor) -> torch.Tensor:
    """(m, K, K) pattern: the (m, n, K, K) modes' intensities added."""
    return intensity.sum(dim=1)


def phase_gradient_of_modes(back: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
    """(m, W, W) sum over modes of Im(back_n conj(wave_n)): the object-phase gradient from each mode's back-propagated residual."""
    return back.mul_(waves.conj()).sum(dim=1).imag
