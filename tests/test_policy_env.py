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


def test_contrast_reward_ignores_the_unobservable_phase_offset(specimens):
    env = _env(specimens)
    env.reset([0], seed=0)
    ep = env.episodes[0]
    contrast, total = position_rewards(ep, 4, "voronoi", "contrast")
    raw, raw_total = position_rewards(ep, 4, "voronoi", "raw")
    assert total > 0 and np.all(contrast >= 0)
    ep.potential = ep.potential + 0.3  # a constant phase: same intensities, same contrast reward
    contrast2, total2 = position_rewards(ep, 4, "voronoi", "contrast")
    raw2, raw_total2 = position_rewards(ep, 4, "voronoi", "raw")
    np.testing.assert_allclose(contrast2, contrast, rtol=1e-4, atol=1e-6)
    assert np.isclose(total2, total, rtol=1e-4)
    assert raw_total2 > raw_total + 1.0 and np.all(raw2 > raw)  # the literal sum moves with the offset
    with pytest.raises(ValueError, match="unknown reward_phase"):
        position_rewards(ep, 4, "voronoi", "phase")
    with pytest.raises(ValueError, match="unknown reward_phase"):
        ScanEnv(specimens, env.reconstructor, 4, reward_phase="phase")


def test_simulated_measurement_snaps_to_a_fine_candidate_raster_and_simulates_there(specimens):
    """measurement="simulate": candidates every 0.02 nm over the field, each pattern simulated from the ground truth at
    exactly the candidate the position snapped to (the paper's raster without storing it)."""
    dataset = specimens[0].dataset
    assert dataset.ground_truth is not None
    fine = Specimen.from_dataset(dataset, "fine", measurement="simulate", candidate_step_nm=0.02)
    assert fine.n_candidates > 4 * dataset.n_positions  # 0.02 nm candidates vs the file's 0.08 nm raster
    rec = Reconstructor(probe_for(dataset), ReconOptions(iterations=2, detector_binning=1), device="cpu")
    env = ScanEnv([fine], rec, 4, dose=None, image_size=32)
    env.reset([0], seed=0)
    proposal = np.array([[[0.31, 0.52], [0.77, 0.13], [0.5, 0.5], [0.05, 0.95]]])
    measured, images, rewards, _ = env.step(proposal)
    ep = env.episodes[0]
    np.testing.assert_allclose(measured[0].numpy(), fine.unit_positions[ep.indices[-4:]], atol=1e-6)
    assert np.abs(measured[0].numpy() - proposal[0]).max() < 0.02 / fine.fov_nm[2]  # within one candidate step
    fresh = fine.source.simulator.patterns(fine.source.candidates_nm[ep.indices[-4:]])
    np.testing.assert_allclose(ep.patterns[-1], fresh, rtol=1e-5, atol=1e-8)  # noise-free: the patterns at those positions
    assert torch.isfinite(images).all() and torch.isfinite(rewards).all()
    with pytest.raises(ValueError, match="unknown measurement"):
        Specimen.from_dataset(dataset, measurement="dense")


def test_the_training_environment_reconstructs_on_the_configured_device(tmp_path, monkeypatch):
    """make_env used to build its reconstructor on the CPU even with CUDA present; it now follows config.device."""
    import policy.training as training
    import recon.device
    from policy.config import TrainConfig
    from tests.policy_helpers import write_tiny_datasets

    files = write_tiny_datasets(tmp_path, 1)
    asked = []

    def pick(requested=None):
        asked.append(requested)
        return torch.device("cpu")

    monkeypatch.setattr(recon.device, "pick_device", pick)
    config = TrainConfig(data={"train": files, "measurement": "simulate"}, device="auto",
                         model={"autoencoder": {"input_size": 32, "channels": [4, 4, 8, 8, 8, 8], "latent_dim": 8},
                                "policy": {"chunk": 4, "input_size": 8, "hidden": 8}}, rl={"budget": 8})
    env = training.make_env(config, files)
    assert asked == ["auto"]
    assert env.reconstructor.device == torch.device("cpu") and env.specimens[0].n_candidates > 64


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_training_environment_honours_an_explicit_device_and_refuses_a_missing_one(tmp_path):
    """device "cpu" puts the reconstructor and the on-demand simulator on the CPU; "cuda" where there is none is a one-line
    error, not a silent fall-back to the CPU."""
    import policy.training as training
    from policy.config import TrainConfig
    from recon.device import DeviceError
    from tests.policy_helpers import write_tiny_datasets

    files = write_tiny_datasets(tmp_path, 1)
    tiny = {"autoencoder": {"input_size": 32, "channels": [4, 4, 8, 8, 8, 8], "latent_dim": 8},
            "policy": {"chunk": 4, "input_size": 8, "hidden": 8}}
    config = TrainConfig(data={"train": files, "measurement": "simulate"}, device="cpu", model=tiny, rl={"budget": 8},
                         recon={"iterations": 1, "detector_binning": 1})
    env = training.make_env(config, files)
    assert env.reconstructor.device == torch.device("cpu") and env.specimens[0].source.simulator.device == torch.device("cpu")
    _, images = env.reset([0], seed=0)
    assert images.device == torch.device("cpu") and env.episodes[0].potential.device == torch.device("cpu")
    with pytest.raises(DeviceError, match="CUDA was requested"):
        training.make_env(config.model_copy(update={"device": "cuda"}), files)


