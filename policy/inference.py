"""Inference API for the service: the trained policy proposes the next sub-sequence.

    runner = PolicyRunner()                       # the shipped checkpoint
    first = runner.first_positions(fov_nm, n)     # sparse grid, (n, 2) nm
    state = runner.new_state(fov_nm)
    ... measure, reconstruct (recon.engine.Reconstructor) ...
    positions_nm, state = runner.next_positions(state, potential, grid, positions_so_far_nm, n)

At inference the policy is deterministic (the Gaussian's mean); positions are clipped
into the fov. The GRU sees the last sub-sequence's positions (the last ``chunk`` of
``positions_so_far_nm``, fov units) and the encoded reconstruction; its hidden state
lives in the returned ``PolicyState`` (the caller keeps it per session).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from policy.baselines import check_fov, sparse_grid, to_nm, to_unit
from policy.checkpoint import load_default_policy, load_policy
from policy.models import reconstruction_image


@dataclass
class PolicyState:
    """Per-scan state of the policy: the field of view and the GRU hidden state."""

    fov_nm: tuple[float, float, float, float]
    hidden: torch.Tensor | None = None
    steps: int = 0


class PolicyRunner:
    """A loaded policy checkpoint (default: ``policy/checkpoints/policy.pt``), on the CPU.

    Attributes: ``version`` (str, identifies the weights), ``chunk`` (positions per
    sub-sequence the network was trained for), ``config`` (its TrainConfig).
    """

    def __init__(self, checkpoint: str | Path | None = None, device: str | torch.device = "cpu"):
        loaded = load_default_policy() if checkpoint is None else load_policy(checkpoint)
        self.device = torch.device(device)
        self.config = loaded.config
        self.autoencoder = loaded.autoencoder.to(self.device)
        self.policy = loaded.policy.to(self.device)
        self.version = loaded.version
        self.path = loaded.path
        self.chunk = self.config.model.policy.chunk
        self.image_size = self.config.model.autoencoder.input_size

    def new_state(self, fov_nm) -> PolicyState:
        return PolicyState(check_fov(fov_nm))

    def first_positions(self, fov_nm, n: int) -> np.ndarray:
        """The first sub-sequence: a sparse grid of n positions (nm) in ``fov_nm`` (x0, y0, width, height)."""
        return sparse_grid(fov_nm, n)

    @torch.no_grad()
    def next_positions(self, state: PolicyState | None, reconstruction_potential, grid, positions_so_far_nm, n: int,
                       fov_nm=None) -> tuple[np.ndarray, PolicyState]:
        """The next n positions (nm) given the reconstruction so far.

        Args:
            state: from ``new_state`` or the previous call; None starts a new one (fov from
                ``fov_nm`` or else the bounding box of ``positions_so_far_nm``).
            reconstruction_potential: (ny, nx) phase in rad on ``grid`` (recon ObjectGrid).
            grid: the reconstruction's ObjectGrid.
            positions_so_far_nm: (P, 2) all positions measured so far, in order.
            n: positions wanted; more than ``chunk`` runs further GRU steps on the same
                reconstruction, fewer keeps the first n.

        Returns (positions (n, 2) nm clipped into the fov, new state).
        """
        if int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        so_far = np.asarray(positions_so_far_nm, dtype=np.float64).reshape(-1, 2)
        if len(so_far) == 0:
            raise ValueError("positions_so_far_nm is empty: measure first_positions before asking for more")
        if state is None:
            if fov_nm is None:
                lo, hi = so_far.min(0), so_far.max(0)
                fov_nm = (lo[0], lo[1], max(hi[0] - lo[0], 1e-3), max(hi[1] - lo[1], 1e-3))
            state = self.new_state(fov_nm)
        potential = torch.as_tensor(np.asarray(reconstruction_potential), dtype=torch.float32)
        if potential.shape != tuple(grid.shape):
            raise ValueError(f"reconstruction has shape {tuple(potential.shape)} but the grid is {tuple(grid.shape)}")
        image = reconstruction_image(potential, grid, state.fov_nm, self.image_size)[None].to(self.device)
        latent = self.autoencoder.encode(image)
        last = to_unit(so_far[-self.chunk :], state.fov_nm)
        if len(last) < self.chunk:  # fewer positions than a sub-sequence: repeat them cyclically
            last = np.resize(last, (self.chunk, 2))
        inputs = torch.as_tensor(np.clip(last, 0, 1), dtype=torch.float32, device=self.device)[None]
        hidden, out = state.hidden, []
        while sum(len(o) for o in out) < n:
            mean, hidden = self.policy(inputs, latent, hidden)
            out.append(mean[0].cpu().numpy())
            inputs = mean
        unit = np.clip(np.concatenate(out)[:n], 0.0, 1.0)
        new_state = PolicyState(state.fov_nm, hidden, state.steps + 1)
        return to_nm(unit, state.fov_nm), new_state
