"""The scanning environment: snapping, batched warm-started reconstruction, Voronoi rewards."""

import numpy as np
import pytest
import torch

from policy.env import ScanEnv, Specimen, position_rewards, snap_to_unvisited
from recon.beam import probe_for
from recon.engine import Reconstructor
from recon.options import ReconOptions
from tests.policy_helpers import write_tiny_datasets


@pytest.fixture(scope="module")
def specimens(tmp_path_factory):
    from recon.dataset import read_dataset

    files = write_tiny_datasets(tmp_path_factory.mktemp("env"), 2)
    return [Specimen.from_dataset(read_dataset(f), f"s{i}") for i, f in enumerate(files)]


def _env(specimens, credit="voronoi"):
    rec = Reconstructor(probe_for(specimens[0].dataset), ReconOptions(iterations=2, detector_binning=1), device="cpu")
    return ScanEnv(specimens, rec, 4, dose=1e4, image_size=32, credit=credit)


def test_snap_never_repeats_and_rejects_overflow():
    raster = np.array([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]])
    visited = np.array([False, True, False])
    idx = snap_to_unvisited(np.array([[0.45, 0.0], [0.1, 0.0]]), raster, visited)
    assert idx.tolist() == [0, 2]  # 0.45 -> index 0 (1 visited); 0.1 -> 0 taken, so 2
    assert visited.all()
    with pytest.raises(ValueError, match="only 0 raster positions are left"):
        snap_to_unvisited(np.array([[0.0, 0.0]]), raster, visited)


def test_episode_steps_batch_and_warm_start(specimens):
    env = _env(specimens)
    pos, img = env.reset([0, 1, 0], seed=0)
    assert pos.shape == (3, 4, 2) and img.shape == (3, 1, 32, 32)
    first = [ep.potential.clone() for ep in env.episodes]
    pos2, _img2, rewards, totals = env.step(torch.rand(3, 4, 2, generator=torch.Generator().manual_seed(1)))
    assert rewards.shape == (3, 4) and totals.shape == (3,)
    for ep, before in zip(env.episodes, first, strict=True):
        assert len(ep.indices) == 8 and len(set(ep.indices)) == 8 and ep.visited.sum() == 8
        assert not torch.equal(ep.potential, before)
    raster = specimens[0].unit_positions
    assert all(any(np.allclose(p, r) for r in raster) for p in pos2[0].numpy())  # measured = raster points
    with pytest.raises(ValueError, match="positions must be"):
        env.step(np.zeros((2, 4, 2)))


def test_voronoi_rewards_partition_the_total(specimens):
    env = _env(specimens)
    env.reset([0], seed=0)
    env.step(np.random.default_rng(0).random((1, 4, 2)))
    ep = env.episodes[0]
    all_rewards, total = position_rewards(ep, len(ep.indices), "voronoi")
    assert np.isclose(all_rewards.sum(), total, rtol=1e-4, atol=1e-5)
    last, _ = position_rewards(ep, 4, "voronoi")
    np.testing.assert_allclose(last, all_rewards[-4:])
    flat, total2 = position_rewards(ep, 4, "total")
    assert np.allclose(flat, total2) and np.isclose(total, total2)
