"""Where the next batch of probe positions goes: the ``PositionPlanner`` seam and its sparse-grid stand-in.

The service asks the planner once per chunk, for all sessions whose chunk was just
reconstructed, in one ``plan`` call (so a GRU policy can batch its step over
sessions). Until the GRU policy (branch ``policy``) lands, ``SparseGridPlanner``
stands in for it: strategy ``adaptive`` resolves to it with a logged warning and a
``fallback`` reason in the session status.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class PlanRequest:
    """What a planner sees for one session (lengths in nm)."""

    fov_nm: tuple[float, float, float, float]
    """(x0, y0, width, height) of allowed probe centres."""
    budget: int
    chunk: int
    batch_index: int
    """index of the batch to plan (0 = the first one)."""
    positions_nm: np.ndarray
    """(N, 2) positions measured so far (x, y)."""
    potential: np.ndarray | None
    """(ny, nx) latest reconstructed phase (rad) or None before the first reconstruction."""
    grid_origin_nm: tuple[float, float] | None = None
    grid_pixel_nm: float | None = None
    n_next: int = 0
    """how many positions to return (min(chunk, budget - N))."""
    session_id: str = ""
    """the session planned for (a stateful planner keys its per-session state on it)."""


@runtime_checkable
class PositionPlanner(Protocol):
    """The one seam the service plans through; the GRU policy implements this later."""

    name: str
    version: str

    def warmup(self) -> None:
        """Load weights and run once so the first real call is fast."""

    def plan(self, requests: list[PlanRequest]) -> list[np.ndarray]:
        """(n_next, 2) positions in nm for each request, inside its fov."""


def sparse_grid_shape(budget: int, width: float, height: float) -> tuple[int, int]:
    """(ny, nx) of the smallest grid with >= budget points whose spacing is close to square on the fov."""
    aspect = width / height if height > 0 else 1.0
    nx = max(1, round(math.sqrt(budget * aspect)))
    ny = max(1, math.ceil(budget / nx))
    return ny, nx


def _bit_reverse_order(n: int) -> np.ndarray:
    """A permutation of range(n) whose every prefix is spread over the range (van der Corput order)."""
    bits = max(1, (n - 1).bit_length())
    keys = [int(f"{i:0{bits}b}"[::-1], 2) for i in range(n)]
    return np.argsort(keys, kind="stable")


def sparse_grid_positions(fov_nm: tuple[float, float, float, float], budget: int) -> np.ndarray:
    """(budget, 2) positions on a regular grid over the fov, ordered so that every chunk covers the whole fov.

    Rows and columns are visited in bit-reversed order, so the first chunk is itself a
    coarse sparse grid (the paper's first sub-sequence) and later chunks fill it in.
    """
    x0, y0, width, height = fov_nm
    ny, nx = sparse_grid_shape(budget, width, height)
    xs = x0 + (np.arange(nx) + 0.5) * width / nx
    ys = y0 + (np.arange(ny) + 0.5) * height / ny
    order_y, order_x = _bit_reverse_order(ny), _bit_reverse_order(nx)
    rank = np.empty((ny, nx))
    ry = np.empty(ny)
    ry[order_y] = np.arange(ny)
    rx = np.empty(nx)
    rx[order_x] = np.arange(nx)
    # level of refinement first (max of the two ranks), then row-major inside a level
    rank = np.maximum(ry[:, None], rx[None, :]) * (ny * nx) + ry[:, None] * nx + rx[None, :]
    idx = np.argsort(rank, axis=None, kind="stable")[:budget]
    iy, ix = np.unravel_index(idx, (ny, nx))
    return np.stack([xs[ix], ys[iy]], axis=1)


class SparseGridPlanner:
    """Stand-in for the policy: a fixed sparse grid over the fov, handed out chunk by chunk."""

    name = "sparse-grid"
    version = "sparse-grid-1"

    def warmup(self) -> None:
        sparse_grid_positions((0.0, 0.0, 1.0, 1.0), 16)

    def plan(self, requests: list[PlanRequest]) -> list[np.ndarray]:
        out = []
        for r in requests:
            full = sparse_grid_positions(r.fov_nm, r.budget)
            start = len(r.positions_nm)
            out.append(full[start : start + r.n_next])
        return out


@dataclass
class PlannerChoice:
    planner: PositionPlanner
    requested: str
    fallback: str | None
    """why the requested strategy was not used, or None."""


def resolve_planner(strategy: str, policy_checkpoint=None) -> PlannerChoice:
    """The planner for ``strategy``; ``adaptive`` falls back to the sparse grid while no GRU policy is available."""
    if strategy == "sparse-grid":
        return PlannerChoice(SparseGridPlanner(), strategy, None)
    if strategy != "adaptive":
        raise ValueError(f"unknown strategy {strategy!r}; expected 'adaptive' or 'sparse-grid'")
    try:
        from policy.service_planner import load_planner  # type: ignore[import-not-found]
    except ImportError:
        reason = "GRU policy not available (policy.service_planner missing); using the sparse-grid stand-in"
    else:
        try:
            return PlannerChoice(load_planner(policy_checkpoint), strategy, None)
        except Exception as err:  # a broken checkpoint must not stop the service
            reason = f"GRU policy failed to load ({err}); using the sparse-grid stand-in"
    log.warning("strategy 'adaptive': %s", reason)
    return PlannerChoice(SparseGridPlanner(), strategy, reason)