def test_fitted_error_is_one_minus_r_squared_and_zero_for_any_affine_copy():
    from policy.quality_reward import fitted_error, initial_error

    truth = torch.randn(20, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(initial_error(truth).sum()) - 1.0) < 1e-12  # nothing measured: q = 0
    assert float(fitted_error(3.0 * truth - 7.0, truth).sum()) < 1e-20  # offset and scale are not errors
    noisy = truth + 0.5 * torch.randn(20, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = np.corrcoef(noisy.flatten().numpy(), truth.flatten().numpy())[0, 1]
    assert abs((1.0 - float(fitted_error(noisy, truth).sum())) - r**2) < 1e-9


def test_quality_rewards_split_each_gain_and_telescope_to_the_final_quality(specimens):
    """reward="quality": a sub-sequence's per-position rewards sum to its quality gain, and the gains over an episode
    add up to the final reconstruction's fitted quality (gamma = 1 returns are the quality itself)."""
    from policy.env import fov_crop
    from policy.quality_reward import fitted_error
    from recon.metrics import ground_truth_on_grid

    rec = Reconstructor(probe_for(specimens[0].dataset), ReconOptions(iterations=2, detector_binning=1), device="cpu")
    env = ScanEnv(specimens[:1], rec, 4, dose=1e4, image_size=32, reward="quality")
    env.reset([0], seed=0)
    ep = env.episodes[0]
    spec = ep.specimen
    rows, cols = fov_crop(spec.grid, spec.fov_nm)
    truth = torch.as_tensor(ground_truth_on_grid(spec.dataset.ground_truth, spec.grid)[rows, cols])
    gains = [1.0 - float(fitted_error(ep.potential[rows, cols], truth).sum())]  # the first sub-sequence's gain from q = 0
    rng = np.random.default_rng(0)
    for _ in range(3):
        _, _, rewards, totals = env.step(rng.random((1, 4, 2)))
        assert abs(float(rewards.sum()) - float(totals[0])) < 1e-4
        gains.append(float(totals[0]))
    final_q = 1.0 - float(fitted_error(ep.potential[rows, cols], truth).sum())
    assert abs(sum(gains) - final_q) < 1e-4 and final_q > 0.01
    with pytest.raises(ValueError, match="unknown reward"):
        ScanEnv(specimens, rec, 4, reward="ssim")


def test_the_simulated_source_keeps_at_most_its_cache_limit_and_returns_the_same_patterns(specimens):
    """Training keeps every specimen for the whole run: an unbounded cache grows to ~170 MB per 2 x 2 nm specimen."""
    from policy.measurement import SimulatedSource

    dataset = specimens[0].dataset
    fov = specimens[0].fov_nm
    bounded = SimulatedSource(dataset, fov, 0.02, cache_limit=5)
    unbounded = SimulatedSource(dataset, fov, 0.02)
    for picks in ([0, 1, 2], [3, 4, 5, 6], [0, 6, 6, 1], [7, 8, 9, 10, 11, 12, 13]):
        np.testing.assert_array_equal(bounded.noise_free(np.array(picks)), unbounded.noise_free(np.array(picks)))
        assert bounded.cached <= 5
    assert unbounded.cached == 14


def test_the_quality_reward_logs_the_final_quality(specimens):
    rec = Reconstructor(probe_for(specimens[0].dataset), ReconOptions(iterations=2, detector_binning=1), device="cpu")
    env = ScanEnv(specimens[:1], rec, 4, dose=1e4, image_size=32, reward="quality")
    env.reset([0], seed=0)
    gains = [env.quality(env.episodes[0])]
    for _ in range(2):
        gains.append(float(env.step(np.random.default_rng(1).random((1, 4, 2)))[3][0]))
    assert abs(env.quality(env.episodes[0]) - sum(gains)) < 1e-4
    phase = _env(specimens)
    phase.reset([0], seed=0)
    with pytest.raises(ValueError, match="no quality yet"):
        phase.quality(phase.episodes[0])


def test_each_torchrun_rank_reconstructs_on_its_own_gpu(tmp_path, monkeypatch):
    """pick_device("auto") gives plain "cuda", i.e. GPU 0 for every rank; under torchrun each rank takes cuda:LOCAL_RANK."""
    import policy.training as training
    import recon.device
    import recon.engine
    from policy.config import TrainConfig
    from tests.policy_helpers import write_tiny_datasets

    files = write_tiny_datasets(tmp_path, 1)
    built = []

    class Recorder:
        def __init__(self, probe, options, device=None):
            built.append(device)

    monkeypatch.setattr(recon.device, "pick_device", lambda requested=None: torch.device("cuda"))
    monkeypatch.setattr(recon.engine, "Reconstructor", Recorder)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    config = TrainConfig(data={"train": files}, model={"autoencoder": {"input_size": 32, "channels": [4, 4, 8, 8, 8, 8], "latent_dim": 8},
                                                        "policy": {"chunk": 4, "input_size": 8, "hidden": 8}}, rl={"budget": 8})
    training.make_env(config, files)
    monkeypatch.setenv("LOCAL_RANK", "3")  # more ranks than GPUs: they share, round robin
    training.make_env(config, files)
    monkeypatch.setenv("WORLD_SIZE", "1")
    training.make_env(config, files)
    assert built == [torch.device("cuda", 2), torch.device("cuda", 0), torch.device("cuda")]


def test_episodes_of_one_noise_group_share_their_noise(specimens):
    env = _env(specimens)
    env.reset([0, 0, 0], seed=5, noise_groups=[0, 0, 1])
    a, b, c = (ep.patterns[0] for ep in env.episodes)
    np.testing.assert_array_equal(a, b)  # same specimen, same sparse-grid positions, same noise seed
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="noise_groups"):
        env.reset([0, 0], seed=5, noise_groups=[0])


