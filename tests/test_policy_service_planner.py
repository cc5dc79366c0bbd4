"""The GRU policy behind the service's planner seam: sparse grid first, per-session state (by session id or by
issued positions), batched over sessions, inside the fov."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.baselines import sparse_grid
from policy.checkpoint import build_models, save_checkpoint
from policy.config import AutoencoderConfig, ModelConfig, PolicyNetConfig, TrainConfig
from policy.inference import PolicyRunner
from policy.service_planner import PolicyPlanner, load_planner
from recon.grid import ObjectGrid
from service.planner import PlanRequest, PositionPlanner, resolve_planner

FOV = (0.2, 0.3, 1.6, 1.2)
GRID = ObjectGrid((-0.5, -0.4), (70, 80), 0.04)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = ModelConfig(autoencoder=AutoencoderConfig(input_size=32, channels=(4, 4, 8, 8, 8, 8), latent_dim=8),
                        policy=PolicyNetConfig(chunk=6, input_size=8, hidden=16))
    config = TrainConfig(model=model, rl={"budget": 30})
    ae, pol = build_models(config)
    with torch.no_grad():  # spread the outputs so that positions (and states) differ clearly
        pol.fc_h.weight.mul_(20.0)
        pol.fc_z.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("ckpt") / "policy.pt"
    save_checkpoint(path, {"config": config.model_dump(mode="json"), "autoencoder": ae.state_dict(),
                           "policy": pol.state_dict(), "stage": "rl", "iteration": 1, "policy_version": "test-1"})
    return path


def _potential(seed: int) -> np.ndarray:
    """A plane wave of random direction and period (distinct latents) on the grid."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[: GRID.shape[0], : GRID.shape[1]]
    kx, ky = rng.normal(size=2) * 0.3
    return np.cos(kx * xs + ky * ys).astype(np.float32)


def _req(positions, potential, n=6, batch_index=1):
    return PlanRequest(FOV, 30, 6, batch_index, np.asarray(positions, dtype=np.float64).reshape(-1, 2), potential,
                       None if potential is None else GRID.origin_nm, None if potential is None else GRID.pixel_nm, n_next=n)


def _inside(p):
    x0, y0, w, h = FOV
    return np.all((p[:, 0] >= x0 - 1e-9) & (p[:, 0] <= x0 + w + 1e-9) & (p[:, 1] >= y0 - 1e-9) & (p[:, 1] <= y0 + h + 1e-9))


def test_service_resolves_adaptive_to_the_gru_policy(checkpoint):
    choice = resolve_planner("adaptive", checkpoint)
    assert choice.fallback is None
    assert isinstance(choice.planner, PolicyPlanner) and isinstance(choice.planner, PositionPlanner)
    assert choice.planner.version == "gru-policy:test-1"
    choice.planner.warmup()


def test_first_batch_is_the_sparse_grid_then_the_policy(checkpoint):
    planner = load_planner(checkpoint)
    first = planner.plan([_req([], None, batch_index=0)])[0]
    np.testing.assert_allclose(first, sparse_grid(FOV, 6))
    nxt = planner.plan([_req(first, _potential(0))])[0]
    assert nxt.shape == (6, 2) and _inside(nxt)
    assert not np.allclose(nxt, first)
    more = planner.plan([_req(first, _potential(0), n=15)])[0]  # more than one GRU step's worth
    assert more.shape == (15, 2) and _inside(more)


def test_state_follows_each_session_like_the_runner(checkpoint, monkeypatch):
    """Two interleaved sessions, batched in one plan call, match PolicyRunner's per-scan chain."""
    runner = PolicyRunner(checkpoint)
    planner = PolicyPlanner(runner)
    first = runner.first_positions(FOV, 6)
    # sessions report measured positions with read-back error below the tolerance
    noise = np.random.default_rng(1).uniform(-0.002, 0.002, size=(6, 2))
    expect = {}
    for s, sign in ((0, -1), (1, 1)):
        state = runner.new_state(FOV)
        p1, state = runner.next_positions(state, _potential(10 + s), GRID, first, 6)
        p2, state = runner.next_positions(state, _potential(20 + s), GRID, np.concatenate([first, p1 + sign * noise]), 6)
        expect[s] = (p1, p2)
    got1 = planner.plan([_req(first, _potential(10)), _req(first, _potential(11))])
    np.testing.assert_allclose(got1[0], expect[0][0], atol=2e-3)
    np.testing.assert_allclose(got1[1], expect[1][0], atol=2e-3)
    # the second round comes in the other order; both continue remembered states (no replay)
    replays = []
    original = PolicyPlanner._replay
    monkeypatch.setattr(PolicyPlanner, "_replay", lambda self, *a: replays.append(1) or original(self, *a))
    got2 = planner.plan([_req(np.concatenate([first, got1[1] + noise]), _potential(21)),
                         _req(np.concatenate([first, got1[0] - noise]), _potential(20))])
    np.testing.assert_allclose(got2[1], expect[0][1], atol=2e-3)
    np.testing.assert_allclose(got2[0], expect[1][1], atol=2e-3)
    assert replays == []
    # a planner without that memory (e.g. after a restart) still answers, from a replayed state
    fresh = PolicyPlanner(runner).plan([_req(np.concatenate([first, got1[0]]), _potential(20))])[0]
    assert fresh.shape == (6, 2) and _inside(fresh)
    assert replays == [1]


