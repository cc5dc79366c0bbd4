"""Baseline scan generators and dose models."""

import numpy as np
import pytest

from policy.baselines import (
    apply_dose,
    full_raster_low_dose,
    low_discrepancy,
    sparse_grid,
    sparse_grid_unit,
    strategy_positions,
    uniform_random,
)

FOV = (1.0, 2.0, 2.0, 1.5)


def _inside(p, fov=FOV):
    x0, y0, w, h = fov
    return np.all((p[:, 0] >= x0) & (p[:, 0] <= x0 + w) & (p[:, 1] >= y0) & (p[:, 1] <= y0 + h))


@pytest.mark.parametrize("n", [1, 16, 50, 83])
def test_sparse_grid_count_spacing_and_fov(n):
    p = sparse_grid(FOV, n)
    assert p.shape == (n, 2) and _inside(p)
    assert len(np.unique(p, axis=0)) == n
    u = sparse_grid_unit(n)
    rows = np.unique(u[:, 1])
    assert len(rows) == round(np.sqrt(n))
    counts = [np.sum(u[:, 1] == r) for r in rows]
    assert max(counts) - min(counts) <= 1


def test_sparse_grid_16_is_4x4_cell_centred():
    u = sparse_grid_unit(16)
    np.testing.assert_allclose(np.unique(u[:, 0]), [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(u[:4, 1], 0.125)


def test_random_and_low_discrepancy_are_seeded_and_inside():
    for gen in (uniform_random, low_discrepancy):
        a, b, c = gen(FOV, 64, 1), gen(FOV, 64, 1), gen(FOV, 64, 2)
        assert _inside(a) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_low_discrepancy_covers_more_evenly_than_random():
    def worst_gap(p):
        g = np.stack(np.meshgrid(np.linspace(0, 1, 60), np.linspace(0, 1, 60)), -1).reshape(-1, 2)
        return np.sqrt(((g[:, None] - p[None]) ** 2).sum(-1)).min(1).max()
    unit = (0.0, 0.0, 1.0, 1.0)
    ld = np.mean([worst_gap(low_discrepancy(unit, 100, s)) for s in range(5)])
    rnd = np.mean([worst_gap(uniform_random(unit, 100, s)) for s in range(5)])
    assert ld < rnd


def test_dose_float_poisson_and_counts_thinning():
    rng = np.random.default_rng(0)
    pat = rng.random((200, 8, 8)).astype(np.float32)
    dosed = apply_dose(pat, 1000.0, rng)
    assert abs(dosed.sum(axis=(1, 2)).mean() - 1000.0) < 10
    low = full_raster_low_dose(pat, 20, 1000.0, seed=1)
    assert abs(low.sum(axis=(1, 2)).mean() - 100.0) < 3  # same total electrons: 20 * 1000 over 200
    counts = rng.poisson(50.0, (200, 8, 8)).astype(np.uint16)
    thin = full_raster_low_dose(counts, 50, None, seed=1)
    assert np.all(thin <= counts)
    assert abs(thin.sum() / counts.sum() - 0.25) < 0.01


def test_bad_input():
    with pytest.raises(ValueError, match="fov_nm"):
        sparse_grid((0, 0, -1, 1), 4)
    with pytest.raises(ValueError, match="positive integer"):
        uniform_random(FOV, 0, 1)
    with pytest.raises(ValueError, match="needs a dose"):
        full_raster_low_dose(np.ones((4, 2, 2), np.float32), 2, None, 0)
    with pytest.raises(ValueError, match="exceeds"):
        full_raster_low_dose(np.ones((4, 2, 2), np.float32), 5, 10.0, 0)
    with pytest.raises(ValueError, match="no fixed positions"):
        strategy_positions("adaptive", FOV, 4, 0)
