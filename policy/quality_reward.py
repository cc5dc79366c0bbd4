"""A reward that tracks reconstruction quality: what each sub-sequence added to the fit to the ground truth.

The paper's reward (phase summed over each position's Voronoi cell, ``policy.env``) pays for
contrast, not for quality: it correlates with the cell's area, and a denser, better placement
earns less. In simulation the ground truth is known, so the reward can be the quality itself:

- **Quality** q = 1 - SSE / SST of the reconstruction fitted to the ground truth over the
  field (least squares a * V + b: the reconstruction's offset is unobservable and its scale
  uncertain), SST the truth's sum of squares about its mean; q equals Pearson r squared.
  Before anything is measured q = 0 (the best fit of nothing is the truth's mean).
- **Per sub-sequence**: the gain q_t - q_(t-1); with gamma = 1 the returns telescope to the
  final quality less what the first (fixed, sparse-grid) sub-sequence gave, so the policy is
  trained on what the evaluation scores.
- **Per position**: each pixel's fall in squared error (e_(t-1) - e_t) / SST is credited to
  the nearest position of the new sub-sequence (Voronoi cells of the new positions only), so
  a sub-sequence's rewards sum exactly to its gain and each position earns what improved
  around it. ``credit="total"`` gives every new position the whole gain instead.

The truth is the ground truth low-passed to the reconstruction grid's Nyquist frequency
(``recon.metrics.ground_truth_on_grid``), without sub-pixel registration (the grids are
aligned by construction in simulation).
"""

from __future__ import annotations

import numpy as np
import torch

from policy.voronoi import cell_sums, jfa_voronoi


def fitted_error(potential: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error of the least-squares fit a * potential + b to ``truth``, divided by the truth's SST.

    Its sum is 1 - q (q = Pearson r squared); a constant potential gives the truth's deviations from its mean (sum 1).
    """
    v = potential.to(torch.float64)
    t = truth.to(torch.float64)
    vc, tc = v - v.mean(), t - t.mean()
    vv = (vc * vc).sum()
    a = (vc * tc).sum() / vv if float(vv) > 0 else torch.zeros((), dtype=torch.float64)
    return (a * vc - tc) ** 2 / (tc * tc).sum().clamp_min(1e-30)


def initial_error(truth: torch.Tensor) -> torch.Tensor:
    """The fitted error before any measurement (q = 0)."""
    return fitted_error(torch.zeros_like(truth), truth)


def quality_rewards(error_before: torch.Tensor, error_after: torch.Tensor, new_positions_px: np.ndarray,
                    credit: str = "voronoi") -> tuple[np.ndarray, float]:
    """Rewards (n,) of the ``n`` new positions and the sub-sequence's quality gain q_t - q_(t-1).

    Args:
        error_before, error_after: (H, W) ``fitted_error`` maps over the field before and after the sub-sequence.
        new_positions_px: (n, 2) the new positions (x, y) in pixels of those maps.
        credit: "voronoi" (each pixel's error fall to the nearest new position) or "total" (the gain to each).
    """
    fall = (error_before - error_after).to(torch.float32)
    gain = float(fall.sum())
    n = len(new_positions_px)
    if credit == "total":
        return np.full(n, gain), gain
    if credit != "voronoi":
        raise ValueError(f"unknown credit {credit!r} (use 'voronoi' or 'total')")
    seeds = torch.as_tensor(np.asarray(new_positions_px, dtype=np.float32))[None]
    labels = jfa_voronoi(seeds, tuple(fall.shape))
    return cell_sums(labels, fall[None], n)[0].numpy().astype(np.float64), gain
