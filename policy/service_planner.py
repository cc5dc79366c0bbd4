"""The GRU policy behind the service's ``PositionPlanner`` seam (``service.planner``).

``load_planner(checkpoint)`` returns the planner the service shares between sessions:
the first sub-sequence is the sparse grid, every later one comes from
``PolicyRunner.next_positions`` on the session's latest reconstruction, with each
session's GRU hidden state kept on the planner under its ``session_id`` (the most
recent ``MAX_SESSIONS``). After a service restart the hidden state starts afresh (the
reconstruction and the positions so far are still used).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np

from policy.inference import PolicyRunner, PolicyState
from recon.grid import ObjectGrid

MAX_SESSIONS = 1024


@lru_cache(maxsize=4)
def _runner(checkpoint: str | None) -> PolicyRunner:
    return PolicyRunner(checkpoint)


class GRUPlanner:
    """Adaptive positions from the trained GRU policy, batched over the sessions of one call."""

    name = "gru-policy"

    def __init__(self, runner: PolicyRunner) -> None:
        self.runner = runner
        self.version = f"gru-policy:{runner.version}"
        self.states: OrderedDict[str, PolicyState] = OrderedDict()

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
                state = self.states.pop(r.session_id, None) or self.runner.new_state(r.fov_nm)
                positions, self.states[r.session_id] = self.runner.next_positions(
                    state, r.potential, grid, r.positions_nm, n, fov_nm=r.fov_nm
                )
                while len(self.states) > MAX_SESSIONS:
                    self.states.popitem(last=False)
                out.append(positions)
        return out


def load_planner(checkpoint: str | Path | None = None) -> GRUPlanner:
    """The GRU planner; ``checkpoint`` None: the shipped policy."""
    return GRUPlanner(_runner(None if checkpoint is None else str(checkpoint)))
