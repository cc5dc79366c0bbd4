"""The evaluation: mixed detectors in one call, saved reconstructions, the sparse grid's order, the structure-guided planner, the statistics."""

import json

import h5py
import numpy as np
import pytest

from policy.baselines import sparse_grid_coarse_to_fine
from policy.scores import paired
from policy.structure_guided import StructureGuidedPlanner
from ptychoscan.cli import main


@pytest.fixture(scope="module")
def mixed_datasets(tmp_path_factory):
    """Two tiny datasets with different detector sizes and beams (32 px at 3 mrad, 24 px at 4 mrad)."""
    from recon.dataset import write_dataset
    from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset

    root = tmp_path_factory.mktemp("mixed")
    a = SimulationConfig(scan_shape=(6, 6), step_nm=0.08, detector_pixels=32, detector_pixel_mrad=3.0, binning=1, oversample=2)
    b = a.model_copy(update={"detector_pixels": 24, "detector_pixel_mrad": 4.0, "convergence_mrad": 30.0})
    return [str(write_dataset(root / "k32.h5", simulate_raster_dataset(a, seed=1))),
            str(write_dataset(root / "k24.h5", simulate_raster_dataset(b, seed=2)))], root


def test_mixed_detector_sizes_in_one_call_and_saved_reconstructions(mixed_datasets, capsys):
    files, root = mixed_datasets
    out = root / "eval.json"
    rc = main(["evaluate", "--datasets", *files, "--density", "40", "--chunk", "5", "--seeds", "2", "--final-iterations", "2",
               "--strategies", "structure-guided", "sparse-grid", "random", "full-raster-low-dose", "--json", str(out),
               "--save-reconstructions", str(root / "rec"), "--png", str(root / "eval.png"), "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "per nm^2" in printed
    data = json.loads(out.read_text())
    rows = data["results"]
    # 2 datasets x 2 seeds x (4 strategies + the oracle)
    assert len(rows) == 2 * 2 * 5
    for r in rows:
        assert {"ssim", "pearson_r", "nrmse", "ssim_specimen", "pearson_r_specimen", "positions_per_nm2"} <= set(r)
        if r["strategy"] != "full-raster-low-dose":
            assert r["positions_per_nm2"] == pytest.approx(40, rel=0.1)
    assert "structure-guided vs sparse-grid" in data["paired"]["mos2"]
    for stem in ("k32", "k24"):
        for strategy in ("structure-guided", "sparse-grid", "random", "full-raster-low-dose", "structure-guided-oracle"):
            path = root / "rec" / stem / f"{strategy}.h5"
            with h5py.File(path) as f:
                phase = f["phase"]
                assert phase.ndim == 2 and {"pixel_nm", "origin_nm"} <= set(phase.attrs)
                pos = f["positions_nm"][()]
                # the phase covers every position with its whole window: the whole field
                origin, pixel = phase.attrs["origin_nm"], phase.attrs["pixel_nm"]
                far = origin + (np.array(phase.shape[::-1]) - 1) * pixel
                assert (pos >= origin).all() and (pos <= far).all()
    assert (root / "eval.png").stat().st_size > 1000


def test_sparse_grid_is_coarse_to_fine():
    fov = (0.0, 0.0, 2.0, 2.0)
    positions = sparse_grid_coarse_to_fine(fov, 500)
    assert len(np.unique(np.round(positions, 9), axis=0)) == 500
    for start in range(0, 500, 50):
        chunk = positions[start : start + 50]
        # every sub-sequence spans the field
        assert np.ptp(chunk[:, 0]) > 1.2 and np.ptp(chunk[:, 1]) > 1.2, start
    first = positions[:50]
    nearest = np.sort(np.hypot(*(first[:, None, :] - first[None, :, :]).transpose(2, 0, 1)), axis=1)[:, 1]
    assert nearest.min() > 0.15  # the first chunk is itself a coarse grid, not a corner of the fine one


def _flake_potential(shape=(60, 60), pixel=0.04, seed=0):
    """Atom-like texture on the left half (x < 1.2 nm), vacuum with weak noise on the right."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]] * pixel
    texture = 0.5 * np.cos(2 * np.pi * xs / 0.3) * np.cos(2 * np.pi * ys / 0.3) + 0.5
    return np.where(xs < 1.2, texture, 0.0) + 0.01 * rng.normal(size=shape)


def test_structure_guided_puts_more_positions_on_the_flake_than_in_vacuum():
    planner = StructureGuidedPlanner()
    fov = (0.2, 0.2, 2.0, 2.0)
    measured = sparse_grid_coarse_to_fine(fov, 200)[:50]
    potential = _flake_potential()
    chosen = planner.next_positions(potential, (0.0, 0.0), 0.04, fov, measured, 60)
    on_flake = int((chosen[:, 0] < 1.2).sum())
    in_vacuum = len(chosen) - on_flake
    assert on_flake > 1.5 * in_vacuum  # the flake is half the field (x 0.2-1.2 of 0.2-2.2)
    assert ((chosen >= 0.2 - 1e-9) & (chosen <= 2.2 + 1e-9)).all()
    # no two positions coincide, and none repeats a measured one
    everything = np.round(np.concatenate([measured, chosen]), 6)
    assert len(np.unique(everything, axis=0)) == len(everything)


def test_structure_guided_spreads_evenly_on_a_uniform_specimen():
    planner = StructureGuidedPlanner()
    fov = (0.2, 0.2, 2.0, 2.0)
    measured = sparse_grid_coarse_to_fine(fov, 200)[:50]
    ys, xs = np.mgrid[0:60, 0:60] * 0.04
    uniform = 0.5 * np.cos(2 * np.pi * xs / 0.3) * np.cos(2 * np.pi * ys / 0.3)
    chosen = planner.next_positions(uniform, (0.0, 0.0), 0.04, fov, measured, 60)
    left = int((chosen[:, 0] < 1.2).sum())
    assert 20 <= left <= 40


def test_paired_differences_means_wins_and_interval():
    rows = []
    for ds in range(4):
        for seed in range(2):
            base = {"class": "flake", "dataset": f"d{ds}", "seed": seed, "ssim": 0.5, "nrmse": 0.5, "ssim_specimen": None,
                    "pearson_r_specimen": None}
            rows.append({**base, "strategy": "a", "pearson_r": 0.80 + 0.01 * ds, "nrmse": 0.40})
            rows.append({**base, "strategy": "b", "pearson_r": 0.78 + 0.01 * ds + (0.01 if seed else 0.0), "nrmse": 0.50})
    result = paired(rows, focus=("a",))["flake"]["a vs b"]
    r = result["pearson_r"]
    assert r["mean"] == pytest.approx(0.015)
    assert r["wins"] == 8 and r["pairs"] == 8 and r["datasets"] == 4
    assert r["ci95"][0] == pytest.approx(0.015) and r["ci95"][1] == pytest.approx(0.015)
    assert result["nrmse"]["mean"] == pytest.approx(0.1)  # lower NRMSE is better: sign turned
    assert "ssim_specimen" not in result


def test_structure_guided_continues_the_sparse_grid_when_nothing_is_featureless():
    planner = StructureGuidedPlanner()
    fov = (0.2, 0.2, 2.0, 2.0)
    grid = sparse_grid_coarse_to_fine(fov, 200)
    ys, xs = np.mgrid[0:60, 0:60] * 0.04
    uniform = 0.5 * np.cos(2 * np.pi * xs / 0.3) * np.cos(2 * np.pi * ys / 0.3) + 0.5
    chosen = planner.next_positions(uniform, (0.0, 0.0), 0.04, fov, grid[:50], 50, budget=200)
    np.testing.assert_allclose(chosen, grid[50:100])
    # with a flake in the field it adapts instead
    flake = planner.next_positions(_flake_potential(), (0.0, 0.0), 0.04, fov, grid[:50], 50, budget=200)
    assert not np.allclose(flake, grid[50:100])


def test_the_sparse_grid_continuation_skips_points_measured_at_their_snapped_positions():
    planner = StructureGuidedPlanner()
    fov = (0.2, 0.2, 2.0, 2.0)
    grid = sparse_grid_coarse_to_fine(fov, 200)
    snapped = np.round((grid[:50] - 0.2) / 0.02) * 0.02 + 0.2  # what the evaluation measured: the nearest 0.02 nm candidates
    ys, xs = np.mgrid[0:60, 0:60] * 0.04
    uniform = 0.5 * np.cos(2 * np.pi * xs / 0.3) * np.cos(2 * np.pi * ys / 0.3) + 0.5
    chosen = planner.next_positions(uniform, (0.0, 0.0), 0.04, fov, snapped, 50, budget=200)
    np.testing.assert_allclose(chosen, grid[50:100])


def test_each_dataset_gets_its_own_budget_and_duplicate_names_are_refused(tmp_path, capsys):
    """Two fields of different size in one call: every strategy, adaptive ones included, measures each field's own budget."""
    from recon.dataset import write_dataset
    from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset

    base = SimulationConfig(scan_shape=(5, 5), step_nm=0.08, detector_pixels=32, detector_pixel_mrad=3.0, binning=1, oversample=2)
    small = write_dataset(tmp_path / "small.h5", simulate_raster_dataset(base, seed=3))
    large = write_dataset(tmp_path / "large.h5", simulate_raster_dataset(base.model_copy(update={"scan_shape": (7, 7)}), seed=4))
    out = tmp_path / "e.json"
    rc = main(["evaluate", "--datasets", str(small), str(large), "--density", "60", "--chunk", "4", "--seeds", "1",
               "--final-iterations", "2", "--strategies", "structure-guided", "sparse-grid", "--no-oracle", "--json", str(out),
               "--threads", "1"])
    assert rc == 0
    rows = json.loads(out.read_text())["results"]
    budgets = {(r["dataset"], r["strategy"]): r["n_positions"] for r in rows}
    assert budgets[("small", "structure-guided")] == budgets[("small", "sparse-grid")] == round(60 * 0.32**2)
    assert budgets[("large", "structure-guided")] == budgets[("large", "sparse-grid")] == round(60 * 0.48**2)
    capsys.readouterr()
    (tmp_path / "again").mkdir()
    copy = tmp_path / "again" / "small.h5"
    copy.write_bytes(small.read_bytes())
    assert main(["evaluate", "--datasets", str(small), str(copy), "--budget", "4", "--json", str(out)]) == 2
    assert "distinct file names" in capsys.readouterr().err


def test_a_config_changes_only_the_final_reconstruction_fields_it_names():
    """`final_recon: {iterations: 7}` in a config must not silently swap the converged recipe for ReconOptions' defaults."""
    from policy.evaluation import EvaluationOptions, default_final_recon

    options = EvaluationOptions.model_validate({"final_recon": {"iterations": 7, "detector_binning": 2}})
    default = default_final_recon()
    assert options.final_recon.iterations == 7 and options.final_recon.detector_binning == 2
    assert options.final_recon.model_dump(exclude={"iterations", "detector_binning"}) == default.model_dump(exclude={"iterations", "detector_binning"})
    assert EvaluationOptions().final_recon == default


def test_a_config_with_its_own_optimizer_is_its_own_recipe():
    """`final_recon: {optimizer: adam, step_size: 0.01}` (bench/RESULTS.md's robustness runs) must validate as plain Adam."""
    from policy.evaluation import EvaluationOptions

    adam = EvaluationOptions.model_validate({"final_recon": {"optimizer": "adam", "step_size": 0.01, "iterations": 60}}).final_recon
    assert (adam.optimizer, adam.step_size, adam.momentum, adam.precondition, adam.batch_positions) == ("adam", 0.01, 0.0, "none", 32)


def _tube_potential(shape=(60, 60), pixel=0.04, seed=0):
    """A nanotube-like band (y < 1.2 nm: a raised phase with weak texture) and vacuum whose noise has as much local contrast."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]] * pixel
    texture = 0.05 * np.cos(2 * np.pi * xs / 0.3) * np.cos(2 * np.pi * ys / 0.3)
    return np.where(ys < 1.2, 0.6 + texture, 0.0) + 0.05 * rng.normal(size=shape)


def test_the_phase_level_splits_vacuum_from_specimen_and_not_a_uniform_field():
    from policy.structure_guided import phase_level

    mask = np.ones((60, 60), dtype=bool)
    level = phase_level(_tube_potential(), 0.2 / 0.04, mask, 3.8)
    assert level is not None
    assert level[5:25].mean() > 0.9 and level[35:55].mean() < 0.1  # rows are y / 0.04 nm: the band is y < 1.2 nm
    ys, xs = np.mgrid[0:60, 0:60] * 0.04
    lattice = 0.5 * np.cos(2 * np.pi * xs / 0.3) * np.cos(2 * np.pi * ys / 0.3) + np.random.default_rng(1).normal(0, 0.05, (60, 60))
    assert phase_level(lattice, 0.2 / 0.04, mask, 3.8) is None  # one level plus noise: nothing to split


def test_vacuum_noise_is_not_structure_where_the_phase_level_says_vacuum():
    """Without the level gate the vacuum's noise contrast draws more positions than the tube; with it the tube gets most.

    (The tube's edge, a phase step, has the largest contrast of all and sets the contrast reference, so the tube's own
    texture counts ~0.35 and the gated vacuum ~0.12: a density ratio of ~2, not more.)
    """
    from policy.structure_guided import StructureGuidedOptions

    fov = (0.2, 0.2, 2.0, 2.0)
    measured = sparse_grid_coarse_to_fine(fov, 200)[:50]
    potential = _tube_potential()
    on_tube = {}
    for separation in (None, 3.8):
        planner = StructureGuidedPlanner(StructureGuidedOptions(level_separation=separation, contrast_split_ratio=None))
        chosen = planner.next_positions(potential, (0.0, 0.0), 0.04, fov, measured, 60)
        on_tube[separation] = int((chosen[:, 1] < 1.2).sum())
    assert on_tube[None] < 30 < on_tube[3.8]  # the tube is half the field (y 0.2-1.2 of 0.2-2.2)
    assert on_tube[3.8] >= on_tube[None] + 10


def test_a_runs_draws_do_not_depend_on_the_other_datasets_or_strategies_in_the_call(tmp_path):
    """Noise and random positions came from the dataset's and strategy's places in the call: splitting a table over
    processes (as on the GPU) or leaving a strategy out changed every draw. They now come from the names."""
    from recon.dataset import write_dataset
    from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset

    base = SimulationConfig(scan_shape=(5, 5), step_nm=0.08, detector_pixels=32, detector_pixel_mrad=3.0, binning=1, oversample=2)
    a = write_dataset(tmp_path / "a.h5", simulate_raster_dataset(base, seed=3))
    b = write_dataset(tmp_path / "b.h5", simulate_raster_dataset(base, seed=4))
    common = ["--budget", "8", "--chunk", "4", "--seeds", "2", "--final-iterations", "2", "--no-oracle", "--threads", "1"]

    def scores(name, datasets, strategies):
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "--datasets", *map(str, datasets), "--strategies", *strategies, "--json", str(out), *common]) == 0
        return {(r["dataset"], r["seed"], r["strategy"]): r["pearson_r"] for r in json.loads(out.read_text())["results"]}

    together = scores("together", [a, b], ["sparse-grid", "random"])
    alone = scores("alone", [b], ["random"])
    assert {k: v for k, v in together.items() if k[0] == "b" and k[2] == "random"} == alone


def test_a_non_finite_reconstruction_does_not_crash_the_phase_level():
    """With the gate on (the default), an infinite pixel made np.histogram raise; the planner must still place positions."""
    fov = (0.2, 0.2, 2.0, 2.0)
    measured = sparse_grid_coarse_to_fine(fov, 200)[:50]
    potential = _tube_potential()
    potential[:3] = np.inf
    chosen = StructureGuidedPlanner().next_positions(potential, (0.0, 0.0), 0.04, fov, measured, 20)
    assert chosen.shape == (20, 2) and np.isfinite(chosen).all()


def test_the_target_line_carries_intervals_over_specimens():
    """The share of pairs meeting the target moved 13 points between two noise draws of one planner: it needs an interval."""
    from policy.scores import adaptivity_target

    rows = []
    for ds in range(6):
        for seed in range(3):
            base = {"class": "flake", "dataset": f"d{ds}", "seed": seed, "ssim": 0.5, "nrmse": 0.5, "ssim_specimen": 0.5}
            gain = 0.02 if ds < 4 or seed == 0 else -0.01  # specimens 0-3 gain in every seed, 4-5 in one of three
            for strategy, r in (("sparse-grid", 0.80), ("random", 0.79), ("low-discrepancy", 0.78),
                                ("structure-guided", 0.80 + gain), ("structure-guided-oracle", 0.83)):
                rows.append({**base, "strategy": strategy, "pearson_r": r, "pearson_r_specimen": r})
    t = adaptivity_target(rows)["flake"]
    assert t["share_meeting_target"] == pytest.approx(14 / 18)
    low, high = t["share_ci95"]
    assert 0.0 <= low < 14 / 18 < high <= 1.0
    assert t["gain_ci95"][0] <= t["mean_gain"] <= t["gain_ci95"][1]
    assert adaptivity_target(rows)["flake"]["share_ci95"] == [low, high]  # the bootstrap is seeded


def _lattice_beside_noise(noise: float) -> np.ndarray:
    """(60, 60) phase at 0.04 nm: a lattice with zero mean for y < 1.2 nm (as a sparse live reconstruction shows a
    specimen: its high spatial frequencies without the mean phase that the level gate needs) and noise everywhere."""
    ys, xs = np.mgrid[0:60, 0:60] * 0.04
    lattice = 0.5 * np.cos(2 * np.pi * xs / 0.3) * np.cos(2 * np.pi * ys / 0.3)
    return np.where(ys < 1.2, lattice, 0.0) + noise * np.random.default_rng(2).normal(size=(60, 60))


def test_the_contrast_split_tells_vacuum_noise_from_a_lattice_without_a_phase_level():
    """A live reconstruction lacks the mean phase, so the phase level cannot split it; its contrast still does: the vacuum's
    noise then counts as no structure and the lattice gets more of the next positions. A uniform lattice does not split."""
    from scipy import ndimage

    from policy.structure_guided import StructureGuidedOptions, contrast_split, structure_map

    mask = np.ones((60, 60), dtype=bool)
    assert contrast_split(np.r_[np.full(1800, 0.3), np.full(1800, 0.05)].reshape(60, 60), mask, 2.5) == pytest.approx((0.05, 0.3))
    assert contrast_split(np.r_[np.full(1800, 0.3), np.full(1800, 0.2)].reshape(60, 60), mask, 2.5) is None  # 1.5x apart
    fov = (0.2, 0.2, 2.0, 2.0)
    measured = sparse_grid_coarse_to_fine(fov, 200)[:50]
    potential = _lattice_beside_noise(0.05)
    on_lattice, vacuum_structure = {}, {}
    for ratio in (None, 2.5):
        options = StructureGuidedOptions(contrast_split_ratio=ratio)
        s = structure_map(potential, (0.0, 0.0), 0.04, measured, options)
        vacuum_structure[ratio] = float(s[35:55, 5:55].mean())  # rows are y / 0.04 nm: vacuum is y >= 1.2 nm
        chosen = StructureGuidedPlanner(options).next_positions(potential, (0.0, 0.0), 0.04, fov, measured, 60)
        on_lattice[ratio] = int((chosen[:, 1] < 1.2).sum())
    assert vacuum_structure[2.5] < 0.5 * vacuum_structure[None]  # (0.10 vs 0.25: the lattice's structure spreads over its border)
    assert on_lattice[2.5] > on_lattice[None]  # (max_gap_nm keeps the vacuum covered: the shift is a few positions)
    ys, xs = np.mgrid[0:60, 0:60] * 0.04
    uniform = 0.5 * np.cos(2 * np.pi * xs / 0.3) * np.cos(2 * np.pi * ys / 0.3) + 0.1 * np.random.default_rng(3).normal(size=(60, 60))
    sigma = 0.08 / 0.04
    contrast = np.sqrt(np.clip(ndimage.gaussian_filter(uniform**2, sigma) - ndimage.gaussian_filter(uniform, sigma) ** 2, 0, None))
    assert contrast_split(ndimage.gaussian_filter(contrast, sigma), mask, 2.5) is None


def test_the_enrichment_cap_raises_the_floor_only_where_structure_covers_little_of_the_field():
    """A tube that clips 7 % of the field drew ~6x its share of the positions and starved the vacuum around it (whole-field r
    fell on those fields); with the cap it draws at most max_enrichment x its share; a flake over half the field is unchanged."""
    from policy.structure_guided import enrichment_floor

    def enrichment(share, floor):
        return 1.0 / (share + (1.0 - share) * floor)

    assert enrichment(0.07, 0.1) > 6
    assert enrichment(0.07, enrichment_floor(0.07, 0.1, 2.5)) == pytest.approx(2.5)
    assert enrichment_floor(0.5, 0.1, 2.5) == 0.1 and enrichment_floor(0.07, 0.1, None) == 0.1
    assert enrichment_floor(0.0, 0.1, 2.5) == pytest.approx(0.4) and enrichment_floor(1.0, 0.1, 2.5) == 0.1
