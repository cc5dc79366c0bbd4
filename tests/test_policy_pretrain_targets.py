"""Pre-training to the structure-guided planner's choices, and the matched loss."""

import json

import numpy as np
import pytest
import torch
import yaml

from policy.baselines import to_unit
from policy.config import TrainConfig
from policy.pretrain_targets import matched_mse, planner_rollouts
from policy.structure_guided import StructureGuidedPlanner
from ptychoscan.config import load_model
from tests.policy_helpers import write_tiny_config, write_tiny_datasets


def test_matched_mse_ignores_the_order_within_a_sub_sequence_and_has_a_gradient():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(3, 6, 2, generator=gen)
    permuted = target[:, torch.randperm(6, generator=gen)]
    assert float(matched_mse(permuted, target)) < 1e-12
    assert float(torch.nn.functional.mse_loss(permuted, target)) > 1e-3  # the paper's ordered loss would pay for the order
    prediction = (permuted + 0.01 * torch.randn(3, 6, 2, generator=gen)).requires_grad_(True)
    loss = matched_mse(prediction, target)
    loss.backward()
    assert 0 < loss.item() < 2e-4 and prediction.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="must both be"):
        matched_mse(prediction[:, :5], target)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sg")
    files = write_tiny_datasets(root / "data", 2)
    path = write_tiny_config(root / "tiny.yaml", files, root / "run", autoencoder=3, pretrain=30)
    data = yaml.safe_load(path.read_text())
    data["pretrain"].update({"target": "structure_guided", "loss": "matched"})
    path.write_text(yaml.safe_dump(data))
    return load_model(TrainConfig, path), root


class RecordingPlanner(StructureGuidedPlanner):
    """The planner, remembering what it was shown and what it chose."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def next_positions(self, potential, origin_nm, pixel_nm, fov_nm, positions_nm, n, **kw):
        out = super().next_positions(potential, origin_nm, pixel_nm, fov_nm, positions_nm, n, **kw)
        self.calls.append((np.array(potential), np.array(positions_nm), to_unit(out, fov_nm), kw.get("budget")))
        return out


def test_planner_rollouts_follow_the_planner_from_each_episodes_own_reconstruction(tiny):
    from policy.training import make_env

    config, _ = tiny
    env = make_env(config, config.data.train)
    n_sub, b, chunk = config.n_subsequences, len(env.specimens), config.model.policy.chunk
    planner = RecordingPlanner()
    data = planner_rollouts(env, n_sub, config.rl.budget, seed=0, planner=planner, progress=False)
    assert data["positions"].shape == data["targets"].shape == (b, n_sub, chunk, 2)
    assert data["images"].shape == (b, n_sub, 1, 32, 32)
    torch.testing.assert_close(data["targets"][:, 0], data["positions"][:, 0])  # the environment's sparse-grid start
    assert len(planner.calls) == b * (n_sub - 1)
    for t in range(1, n_sub):
        for i, ep in enumerate(env.episodes):
            potential, measured, chosen, budget = planner.calls[(t - 1) * b + i]
            assert budget == config.rl.budget and len(measured) == t * chunk
            np.testing.assert_allclose(measured, ep.specimen.source.candidates_nm[ep.indices[: t * chunk]])  # its own history
            np.testing.assert_allclose(data["targets"][i, t].numpy(), np.clip(chosen, 0, 1), atol=1e-6)  # the target: its choice
            assert potential.shape == tuple(ep.specimen.grid.shape) and np.abs(potential).max() > 0  # a reconstruction
    assert not np.allclose(planner.calls[0][0], planner.calls[b][0])  # step 2 saw the reconstruction updated by step 1


def test_pretraining_to_the_structure_guided_planner_learns_its_choices(tiny):
    from policy.training import run_stage

    config, root = tiny
    run_stage("autoencoder", config)
    run_stage("pretrain", config)
    run = root / "run"
    assert (run / "rollouts_structure_guided.pt").exists()
    data = torch.load(run / "rollouts_structure_guided.pt", weights_only=False)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["stage"] == "pretrain"]
    # the loss falls by about half in 30 steps; how far exactly depends on the CPU's float rounding (0.54 on a 2-core Xeon VM)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert data["targets"].shape[0] == 2
