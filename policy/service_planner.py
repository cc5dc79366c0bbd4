"""The GRU policy behind the service's ``PositionPlanner`` seam (``service/planner.py``).

``load_planner(checkpoint)`` returns a ``PolicyPlanner`` with the attributes and
methods the service calls (duck-typed, so policy imports nothing from service):

* ``name`` ("gru-policy"), ``version`` ("gru-policy:" + the checkpoint's policy version),
* ``warmup()``: one encoder + GRU step on a dummy reconstruction,
* ``plan(requests)``: for each request (fields of ``service.planner.PlanRequest``:
  ``fov_nm`` (x0, y0, width, height) nm, ``batch_index``, ``positions_nm`` (N, 2)
  measured so far, ``potential`` (ny, nx) rad or None, ``grid_origin_nm``,
  ``grid_pixel_nm``, ``n_next``) the next ``n_next`` positions in nm inside the fov.
  All requests that carry a reconstruction go through the encoder and the GRU in ONE
  batched call.

Batch 0 (nothing measured yet) is the paper's first sub-sequence, a sparse grid. A
request without a reconstruction after batch 0 (the service had none to give) gets a
sparse grid shifted by a rank-1 lattice offset, the pre-training targets' pattern.

The GRU hidden state is per scan: it is kept under the request's ``session_id``. A
request without one (another caller) continues the state of the batch whose issued
positions match its most recent positions within ``match_tol_nm`` (so measured read-back
positions still match). With neither (a service restart, a foreign history) the state
is rebuilt by replaying the GRU over the past sub-sequences with the current latent, an
approximation that needs no stored state. Both memories are bounded (least recently used).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from policy.baselines import check_fov, sparse_grid_unit, to_nm, to_unit
from policy.inference import PolicyRunner
from policy.models import reconstruction_image


class _Grid:
    """The minimal grid ``reconstruction_image`` needs (origin_nm, pixel_nm, shape)."""

    def __init__(self, origin_nm, pixel_nm: float, shape):
        self.origin_nm = (float(origin_nm[0]), float(origin_nm[1]))
        self.pixel_nm = float(pixel_nm)
        self.shape = (int(shape[0]), int(shape[1]))


def fallback_grid(fov_nm, n: int, batch_index: int, n_batches: int) -> np.ndarray:
    """(n, 2) nm: a sparse grid whose in-cell offset moves along a rank-1 lattice with ``batch_index``."""
    t = batch_index / max(n_batches, 1)
    offset = ((0.5 + t) % 1.0, (0.5 + 2 * t) % 1.0)
    return to_nm(sparse_grid_unit(n, offset), fov_nm)


class PolicyPlanner:
    """The trained GRU policy as a service planner (see the module docstring).

    Args:
        runner: a loaded ``PolicyRunner``.
        match_tol_nm: largest per-coordinate difference (nm) between issued and reported
            positions for a request to continue a remembered GRU state.
        max_states: how many remembered states to keep (least recently used dropped).
    """

    name = "gru-policy"

    def __init__(self, runner: PolicyRunner, match_tol_nm: float = 0.005, max_states: int = 4096):
        if not (math.isfinite(match_tol_nm) and match_tol_nm > 0):
            raise ValueError(f"match_tol_nm must be positive, got {match_tol_nm!r}")
        self.runner = runner
        self.version = f"gru-policy:{runner.version}"
        self.match_tol_nm = float(match_tol_nm)
        self.max_states = int(max_states)
        self._states: OrderedDict[tuple, tuple[np.ndarray, torch.Tensor]] = OrderedDict()
        self._sessions: OrderedDict[str, tuple[tuple, int, torch.Tensor]] = OrderedDict()
        """session_id -> (fov key, positions seen when planned + issued, hidden state)."""

    # -- service seam -------------------------------------------------------------
    def warmup(self) -> None:
        """Run the encoder and one GRU step once (weights paged in, kernels chosen)."""
        fov = (0.0, 0.0, 1.0, 1.0)
        grid = _Grid((0.0, 0.0), 0.05, (21, 21))
        image = reconstruction_image(torch.zeros(grid.shape), grid, fov, self.runner.image_size)[None]
        with torch.no_grad():
            z = self.runner.autoencoder.encode(image)
            self.runner.policy(torch.full((1, self.runner.chunk, 2), 0.5), z, None)

    def plan(self, requests: list) -> list[np.ndarray]:
        """(n_next, 2) positions in nm for each request, inside its fov."""
        out: list[np.ndarray | None] = [None] * len(requests)
        learned: list[int] = []
        for i, r in enumerate(requests):
            fov = check_fov(r.fov_nm)
            n = int(r.n_next)
            if n < 0:
                raise ValueError(f"n_next must be >= 0, got {n}")
            so_far = np.asarray(r.positions_nm, dtype=np.float64).reshape(-1, 2)
            if n == 0:
                out[i] = np.zeros((0, 2))
            elif len(so_far) == 0:
                out[i] = self.runner.first_positions(fov, n)
            elif r.potential is None or r.grid_origin_nm is None or r.grid_pixel_nm is None:
                n_batches = max(1, -(-int(r.budget) // max(int(r.chunk), 1)))
                out[i] = fallback_grid(fov, n, int(r.batch_index), n_batches)
            else:
                learned.append(i)
        if learned:
            for i, pos in zip(learned, self._plan_learned([requests[i] for i in learned]), strict=True):
                out[i] = pos
        return [np.asarray(o, dtype=np.float64) for o in out]

    # -- the batched GRU step -----------------------------------------------------
    @staticmethod
    def _fov_key(fov) -> tuple:
        return tuple(round(v, 6) for v in fov)

    def _remember(self, fov, issued_nm: np.ndarray, hidden: torch.Tensor) -> None:
        key = (self._fov_key(fov), np.round(issued_nm / self.match_tol_nm).astype(np.int64).tobytes())
        self._states[key] = (issued_nm.copy(), hidden.clone())
        self._states.move_to_end(key)
        while len(self._states) > self.max_states:
            self._states.popitem(last=False)

    def _recall(self, fov, so_far: np.ndarray) -> torch.Tensor | None:
        """The remembered state of the batch whose issued positions are the end of ``so_far``, or None."""
        best = None
        fov_key = self._fov_key(fov)
        for key, (issued, hidden) in reversed(self._states.items()):
            if key[0] != fov_key or len(issued) > len(so_far):
                continue
            if np.max(np.abs(so_far[-len(issued):] - issued)) <= self.match_tol_nm:
                best = (key, hidden)
                break
        if best is None:
            return None
        self._states.move_to_end(best[0])
        return best[1]

    def _recall_session(self, session_id: str, fov, so_far: np.ndarray) -> torch.Tensor | None:
        """The state stored for ``session_id`` if it belongs to the same fov and an earlier, shorter history."""
        if not session_id or session_id not in self._sessions:
            return None
        fov_key, n_seen, hidden = self._sessions[session_id]
        if fov_key != self._fov_key(fov) or n_seen >= len(so_far):
            return None
        self._sessions.move_to_end(session_id)
        return hidden

    def _replay(self, fov, so_far: np.ndarray, latent: torch.Tensor) -> torch.Tensor | None:
        """Hidden state rebuilt by stepping the GRU over past sub-sequences (all but the last) with ``latent``."""
        chunk = self.runner.chunk
        hidden = None
        starts = list(range(0, len(so_far) - chunk, chunk))
        with torch.no_grad():
            for s in starts:
                unit = np.clip(to_unit(so_far[s : s + chunk], fov), 0.0, 1.0)
                _, hidden = self.runner.policy(torch.as_tensor(unit, dtype=torch.float32)[None], latent, hidden)
        return hidden

    def _plan_learned(self, requests: list) -> list[np.ndarray]:
        runner = self.runner
        chunk = runner.chunk
        fovs = [check_fov(r.fov_nm) for r in requests]
        histories = [np.asarray(r.positions_nm, dtype=np.float64).reshape(-1, 2) for r in requests]
        images = []
        for r, fov in zip(requests, fovs, strict=True):
            pot = torch.as_tensor(np.asarray(r.potential), dtype=torch.float32)
            if pot.ndim != 2:
                raise ValueError(f"potential must be (ny, nx), got shape {tuple(pot.shape)}")
            images.append(reconstruction_image(pot, _Grid(r.grid_origin_nm, r.grid_pixel_nm, pot.shape), fov, runner.image_size))
        with torch.no_grad():
            latents = runner.autoencoder.encode(torch.stack(images).to(runner.device))
        hiddens = []
        for b, (r, fov, so_far) in enumerate(zip(requests, fovs, histories, strict=True)):
            h = self._recall_session(getattr(r, "session_id", "") or "", fov, so_far)
            if h is None:
                h = self._recall(fov, so_far)
            if h is None:
                h = self._replay(fov, so_far, latents[b : b + 1])
            hiddens.append(h if h is not None else runner.policy.initial_state(1, runner.device))
        hidden = torch.cat(hiddens, dim=1)
        last = []
        for fov, so_far in zip(fovs, histories, strict=True):
            unit = np.clip(to_unit(so_far[-chunk:], fov), 0.0, 1.0)
            last.append(np.resize(unit, (chunk, 2)) if len(unit) < chunk else unit)
        inputs = torch.as_tensor(np.stack(last), dtype=torch.float32, device=runner.device)
        wanted = max(int(r.n_next) for r in requests)
        steps = []
        with torch.no_grad():
            while sum(s.shape[1] for s in steps) < wanted:
                mean, hidden = runner.policy(inputs, latents, hidden)
                steps.append(mean.cpu())
                inputs = mean
        means = torch.cat(steps, dim=1).numpy()
        out = []
        for b, (r, fov, so_far) in enumerate(zip(requests, fovs, histories, strict=True)):
            positions = to_nm(np.clip(means[b, : int(r.n_next)], 0.0, 1.0), fov)
            h = hidden[:, b : b + 1].cpu()
            self._remember(fov, positions, h)
            sid = getattr(r, "session_id", "") or ""
            if sid:
                self._sessions[sid] = (self._fov_key(fov), len(so_far), h)
                self._sessions.move_to_end(sid)
                while len(self._sessions) > self.max_states:
                    self._sessions.popitem(last=False)
            out.append(positions)
        return out


@lru_cache(maxsize=4)
def _runner(checkpoint: str | None) -> PolicyRunner:
    return PolicyRunner(checkpoint)


def load_planner(checkpoint: str | Path | None = None, match_tol_nm: float = 0.005) -> PolicyPlanner:
    """The service planner for ``checkpoint`` (None: the shipped ``policy/checkpoints/policy.pt``).

    The loaded weights are shared between planners of the same checkpoint; each planner
    keeps its own per-session states.
    """
    return PolicyPlanner(_runner(None if checkpoint is None else str(checkpoint)), match_tol_nm=match_tol_nm)


GRUPlanner = PolicyPlanner
"""The name main's first version of this module used."""
