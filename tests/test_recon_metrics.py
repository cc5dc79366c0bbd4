"""SSIM metric and grid: identical -> 1, shifted image registered, region checks."""

from __future__ import annotations

import numpy as np
import pytest

from recon.dataset import GroundTruth
from recon.grid import ObjectGrid
from recon.metrics import ground_truth_on_grid, ssim, ssim_against_ground_truth


def _truth(seed: int = 0) -> GroundTruth:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:240, :240] * 0.0125
    phase = np.zeros_like(xx)
    for cx, cy in rng.uniform(0, 3.0, size=(120, 2)):
        phase += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.04**2))
    return GroundTruth(phase.astype(np.float32), 0.0125, (0.0, 0.0))


GRID = ObjectGrid((0.5, 0.5), (40, 40), 0.05)


def test_identical_images_score_one():
    truth = _truth()
    on_grid = ground_truth_on_grid(truth, GRID)
    assert ssim(on_grid, on_grid) == pytest.approx(1.0)
    assert ssim_against_ground_truth(on_grid, GRID, truth) == pytest.approx(1.0, abs=1e-6)
    # scale and offset are not physical: they do not change the score
    assert ssim_against_ground_truth(3 * on_grid + 1, GRID, truth) == pytest.approx(1.0, abs=1e-6)


def test_subpixel_shift_is_registered():
    truth = _truth(1)
    shifted = ground_truth_on_grid(truth, GRID, (0.37 * GRID.pixel_nm, -0.6 * GRID.pixel_nm))
    unregistered = ssim(shifted, ground_truth_on_grid(truth, GRID))
    registered = ssim_against_ground_truth(shifted, GRID, truth)
    assert unregistered < 0.9
    assert registered > 0.99
    assert ssim_against_ground_truth(np.random.default_rng(0).normal(size=GRID.shape), GRID, truth) < 0.2


def test_region_and_shape_errors():
    truth = _truth()
    with pytest.raises(ValueError, match="grid is"):
        ssim_against_ground_truth(np.zeros((3, 3)), GRID, truth)
    with pytest.raises(ValueError, match="covers only"):
        ssim_against_ground_truth(np.zeros(GRID.shape), GRID, truth, region_nm=(0.6, 0.6, 0.1, 0.1))


def test_grid_covering_fits_every_window_in_the_fov():
    grid = ObjectGrid.covering((1.0, 2.0, 0.7, 0.3), 0.045, 64)
    corners = np.array([[1.0, 2.0], [1.7, 2.3], [1.0, 2.3], [1.7, 2.0], [1.35, 2.15]])
    assert grid.window_fits(corners, 64).all()
    assert not grid.window_fits(np.array([[0.0, 0.0]]), 64).any()
    np.testing.assert_allclose(grid.positions_px(np.array([list(grid.origin_nm)])), [[0.0, 0.0]])
    with pytest.raises(ValueError):
        ObjectGrid((0, 0), (0, 5), 0.1)
    with pytest.raises(ValueError):
        ObjectGrid.covering((0, 0, -1, 1), 0.1, 8)


def test_ssim_is_scikit_images():
    """Validated against an independent implementation: scikit-image's Gaussian-window SSIM (border excluded)."""
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(3)
    for shape in [(44, 44), (60, 52)]:
        a = rng.normal(size=shape)
        b = a + 0.7 * rng.normal(size=shape)
        ours = ssim(a, b)
        theirs = skimage_metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                                       data_range=float(b.max() - b.min()))
        assert ours == pytest.approx(theirs, abs=1e-9)


def test_quality_scores_offset_scale_and_mask():
    from recon.metrics import quality_scores

    rng = np.random.default_rng(4)
    truth = rng.normal(size=(40, 40))
    perfect = quality_scores(truth + 2.0, truth)  # the offset is not observable
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["pearson_r"] == pytest.approx(1.0) and perfect["nrmse"] == pytest.approx(0.0, abs=1e-12)
    half = quality_scores(0.5 * truth, truth)  # the scale is: Pearson r blind to it, NRMSE not
    assert half["pearson_r"] == pytest.approx(1.0) and half["nrmse"] == pytest.approx(0.5)
    noisy = truth + rng.normal(size=truth.shape)
    mask = np.zeros(truth.shape, bool)
    mask[:, :20] = True
    masked = quality_scores(np.where(mask, truth, noisy), truth, mask)
    assert masked["pearson_r_specimen"] == pytest.approx(1.0) and masked["pearson_r"] < 0.9
    assert quality_scores(truth, truth, np.zeros_like(mask))["ssim_specimen"] is None