def test_no_reconstruction_yet_gives_a_shifted_sparse_grid(checkpoint):
    planner = load_planner(checkpoint)
    first = sparse_grid(FOV, 6)
    out = planner.plan([_req(first, None, batch_index=1), _req(first, None, n=0)])
    assert out[0].shape == (6, 2) and _inside(out[0]) and not np.allclose(out[0], first)
    assert out[1].shape == (0, 2)


def test_bad_input(checkpoint, tmp_path):
    planner = load_planner(checkpoint)
    with pytest.raises(ValueError, match="potential must be"):
        planner.plan([_req(sparse_grid(FOV, 6), np.zeros((2, 3, 4)))])
    bad = _req([], None, batch_index=0)
    bad.fov_nm = (0, 0, -1, 1)
    with pytest.raises(ValueError, match="fov_nm"):
        planner.plan([bad])
    with pytest.raises(ValueError, match="match_tol_nm"):
        PolicyPlanner(planner.runner, match_tol_nm=0)
    choice = resolve_planner("adaptive", tmp_path / "missing.pt")  # the service falls back, with the reason
    assert "no such policy checkpoint" in choice.fallback


def _request(session: str, fov, so_far, potential, grid, n=8, batch=1):
    return PlanRequest(fov, 64, n, batch, so_far, potential, grid.origin_nm, grid.pixel_nm, n_next=n, session_id=session)


def test_planner_protocol_first_chunk_and_fov():
    planner = load_planner()
    assert isinstance(planner, PositionPlanner)
    planner.warmup()
    fov = (1.0, 2.0, 1.5, 1.5)
    first = planner.plan([PlanRequest(fov, 64, 8, 0, np.zeros((0, 2)), None, n_next=8, session_id="a")])[0]
    assert first.shape == (8, 2)
    assert (first[:, 0] >= 1.0).all() and (first[:, 0] <= 2.5).all() and (first[:, 1] >= 2.0).all() and (first[:, 1] <= 3.5).all()
    assert len(np.unique(first.round(6), axis=0)) == 8


def test_sessions_keep_their_own_state():
    rng = np.random.default_rng(0)
    fov = (0.0, 0.0, 1.5, 1.5)
    grid = ObjectGrid.covering(fov, 0.045, 64)
    so_far = rng.uniform(0, 1.5, size=(8, 2))
    pot_a, pot_b = rng.normal(size=grid.shape), rng.normal(size=grid.shape)
    alone = load_planner()
    a1 = alone.plan([_request("a", fov, so_far, pot_a, grid)])[0]
    a2 = alone.plan([_request("a", fov, np.vstack([so_far, a1]), pot_a, grid, batch=2)])[0]
    mixed = load_planner()
    m1 = mixed.plan([_request("a", fov, so_far, pot_a, grid), _request("b", fov, so_far, pot_b, grid)])[0]
    mixed.plan([_request("b", fov, np.vstack([so_far, m1]), pot_b, grid, batch=2)])
    m2 = mixed.plan([_request("a", fov, np.vstack([so_far, m1]), pot_a, grid, batch=2)])[0]
    np.testing.assert_allclose(m1, a1, atol=1e-6)
    np.testing.assert_allclose(m2, a2, atol=1e-6)
    assert not np.allclose(a1, a2), "the second step must depend on the GRU state, not repeat the first"


def test_session_id_separates_identical_histories(checkpoint, monkeypatch):
    """Two sessions report the same positions: only their ids tell their GRU states apart."""
    runner = PolicyRunner(checkpoint)
    planner = PolicyPlanner(runner)
    first = runner.first_positions(FOV, 6)
    shared = np.concatenate([first, np.random.default_rng(2).uniform(0.3, 1.1, size=(6, 2))])
    expect = {}
    for s in (0, 1):
        state = runner.new_state(FOV)
        _, state = runner.next_positions(state, _potential(30 + s), GRID, first, 6)
        expect[s], _ = runner.next_positions(state, _potential(40 + s), GRID, shared, 6)

    def req(sid, positions, seed):
        r = _req(positions, _potential(seed))
        r.session_id = sid
        return r

    planner.plan([req("a", first, 30), req("b", first, 31)])
    replays = []
    original = PolicyPlanner._replay
    monkeypatch.setattr(PolicyPlanner, "_replay", lambda self, *a: replays.append(1) or original(self, *a))
    got = planner.plan([req("b", shared, 41), req("a", shared, 40)])
    assert replays == []  # both continued their own stored state
    np.testing.assert_allclose(got[1], expect[0], atol=2e-3)
    np.testing.assert_allclose(got[0], expect[1], atol=2e-3)
