"""Invalid detector pixels in the reconstructor: the (K, K) validity weight of the loss, and the normalisation without them.

Which pixels are invalid is ``recon.invalid_pixels``'s (pixels marked with the pixel
type's largest count) and the caller's (a detector's pixel mask). Such a pixel is left
out of the loss (weight 0), never set to zero: zero is a measurement. The patterns
themselves stay as measured.
"""

from __future__ import annotations

import numpy as np
import torch

from recon.binned_model import bin_blocks


def check_invalid_pixels(invalid, window: int, b: int) -> np.ndarray | None:
    """Scan ``b``'s invalid pixels as a (K, K) bool array (None: every pixel valid); ValueError naming the scan for a wrong shape
    or a mask that leaves no pixel."""
    if invalid is None:
        return None
    mask = invalid.detach().cpu().numpy() if isinstance(invalid, torch.Tensor) else np.asarray(invalid)
    if mask.shape != (window, window):
        raise ValueError(f"scan {b}: invalid_pixels must have shape ({window}, {window}), got {mask.shape}")
    mask = mask.astype(bool)
    if mask.all():
        raise ValueError(f"scan {b}: invalid_pixels excludes every detector pixel")
    return mask if mask.any() else None


def valid_fraction(model_probe: torch.Tensor, binning: int, valid: torch.Tensor) -> float:
    """The fraction of the unscattered beam's intensity that lands on ``valid`` (K, K) pixels (centred, as the data).

    ``model_probe`` is the reconstructor's (K*b, K*b) probe (with the tilt that centres
    binned pixels); a pattern's total measured on the valid pixels alone, divided by this,
    estimates its total over the whole detector (the normalisation), since a thin
    specimen's pattern is mostly the unscattered beam.
    """
    far = torch.fft.fftshift(torch.fft.fft2(model_probe, norm="ortho"), dim=(-2, -1))
    intensity = far.real.square() + far.imag.square()
    if intensity.ndim == 3:  # (n, K*b, K*b) incoherent probe modes: the beam is the sum of their intensities
        intensity = intensity.sum(0)
    if binning > 1:
        intensity = bin_blocks(intensity[None], binning)[0]
    total = float(intensity.sum())
    on_valid = float((intensity * valid.to(intensity.dtype)).sum())
    return on_valid / total if total > 0 and on_valid > 0 else 1.0


def valid_sum(patterns: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """The sum of (N, K, K) ``patterns`` over their ``valid`` (K, K) pixels (all pixels when None)."""
    return patterns.sum() if valid is None else (patterns * valid.to(patterns.dtype)).sum()


def pixel_weights(masks: list[np.ndarray | None], window: int, dtype: torch.dtype, device, shifted: bool) -> torch.Tensor | None:
    """(B, K, K) weights (1 valid, 0 invalid) of the scans' detector pixels, ifftshifted like the targets when ``shifted``; (1, K, K)
    when every scan has the same mask (no per-position lookup then); None if every pixel of every scan is valid (the loss is then
    unweighted, as before)."""
    if all(m is None for m in masks):
        return None
    same = all(m is not None and np.array_equal(m, masks[0]) for m in masks)
    weights = torch.ones((1 if same else len(masks), window, window), dtype=dtype)
    for b, mask in enumerate(masks[:1] if same else masks):
        if mask is not None:
            weights[b][torch.from_numpy(mask)] = 0
    if shifted:
        weights = torch.fft.ifftshift(weights, dim=(-2, -1))
    return weights.to(device)


def weights_of(weights: torch.Tensor, scan_of: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """The (m, K, K) or broadcastable (1, K, K) pixel weights of positions ``part`` (``pixel_weights``; ``scan_of``: each position's scan)."""
    return weights if weights.shape[0] == 1 else weights.index_select(0, scan_of.index_select(0, part))
