"""Where the next batch of probe positions goes: the ``PositionPlanner`` seam and its sparse-grid stand-in.

The service asks the planner once per chunk, for all sessions whose chunk was just
reconstructed, in one ``plan`` call (so a GRU policy can batch its step over
sessions). Until the GRU policy (branch ``policy``) lands, ``SparseGridPlanner``
stands in for it: strategy ``adaptive`` resolves to it with a logged warning and a
``fallback`` reason in the session status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from policy.baselines import sparse_grid_coarse_to_fine
from policy.structure_guided import StructureGuidedPlanner

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


class SparseGridPlanner:
    """Stand-in for the policy: a fixed sparse grid over the fov, handed out chunk by chunk."""

    name = "sparse-grid"
    version = "sparse-grid-1"

    def warmup(self) -> None:
        sparse_grid_coarse_to_fine((0.0, 0.0, 1.0, 1.0), 16)

    def plan(self, requests: list[PlanRequest]) -> list[np.ndarray]:
        out = []
        for r in requests:
            full = sparse_grid_coarse_to_fine(r.fov_nm, r.budget)
            start = len(r.positions_nm)
            out.append(full[start : start + r.n_next])
        return out


@dataclass
class PlannerChoice:
    planner: PositionPlanner
    requested: str
    fallback: str | None
    """why the requested strategy was not used, or None."""


class Planners:
    """The planner of each strategy, resolved once (``resolve_planner``) and shared by every session that asks for it."""

    def __init__(self, policy_checkpoint=None) -> None:
        self.policy_checkpoint = policy_checkpoint
        self.resolved: dict[str, PlannerChoice] = {}

    def __call__(self, strategy: str) -> PlannerChoice:
        """The planner for ``strategy`` (ValueError if there is no such strategy)."""
        if strategy not in self.resolved:
            self.resolved[strategy] = resolve_planner(strategy, self.policy_checkpoint)
        return self.resolved[strategy]


def resolve_planner(strategy: str, policy_checkpoint=None) -> PlannerChoice:
    """The planner for ``strategy``; ``adaptive`` falls back to the sparse grid while no GRU policy is available."""
    if strategy == "sparse-grid":
        return PlannerChoice(SparseGridPlanner(), strategy, None)
    if strategy == "structure-guided":
        return PlannerChoice(StructureGuidedPlanner(), strategy, None)
    if strategy != "adaptive":
        raise ValueError(f"unknown strategy {strategy!r}; expected 'adaptive', 'structure-guided' or 'sparse-grid'")
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
