"""The ptychographic forward model, shared by the simulator and the reconstructor.

A scan is a complex object (transmission function) O on a pixel grid and a probe P on
a K x K window. For a probe position R (in object pixels, (x, y), probe centre), the
exit wave is P(r - R) * O(r) over the window whose top-left pixel is floor(R) - K//2;
the sub-pixel part of R shifts the probe by a Fourier phase ramp. The detector sees
|F[exit wave]|^2 with the zero frequency at pixel (K//2, K//2) (centred, not
fft-shifted); with an orthonormal FFT a unit-norm probe through a pure phase object
gives a pattern that sums to 1.

Everything is batched over positions, and over independent scans through
``scan_index`` (the object of each position), so many scans run in one call.
"""

from __future__ import annotations

import math

import torch


def split_positions(positions_px: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split probe-centre positions (M, 2) in pixels into integer window origins and fractions.

    Returns ``(origin, fraction)``: origin (M, 2) long, the (x, y) pixel of the window's
    top-left corner; fraction (M, 2) in [0, 1), the sub-pixel remainder.
    """
    floor = torch.floor(positions_px)
    origin = floor.long() - window // 2
    return origin, positions_px - floor


def fourier_shift(waves: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Shift (..., K, K) complex waves by (..., 2) pixel offsets (x, y) with a Fourier phase ramp."""
    size_y, size_x = waves.shape[-2:]
    fy = torch.fft.fftfreq(size_y, device=waves.device, dtype=shift_px.dtype)
    fx = torch.fft.fftfreq(size_x, device=waves.device, dtype=shift_px.dtype)
    ramp = torch.exp(
        -2j * math.pi * (shift_px[..., 0, None, None] * fx[None, :] + shift_px[..., 1, None, None] * fy[:, None])
    ).to(waves.dtype)
    return torch.fft.ifft2(torch.fft.fft2(waves) * ramp)


def window_indices(origin: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index arrays (M, K, 1) and (M, 1, K) of each position's window."""
    steps = torch.arange(window, device=origin.device)
    rows = (origin[:, 1, None] + steps[None, :])[:, :, None]
    cols = (origin[:, 0, None] + steps[None, :])[:, None, :]
    return rows, cols


def check_windows_inside(origin: torch.Tensor, window: int, object_shape: tuple[int, int]) -> None:
    """Raise ValueError if any probe window falls outside an object of ``object_shape`` (ny, nx)."""
    ny, nx = object_shape
    bad = (origin[:, 0] < 0) | (origin[:, 1] < 0) | (origin[:, 0] + window > nx) | (origin[:, 1] + window > ny)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"{int(bad.sum())} probe window(s) fall outside the {ny}x{nx} object grid "
            f"(first: position index {first}, window origin x={int(origin[first, 0])}, y={int(origin[first, 1])})"
        )


def exit_waves(
    transmission: torch.Tensor,
    probe: torch.Tensor,
    positions_px: torch.Tensor,
    scan_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exit waves (M, K, K) for M probe positions.

    Args:
        transmission: complex object(s), (H, W) or (B, H, W).
        probe: complex probe (K, K), or (B, K, K) with one probe per scan.
        positions_px: (M, 2) probe centres (x, y) in object pixels, float.
        scan_index: (M,) long, the scan (object) each position belongs to; default 0.
    """
    if transmission.ndim == 2:
        transmission = transmission[None]
    window = probe.shape[-1]
    origin, fraction = split_positions(positions_px, window)
    check_windows_inside(origin, window, tuple(transmission.shape[-2:]))
    if scan_index is None:
        scan_index = torch.zeros(positions_px.shape[0], dtype=torch.long, device=positions_px.device)
    rows, cols = window_indices(origin, window)
    patches = transmission[scan_index[:, None, None], rows, cols]
    probes = probe[scan_index] if probe.ndim == 3 else probe[None]
    return fourier_shift(probes, fraction) * patches


def far_field_intensity(waves: torch.Tensor, crop: int | None = None) -> torch.Tensor:
    """Centred diffraction intensity |F[waves]|^2 (orthonormal FFT), optionally cropped to crop x crop."""
    intensity = torch.abs(torch.fft.fftshift(torch.fft.fft2(waves, norm="ortho"), dim=(-2, -1))) ** 2
    if crop is not None and crop != waves.shape[-1]:
        size = waves.shape[-1]
        start = size // 2 - crop // 2
        intensity = intensity[..., start : start + crop, start : start + crop]
    return intensity


def bin_patterns(patterns: torch.Tensor, factor: int) -> torch.Tensor:
    """Sum factor x factor blocks of (..., K, K) patterns (detector binning)."""
    if factor == 1:
        return patterns
    *lead, ky, kx = patterns.shape
    if ky % factor or kx % factor:
        raise ValueError(f"pattern size {ky}x{kx} is not divisible by binning {factor}")
    return patterns.reshape(*lead, ky // factor, factor, kx // factor, factor).sum(dim=(-3, -1))


def forward_intensity(
    transmission: torch.Tensor,
    probe: torch.Tensor,
    positions_px: torch.Tensor,
    scan_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Predicted diffraction patterns (M, K, K) for M positions (see ``exit_waves``)."""
    return far_field_intensity(exit_waves(transmission, probe, positions_px, scan_index))
