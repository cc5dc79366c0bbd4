"""Supervised pre-training reproduces the sparse-grid targets; checkpoints resume; inference API."""

import json

import numpy as np
import pytest
import yaml

from policy.baselines import sparse_grid, sparse_grid_unit
from policy.checkpoint import CheckpointError, load_policy
from policy.config import TrainConfig
from policy.inference import PolicyRunner
from policy.training import pretrain_check, run_stage, target_sequence
from ptychoscan.config import load_model
from tests.policy_helpers import write_tiny_config, write_tiny_datasets


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    files = write_tiny_datasets(root / "data", 2)
    path = write_tiny_config(root / "tiny.yaml", files, root / "run", autoencoder=5, pretrain=300)
    data = yaml.safe_load(path.read_text())
    data["model"]["policy"]["hidden"] = 32
    data["checkpoint_every"] = 100
    path.write_text(yaml.safe_dump(data))
    config = load_model(TrainConfig, path)
    run_stage("autoencoder", config)
    run_stage("pretrain", config)
    return config, root / "run"


def test_targets_start_with_the_sparse_grid():
    t = target_sequence(9, 5)
    assert t.shape == (5, 9, 2)
    np.testing.assert_allclose(t[0], sparse_grid_unit(9))
    assert len(np.unique(t.reshape(-1, 2).round(6), axis=0)) == 45  # the grids interleave, no repeats


def test_pretraining_reproduces_sparse_grid(trained):
    config, run = trained
    check = pretrain_check(config, run / "policy.pt")
    # tolerance: RMS deviation below half a raster step, so snapping picks the target's raster point
    assert check["rms_fov"] < 0.5 * check["raster_step_fov"], check
    assert check["same_snapped_fraction"] > 0.8, check
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["stage"] == "pretrain"]
    assert losses[-1] < 0.05 * losses[0]


def test_resume_continues_from_checkpoint(trained):
    config, run = trained
    more = config.model_copy(update={"pretrain": config.pretrain.model_copy(update={"iterations": 302})})
    run_stage("pretrain", more)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    its = [r["iteration"] for r in rows if r["stage"] == "pretrain"]
    assert its == list(range(302))


def test_policy_runner(trained):
    _, run = trained
    runner = PolicyRunner(run / "policy.pt")
    fov = (1.0, 2.0, 0.6, 0.6)
    first = runner.first_positions(fov, runner.chunk)
    np.testing.assert_allclose(first, sparse_grid(fov, runner.chunk))
    grid = type("G", (), {"shape": (30, 30), "origin_nm": (0.5, 1.5), "pixel_nm": 0.05})()
    pot = np.random.default_rng(0).random((30, 30))
    state = runner.new_state(fov)
    a, s1 = runner.next_positions(state, pot, grid, first, 7)
    b, _ = runner.next_positions(state, pot, grid, first, 7)
    assert a.shape == (7, 2) and np.array_equal(a, b)  # deterministic
    assert np.all((a >= [1.0, 2.0]) & (a <= [1.6, 2.6]))
    assert s1.steps == 1 and s1.hidden is not None
    assert isinstance(runner.version, str) and runner.version.startswith("pretrain-")
    with pytest.raises(ValueError, match="grid"):
        runner.next_positions(state, np.zeros((3, 3)), grid, first, 4)
    with pytest.raises(ValueError, match="positive integer"):
        runner.next_positions(state, pot, grid, first, 0)


def test_bad_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such policy checkpoint"):
        load_policy(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_policy(tmp_path / "bad.pt")


def test_shipped_default_checkpoint_loads():
    from policy.checkpoint import DEFAULT_CHECKPOINT, load_default_policy

    assert DEFAULT_CHECKPOINT.stat().st_size < 20_000_000
    loaded = load_default_policy()
    assert loaded.version.startswith(("rl-", "pretrain-"))  # policy/checkpoints/README.md says which stage ships
    runner = PolicyRunner()
    fov = (0.0, 0.0, 1.95, 1.95)
    first = runner.first_positions(fov, runner.chunk)
    grid = type("G", (), {"shape": (110, 110), "origin_nm": (-1.0, -1.0), "pixel_nm": 0.045})()
    pos, _ = runner.next_positions(runner.new_state(fov), np.zeros((110, 110)), grid, first, runner.chunk)
    assert pos.shape == (runner.chunk, 2) and np.all((pos >= 0) & (pos <= 1.95))
