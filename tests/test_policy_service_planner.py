"""The GRU policy behind the service's planner seam: sparse grid first, per-session state, inside the fov."""

from __future__ import annotations

import numpy as np

from policy.service_planner import load_planner
from recon.grid import ObjectGrid
from service.planner import PlanRequest, PositionPlanner


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
