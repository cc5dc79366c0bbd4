"""The REINFORCE objective's parts: returns, baselines, normalised advantages and the Gaussian's exploration.

Everything here acts on per-position rewards shaped (B, T, n): B episodes, T policy
sub-sequences, n positions each. Positions are in fov units, so sigma is a fraction of
the field.

- ``reward_to_go``: discounted returns (gamma 1 with the quality reward: final quality).
- ``leave_one_out``: with K episodes per specimen on one noise draw, each episode's
  baseline is the mean of the other K - 1 (only the actions differ between them).
- ``advantages``: baseline subtracted, then optionally normalised to zero mean and unit
  standard deviation over the batch (the step size then no longer depends on the
  reward's scale, which differs by orders of magnitude between the rewards).
- ``GaussianExploration``: the policy's std, fixed (or annealed) or learned as one
  log-std per axis, and its entropy for the entropy bonus. A fixed sigma's entropy is a
  constant, so the bonus only acts on a learned sigma.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def reward_to_go(reward: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, T, n) per-position rewards -> each position's own reward plus the discounted rewards of *every* position of
    the later sub-sequences (their sum, not only the same index j). With gamma 1 and the quality reward, a
    sub-sequence's positions then carry its gain plus everything after it: the final quality less what came before."""
    later = torch.zeros_like(reward[:, 0, :1])
    out = torch.empty_like(reward)
    for t in range(reward.shape[1] - 1, -1, -1):
        out[:, t] = reward[:, t] + gamma * later
        later = reward[:, t].sum(-1, keepdim=True) + gamma * later
    return out


def leave_one_out(reward: torch.Tensor, k: int) -> torch.Tensor:
    """Advantages of (B, ...) rewards whose episodes come in consecutive groups of ``k`` (same specimen and noise):
    each minus the mean of the other k - 1 of its group."""
    grouped = reward.reshape(-1, k, *reward.shape[1:])
    others = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)
    return (grouped - others).reshape(reward.shape)


def advantages(reward: torch.Tensor, *, k: int = 1, baseline: bool = True, normalize: bool = False,
               batch_mean: torch.Tensor | None = None) -> torch.Tensor:
    """Advantages (B, T, n) of returns ``reward`` (B, T, n).

    Args:
        k: episodes per specimen on one noise draw (consecutive); > 1 with ``baseline``: leave-one-out.
        baseline: subtract a baseline: leave-one-out (k > 1) or the batch mean per step and position.
        normalize: then scale to zero mean, unit std over the whole tensor (all zero stays zero).
        batch_mean: (T, n) the batch mean to use for k = 1 (under DDP: over all processes); None: this batch's.
    """
    out = reward
    if baseline and k > 1:
        out = leave_one_out(reward, k)
    elif baseline:
        out = reward - (reward.mean(0) if batch_mean is None else batch_mean)
    if normalize:
        out = (out - out.mean()) / (out.std(unbiased=False) + 1e-8)
    return out


class GaussianExploration(nn.Module):
    """The Gaussian policy's std (fov units): the config's (annealed) sigma, or learned as one log-std per axis (x, y).

    Args:
        sigma: the fixed std, or the learned std's starting value.
        learn: learn log sigma by the policy gradient (and the entropy bonus).
        sigma_min: floor of a learned sigma (it cannot collapse to a deterministic policy).
    """

    def __init__(self, sigma: float, learn: bool = False, sigma_min: float = 1e-3):
        super().__init__()
        if sigma <= 0 or sigma_min <= 0:
            raise ValueError(f"sigma ({sigma}) and sigma_min ({sigma_min}) must be > 0")
        self.learn = learn
        self.sigma_min = sigma_min
        self.log_sigma = nn.Parameter(torch.full((2,), math.log(max(sigma, sigma_min))), requires_grad=learn)

    def std(self, scheduled: float) -> torch.Tensor:
        """(2,) std per axis: ``scheduled`` (the config's sigma at this iteration) when fixed, else the learned one."""
        if not self.learn:
            return torch.full((2,), float(scheduled))
        return self.log_sigma.exp().clamp_min(self.sigma_min)

    @staticmethod
    def entropy(std: torch.Tensor) -> torch.Tensor:
        """Differential entropy (nats) of one 2-D position drawn with per-axis ``std`` (2,)."""
        return (0.5 * math.log(2 * math.pi * math.e) + torch.log(std)).sum()
