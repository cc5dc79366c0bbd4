"""Invalid detector pixels: which pixels of a K x K pattern are not measurements, and the reconstructor's (K, K) validity weight.

A DECTRIS detector with ``pixel_mask_applied`` marks its masked pixels (module gaps,
dead, noisy) in every frame with the pixel type's largest count (65535 for 16 bit), and
a pixel that saturates reads the same value; neither is a count of electrons. Such a
pixel is excluded from the reconstruction's loss (weight 0), never set to zero: zero
is a measurement. The patterns themselves stay as measured.
"""

from __future__ import annotations

import numpy as np
import torch

from recon.binned_model import bin_blocks


def marker_value(dtype: np.dtype) -> int | None:
    """The count an integer pixel type uses to mark a masked or saturated pixel (its largest value); None for float patterns."""
    dtype = np.dtype(dtype)
    return int(np.iinfo(dtype).max) if dtype.kind == "u" else None


def marked_pixels(patterns: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(K, K) bool: pixels that read the pixel type's largest count in any of the (N, K, K) integer ``patterns``.

    Float patterns (intensities, not counts) mark nothing. Read ``chunk`` frames at a time
    (an h5py dataset works too).
    """
    k = patterns.shape[-1]
    out = np.zeros((patterns.shape[-2], k), bool)
    marker = marker_value(patterns.dtype)
    if marker is None:
        return out
    for start in range(0, patterns.shape[0], chunk):
        block = np.asarray(patterns[start : start + chunk])
        out |= (block == marker).any(axis=0)
    return out


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
    if binning > 1:
        intensity = bin_blocks(intensity[None], binning)[0]
    total = float(intensity.sum())
    on_valid = float((intensity * valid.to(intensity.dtype)).sum())
    return on_valid / total if total > 0 and on_valid > 0 else 1.0


def valid_sum(patterns: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """The sum of (N, K, K) ``patterns`` over their ``valid`` (K, K) pixels (all pixels when None)."""
    return patterns.sum() if valid is None else (patterns * valid.to(patterns.dtype)).sum()


def pixel_weights(masks: list[np.ndarray | None], window: int, dtype: torch.dtype, device, shifted: bool) -> torch.Tensor | None:
    """(B, K, K) weights (1 valid, 0 invalid) of the scans' detector pixels, ifftshifted like the targets when ``shifted``; None if
    every pixel of every scan is valid (the loss is then unweighted, as before)."""
    if all(m is None for m in masks):
        return None
    weights = torch.ones((len(masks), window, window), dtype=dtype)
    for b, mask in enumerate(masks):
        if mask is not None:
            weights[b][torch.from_numpy(mask)] = 0
    if shifted:
        weights = torch.fft.ifftshift(weights, dim=(-2, -1))
    return weights.to(device)
