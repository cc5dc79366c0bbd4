"""Pre-training targets beyond the paper's sparse grid: the structure-guided planner's choices, and a matched loss.

``pretrain.target: structure_guided`` teaches the policy what the non-learned planner
(``policy.structure_guided``) does: every training specimen is scanned in the training
environment, first sub-sequence the environment's sparse grid, each next one placed by
the planner from that episode's own live reconstruction (so the targets differ between
specimens, unlike the sparse grid's). The episode's positions and reconstruction images
are the teacher-forcing inputs, the planner's proposals the targets.

The planner's order within a sub-sequence is its greedy placement order, which moves
with the specimen; ``matched_mse`` compares the policy's outputs with the targets after
the best one-to-one matching (Hungarian), so only the set of positions is learned.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from policy.baselines import to_unit
from policy.structure_guided import StructureGuidedPlanner


def planner_rollouts(env, n_sub: int, budget: int, seed: int, planner: StructureGuidedPlanner | None = None,
                     progress: bool = True) -> dict[str, torch.Tensor]:
    """One structure-guided episode per specimen of ``env`` (a ``policy.env.ScanEnv``), ``n_sub`` sub-sequences.

    Returns "positions" (N, T, chunk, 2) as measured and "targets" (N, T, chunk, 2) as proposed, both in fov units
    (sub-sequence 0: the environment's sparse grid), and "images" (N, T, 1, S, S) after each sub-sequence.
    ``budget`` is the episode's positions (the planner continues the sparse grid of it on a uniform field);
    ``planner``: the default options' when None.
    """
    planner = planner or StructureGuidedPlanner()
    ids = list(range(len(env.specimens)))
    pos, img = env.reset(ids, seed=seed)
    positions, images, targets = [pos], [img], [pos]
    for _ in tqdm(range(1, n_sub), desc="rollouts (structure-guided)", unit="sub-seq", disable=not progress):
        proposals = []
        for ep in env.episodes:
            spec = ep.specimen
            nm = planner.next_positions(ep.potential.numpy(), spec.grid.origin_nm, spec.grid.pixel_nm, spec.fov_nm, ep.positions_nm,
                                        env.chunk, budget=budget)
            proposals.append(to_unit(nm, spec.fov_nm))
        proposal = np.clip(np.stack(proposals), 0.0, 1.0)
        pos, img, _, _ = env.step(proposal)
        positions.append(pos)
        images.append(img)
        targets.append(torch.as_tensor(proposal, dtype=torch.float32))
    return {"positions": torch.stack(positions, 1), "images": torch.stack(images, 1), "targets": torch.stack(targets, 1)}


def matched_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between (B, n, 2) predicted positions and (B, n, 2) targets after the best one-to-one matching per sample.

    The matching (minimum total squared distance) is chosen without gradient; the loss is differentiable in ``prediction``.
    """
    if prediction.shape != target.shape or prediction.ndim != 3:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must both be (B, n, 2)")
    cost = torch.cdist(prediction.detach().double(), target.detach().double()).pow(2).cpu().numpy()
    order = np.stack([linear_sum_assignment(c)[1] for c in cost])  # target index matched to each output slot
    matched = torch.gather(target, 1, torch.as_tensor(order, device=target.device)[..., None].expand(-1, -1, target.shape[-1]))
    return torch.nn.functional.mse_loss(prediction, matched)
