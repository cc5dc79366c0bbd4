"""The reconstructor's binned detector model: the probe on the wider K*b window, the tilt that centres it, block sums.

With ``detector_binning`` b > 1 the engine models exit waves on K*b grid pixels and sums the
far field in b x b blocks to the measured K x K patterns (docs/DESIGN.md: patterns centred
at (K//2, K//2)).
"""

from __future__ import annotations

import math

import torch


def pad_centred(probe: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a (..., K, K) probe (or probe modes) centred at K//2 to (..., size, size) centred at size//2."""
    k = probe.shape[-1]
    if size == k:
        return probe
    out = torch.zeros((*probe.shape[:-2], size, size), dtype=probe.dtype, device=probe.device)
    start = size // 2 - k // 2
    out[..., start : start + k, start : start + k] = probe
    return out


def binned_centre_tilt(k: int, binning: int, device, dtype) -> torch.Tensor | float:
    """Tilt exp(2 pi i d (x + y) / (K b)) that centres binned pixel (K//2, K//2) on the zero frequency.

    Binning the K*b-pixel far field in b x b blocks puts the zero frequency d = b (K//2) +
    (b - 1)/2 - (K b)//2 raw pixels off the centre of binned pixel K//2 (0.5 for b = 2, K
    even); the data (docs/DESIGN.md: patterns centred at (K//2, K//2); sim_microscope does the same
    tilt) are centred, so the model's exit waves carry this tilt. Without it the
    reconstruction drifts into a compensating phase ramp (0.54 rad/nm at 60 kV, K = 64).
    """
    offset = binning * (k // 2) + (binning - 1) / 2 - (k * binning) // 2
    if offset == 0:
        return 1.0
    size = k * binning
    ramp = torch.exp(2j * math.pi * offset * torch.arange(size, dtype=torch.float64, device=device) / size)
    return (ramp[:, None] * ramp[None, :]).to(dtype)


def bin_blocks(intensity: torch.Tensor, factor: int) -> torch.Tensor:
    """Sum factor x factor blocks of (M, K*f, K*f) as strided adds (much faster on CPU than a sum over the block dims)."""
    m, size, _ = intensity.shape
    rows = intensity.view(m, size // factor, factor, size)
    summed = rows[:, :, 0]
    for i in range(1, factor):
        summed = summed + rows[:, :, i]
    cols = summed.view(m, size // factor, size // factor, factor)
    out = cols[..., 0]
    for i in range(1, factor):
        out = out + cols[..., i]
    return out