def test_leave_one_out_baseline_and_annealed_sigma():
    from policy.config import RLConfig
    from policy.rl_objective import leave_one_out

    reward = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 0.0], [5.0, 0.0]])  # two groups of k = 2
    adv = leave_one_out(reward, 2)
    torch.testing.assert_close(adv, torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    adv3 = leave_one_out(torch.tensor([1.0, 2.0, 6.0]), 3)
    torch.testing.assert_close(adv3, torch.tensor([1.0 - 4.0, 2.0 - 3.5, 6.0 - 1.5]))
    rl = RLConfig(sigma=0.0125, sigma_start=0.1, sigma_anneal_iterations=100)
    assert rl.sigma_at(0) == pytest.approx(0.1) and rl.sigma_at(100) == pytest.approx(0.0125) and rl.sigma_at(500) == pytest.approx(0.0125)
    assert rl.sigma_at(50) == pytest.approx((0.1 * 0.0125) ** 0.5)
    assert RLConfig(sigma=0.02).sigma_at(7) == 0.02


def test_cached_patterns_own_their_memory(specimens):
    """Row views of one simulation call kept the whole call's array alive after their neighbours were evicted."""
    from policy.measurement import SimulatedSource

    source = SimulatedSource(specimens[0].dataset, specimens[0].fov_nm, 0.02, cache_limit=2)
    source.noise_free(np.array([0, 1, 2, 3]))
    assert source.cached == 2 and all(p.base is None for p in source._cache.values())
    with pytest.raises(ValueError, match="cache_limit"):
        SimulatedSource(specimens[0].dataset, specimens[0].fov_nm, 0.02, cache_limit=-1)


def test_reward_to_go_credits_every_later_position_and_sigma_schedules_go_together():
    from pydantic import ValidationError

    from policy.config import RLConfig
    from policy.rl_objective import reward_to_go

    reward = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [0.5, 0.5]]])  # (B=1, T=3, n=2)
    out = reward_to_go(reward, 1.0)
    torch.testing.assert_close(out, torch.tensor([[[1.0 + 4.0, 2.0 + 4.0], [3.0 + 1.0, 0.0 + 1.0], [0.5, 0.5]]]))
    half = reward_to_go(reward, 0.5)
    torch.testing.assert_close(half[0, 0], torch.tensor([1.0 + 0.5 * 3.0 + 0.25 * 1.0, 2.0 + 0.5 * 3.0 + 0.25 * 1.0]))
    with pytest.raises(ValidationError, match="go together"):
        RLConfig(sigma_start=0.1)
    with pytest.raises(ValidationError, match="go together"):
        RLConfig(sigma_anneal_iterations=10)
