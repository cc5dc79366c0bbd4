"""The GRU policy behind the service's ``PositionPlanner`` seam (``service.planner``).

``load_planner(checkpoint)`` returns a planner for ONE session (the service resolves a
planner per session): the first sub-sequence is the sparse grid, every later one comes
from ``PolicyRunner.next_positions`` on the session's latest reconstruction, with the
GRU hidden state kept on the planner. The loaded weights are shared between sessions.
After a service restart the hidden state starts afresh (the reconstruction and the
positions so far are still used).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from policy.inference import PolicyRunner, PolicyState
from recon.grid import ObjectGrid


@lru_cache(maxsize=4)
def _runner(checkpoint: str | None) -> PolicyRunner:
    return PolicyRunner(checkpoint)


class GRUPlanner:
    """Adaptive positions from the trained GRU policy for one session."""

    name = "gru-policy"

    def __init__(self, runner: PolicyRunner) -> None:
        self.runner = runner
        self.version = f"gru-policy:{runner.version}"
        self.state: PolicyState | None = None

    def warmup(self) -> None:
        """Run the encoder and one GRU step on a blank reconstruction so the first real call is fast."""
        fov = (0.0, 0.0, 1.0, 1.0)
        grid = ObjectGrid.covering(fov, 0.05, 8)
        first = self.runner.first_positions(fov, 4)
        self.runner.next_positions(None, np.zeros(grid.shape, np.float32), grid, first, 4, fov_nm=fov)

    def plan(self, requests: list) -> list[np.ndarray]:
        out = []
        for r in requests:
            n = int(r.n_next)
            if n <= 0:
                out.append(np.zeros((0, 2)))
            elif len(r.positions_nm) == 0 or r.potential is None:
                out.append(self.runner.first_positions(r.fov_nm, n))
            else:
                grid = ObjectGrid(r.grid_origin_nm, r.potential.shape, r.grid_pixel_nm)
                state = self.state if self.state is not None else self.runner.new_state(r.fov_nm)
                positions, self.state = self.runner.next_positions(state, r.potential, grid, r.positions_nm, n, fov_nm=r.fov_nm)
                out.append(positions)
        return out


def load_planner(checkpoint: str | Path | None = None) -> GRUPlanner:
    """A GRU planner for one session; ``checkpoint`` None: the shipped policy."""
    return GRUPlanner(_runner(None if checkpoint is None else str(checkpoint)))
