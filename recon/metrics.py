"""Reconstruction quality: SSIM against the ground truth, registered to sub-pixel accuracy.

The ground-truth phase (simulated data) lives on a finer grid than the reconstruction.
It is low-passed to the reconstruction's Nyquist frequency 1/(2 pixel_nm) (a circular
filter with a cosine edge from 0.85 to 1.0 of Nyquist), resampled onto the
reconstruction grid (cubic spline), and aligned by cross-correlation with a parabolic
sub-pixel peak. Both images are then standardised (zero mean, unit variance over the
region: the reconstruction's absolute offset and scale are not physical) and compared
with the Gaussian-window SSIM of Wang et al. 2004 (sigma 1.5 px, K1 0.01, K2 0.03,
data range = the ground truth's range).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from recon.dataset import GroundTruth
from recon.grid import ObjectGrid

SSIM_SIGMA_PX = 1.5
SSIM_TRUNCATE = 3.5
"""Gaussian window of the SSIM (Wang et al. 2004): sigma 1.5 px, cut at 3.5 sigma (an 11 x 11 window)."""


def ssim_map(image: np.ndarray, reference: np.ndarray, *, data_range: float | None = None, sigma: float = SSIM_SIGMA_PX) -> np.ndarray:
    """Per-pixel Gaussian-window SSIM of two equally shaped 2-D images (data range: the reference's by default)."""
    a = np.asarray(image, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim needs two 2-D images of one shape, got {a.shape} and {b.shape}")
    if data_range is None:
        data_range = float(b.max() - b.min()) or 1.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    blur = lambda x: ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=SSIM_TRUNCATE)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return num / den


def ssim(image: np.ndarray, reference: np.ndarray, *, data_range: float | None = None, sigma: float = SSIM_SIGMA_PX) -> float:
    """Mean Gaussian-window SSIM of two equally shaped 2-D images (data range: the reference's by default).

    As scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``: the mean is taken over the pixels whose whole window
    lies inside the image (a border of int(3.5 sigma + 0.5) pixels is left out), so
    that reflected edges do not count; images smaller than two windows are averaged whole.
    """
    smap = ssim_map(image, reference, data_range=data_range, sigma=sigma)
    pad = int(SSIM_TRUNCATE * sigma + 0.5)
    if min(smap.shape) > 4 * pad:
        smap = smap[pad:-pad, pad:-pad]
    return float(np.mean(smap))


def lowpass(image: np.ndarray, pixel_nm: float, cutoff_per_nm: float) -> np.ndarray:
    """Low-pass a 2-D image (pixel_nm) to spatial frequencies below ``cutoff_per_nm`` (cycles/nm), cosine edge."""
    ny, nx = image.shape
    fy = np.fft.fftfreq(ny, d=pixel_nm)
    fx = np.fft.fftfreq(nx, d=pixel_nm)
    f = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / cutoff_per_nm
    edge = 0.85
    filt = np.clip((1.0 - f) / (1.0 - edge), 0.0, 1.0)
    filt = np.where(f <= edge, 1.0, 0.5 - 0.5 * np.cos(np.pi * filt))
    mean = image.mean()
    return np.real(np.fft.ifft2(np.fft.fft2(image - mean) * filt)) + mean


def ground_truth_on_grid(ground_truth: GroundTruth, grid: ObjectGrid, shift_nm: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The ground-truth phase low-passed to ``grid``'s Nyquist and sampled at its pixels shifted by shift_nm (x, y)."""
    return _sample_on_grid(_lowpassed(ground_truth, grid), ground_truth, grid, shift_nm)


def _lowpassed(ground_truth: GroundTruth, grid: ObjectGrid) -> np.ndarray:
    """The ground-truth phase (its own grid) low-passed to ``grid``'s Nyquist frequency."""
    return lowpass(np.asarray(ground_truth.phase, dtype=np.float64), ground_truth.pixel_nm, 0.5 / grid.pixel_nm)


def _sample_on_grid(smooth: np.ndarray, ground_truth: GroundTruth, grid: ObjectGrid, shift_nm: tuple[float, float]) -> np.ndarray:
    """``smooth`` (on the ground truth's grid) sampled at ``grid``'s pixels shifted by shift_nm (x, y), cubic spline."""
    xs, ys = grid.coordinates_nm()
    col = (xs + shift_nm[0] - ground_truth.origin_nm[0]) / ground_truth.pixel_nm
    row = (ys + shift_nm[1] - ground_truth.origin_nm[1]) / ground_truth.pixel_nm
    rr, cc = np.meshgrid(row, col, indexing="ij")
    return ndimage.map_coordinates(smooth, [rr, cc], order=3, mode="nearest")


def register_shift(image: np.ndarray, reference: np.ndarray, max_shift_px: float = 4.0) -> tuple[float, float]:
    """(dx, dy) in pixels such that ``reference`` sampled at (x + dx, y + dy) best matches ``image``.

    Cross-correlation peak within +-max_shift_px, refined by a parabola through the peak
    and its neighbours on each axis (sub-pixel).
    """
    a = (image - image.mean()) * _taper(image.shape)
    b = (reference - reference.mean()) * _taper(reference.shape)
    corr = np.real(np.fft.ifft2(np.fft.fft2(a) * np.conj(np.fft.fft2(b))))
    corr = np.fft.fftshift(corr)
    cy, cx = corr.shape[0] // 2, corr.shape[1] // 2
    yy, xx = np.ogrid[: corr.shape[0], : corr.shape[1]]
    corr = np.where((yy - cy) ** 2 + (xx - cx) ** 2 <= max_shift_px**2, corr, -np.inf)
    py, px = np.unravel_index(int(np.argmax(corr)), corr.shape)
    sub = []
    for axis_values in ((corr[py, px - 1 : px + 2]) if 0 < px < corr.shape[1] - 1 else None, corr[py - 1 : py + 2, px] if 0 < py < corr.shape[0] - 1 else None):
        if axis_values is None or not np.isfinite(axis_values).all():
            sub.append(0.0)
            continue
        left, mid, right = axis_values
        den = left - 2 * mid + right
        sub.append(float(0.5 * (left - right) / den) if den < 0 else 0.0)
    # image(x) ~ reference(x - s) where s is the peak offset: sample reference at x - s
    return -(px - cx + sub[0]), -(py - cy + sub[1])


def _taper(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])) if min(shape) > 2 else np.ones(shape)


def _region_slices(grid: ObjectGrid, region_nm) -> tuple[slice, slice]:
    if region_nm is None:
        return slice(0, grid.shape[0]), slice(0, grid.shape[1])
    x0, y0, width, height = (float(v) for v in region_nm)
    c0 = max(0, math.ceil((x0 - grid.origin_nm[0]) / grid.pixel_nm - 1e-9))
    r0 = max(0, math.ceil((y0 - grid.origin_nm[1]) / grid.pixel_nm - 1e-9))
    c1 = min(grid.shape[1], math.floor((x0 + width - grid.origin_nm[0]) / grid.pixel_nm + 1e-9) + 1)
    r1 = min(grid.shape[0], math.floor((y0 + height - grid.origin_nm[1]) / grid.pixel_nm + 1e-9) + 1)
    if r1 - r0 < 7 or c1 - c0 < 7:
        raise ValueError(f"SSIM region {region_nm} nm covers only {max(r1 - r0, 0)}x{max(c1 - c0, 0)} grid pixels (need >= 7x7)")
    return slice(r0, r1), slice(c0, c1)


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() or 1.0)


def registered_truth(
    potential: torch.Tensor | np.ndarray,
    grid: ObjectGrid,
    ground_truth: GroundTruth,
    region_nm: tuple[float, float, float, float] | None = None,
    *,
    max_shift_nm: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """The reconstruction over ``region_nm`` and the ground truth registered onto the same pixels.

    Returns ``(image, truth)``, two equally shaped float64 arrays in rad: the
    reconstructed phase as it is, and the ground truth low-passed to the grid's Nyquist
    and sampled at the grid's pixels shifted by the sub-pixel registration shift.

    Args:
        potential: (ny, nx) reconstructed phase in rad on ``grid``.
        grid: the reconstruction's grid.
        ground_truth: the true phase on its own (finer) grid.
        region_nm: (x0, y0, width, height) to compare, e.g. the scanned field (the
            potential is unconstrained beyond the probe's reach); None: the whole grid.
        max_shift_nm: largest registration shift searched, nm.
    """
    v = potential.detach().cpu().double().numpy() if isinstance(potential, torch.Tensor) else np.asarray(potential, dtype=np.float64)
    if v.shape != grid.shape:
        raise ValueError(f"potential has shape {v.shape} but the grid is {grid.shape}")
    if not np.isfinite(v).all():
        raise ValueError("potential contains NaN or infinite values")
    rows, cols = _region_slices(grid, region_nm)
    raw = v[rows, cols]
    image = _standardise(raw)
    smooth = _lowpassed(ground_truth, grid)  # once: only the sampling shift changes below
    reference = _sample_on_grid(smooth, ground_truth, grid, (0.0, 0.0))[rows, cols]
    dx, dy = register_shift(image, _standardise(reference), max_shift_nm / grid.pixel_nm)
    for _ in range(2):  # refine: the parabolic peak is biased; re-register the residual shift
        shifted = _standardise(_sample_on_grid(smooth, ground_truth, grid, (dx * grid.pixel_nm, dy * grid.pixel_nm))[rows, cols])
        rx, ry = register_shift(image, shifted, 1.5)
        dx, dy = dx + rx, dy + ry
    return raw, _sample_on_grid(smooth, ground_truth, grid, (dx * grid.pixel_nm, dy * grid.pixel_nm))[rows, cols]


def ssim_against_ground_truth(
    potential: torch.Tensor | np.ndarray,
    grid: ObjectGrid,
    ground_truth: GroundTruth,
    region_nm: tuple[float, float, float, float] | None = None,
    *,
    max_shift_nm: float = 0.1,
) -> float:
    """SSIM of a reconstructed potential (rad, on ``grid``) against the registered ground truth (see ``registered_truth``).

    Both are standardised over the region first (the reconstruction's offset and scale
    are not physical), then compared with ``ssim``.
    """
    image, truth = registered_truth(potential, grid, ground_truth, region_nm, max_shift_nm=max_shift_nm)
    return ssim(_standardise(image), _standardise(truth))


def quality_scores(image: np.ndarray, truth: np.ndarray, specimen: np.ndarray | None = None) -> dict[str, float | None]:
    """Scores of a reconstruction against its registered ground truth (both (ny, nx), rad; see ``registered_truth``).

    - ``ssim``: ``ssim`` of the two standardised images, over the whole region.
    - ``pearson_r``: Pearson correlation over the region (blind to offset and scale).
    - ``nrmse``: || (image - mean) - (truth - mean) || / || truth - mean ||, phase in rad:
      the offset is not observable, the scale is (0 = perfect, 1 = as far off as a flat image).
    - ``ssim_specimen``, ``pearson_r_specimen``: the same over the pixels where
      ``specimen`` (bool, same shape) is True, the non-vacuum part; None without a mask
      or when the mask holds fewer than 16 pixels.
    """
    image = np.asarray(image, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if image.shape != truth.shape or image.ndim != 2:
        raise ValueError(f"image and truth must be equally shaped 2-D arrays, got {image.shape} and {truth.shape}")
    a, b = image - image.mean(), truth - truth.mean()
    scores: dict[str, float | None] = {
        "ssim": ssim(_standardise(image), _standardise(truth)),
        "pearson_r": _pearson(image, truth),
        "nrmse": float(np.linalg.norm(a - b) / (np.linalg.norm(b) or 1.0)),
        "ssim_specimen": None,
        "pearson_r_specimen": None,
    }
    if specimen is not None:
        mask = np.asarray(specimen, dtype=bool)
        if mask.shape != image.shape:
            raise ValueError(f"specimen mask has shape {mask.shape}, the images {image.shape}")
        if mask.sum() >= 16:
            smap = ssim_map(_standardise(image), _standardise(truth))
            scores["ssim_specimen"] = float(smap[mask].mean())
            scores["pearson_r_specimen"] = _pearson(image[mask], truth[mask])
    return scores


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.ravel(a) - np.mean(a)
    b = np.ravel(b) - np.mean(b)
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / den) if den > 0 else 0.0
