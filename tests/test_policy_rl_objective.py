"""The REINFORCE objective: baselines, normalised advantages, a learned sigma and its entropy bonus."""

import math

import pytest
import torch
from pydantic import ValidationError

from policy.config import RLConfig
from policy.rl_objective import GaussianExploration, advantages


def test_normalised_advantages_have_zero_mean_unit_std_and_keep_the_order():
    reward = torch.tensor([[[1.0, 4.0]], [[3.0, 0.0]], [[2.0, 2.0]]])  # (B=3, T=1, n=2)
    raw = advantages(reward, baseline=True)
    torch.testing.assert_close(raw, reward - reward.mean(0))
    norm = advantages(reward, baseline=True, normalize=True)
    assert abs(float(norm.mean())) < 1e-6 and abs(float(norm.std(unbiased=False)) - 1.0) < 1e-5
    assert torch.equal(norm.flatten().argsort(), raw.flatten().argsort())
    scaled = advantages(1000.0 * reward, baseline=True, normalize=True)  # the reward's scale no longer sets the step
    torch.testing.assert_close(scaled, norm)
    flat = advantages(torch.full((4, 2, 3), 0.7), baseline=True, normalize=True)
    assert torch.count_nonzero(flat) == 0  # nothing to prefer: no push either way


def test_advantages_use_leave_one_out_groups_and_an_outside_batch_mean():
    reward = torch.tensor([[[1.0]], [[3.0]], [[5.0]], [[5.0]]])
    torch.testing.assert_close(advantages(reward, k=2).flatten(), torch.tensor([-2.0, 2.0, 0.0, 0.0]))
    torch.testing.assert_close(advantages(reward, batch_mean=torch.tensor([[10.0]])).flatten(), torch.tensor([-9.0, -7.0, -5.0, -5.0]))
    torch.testing.assert_close(advantages(reward, baseline=False), reward)


def test_a_fixed_sigma_follows_the_schedule_and_a_learned_one_its_parameter():
    fixed = GaussianExploration(0.05)
    assert not fixed.log_sigma.requires_grad
    torch.testing.assert_close(fixed.std(0.2), torch.tensor([0.2, 0.2]))  # the annealed value, not the start
    learned = GaussianExploration(0.05, learn=True, sigma_min=0.01)
    torch.testing.assert_close(learned.std(0.2), torch.tensor([0.05, 0.05]))
    with torch.no_grad():
        learned.log_sigma.fill_(math.log(1e-4))
    torch.testing.assert_close(learned.std(0.2), torch.tensor([0.01, 0.01]))  # floored
    std = torch.tensor([0.1, 0.3])
    expected = torch.distributions.Normal(torch.zeros(2), std).entropy().sum()
    torch.testing.assert_close(GaussianExploration.entropy(std), expected)


def test_the_entropy_bonus_widens_a_learned_sigma_and_the_policy_gradient_can_narrow_it():
    """With zero advantage only the bonus acts (sigma grows); with the bonus off, rewarding actions near the mean shrinks it."""
    def sigma_after(entropy_coef: float, reward_near_mean: bool) -> float:
        torch.manual_seed(0)
        exploration = GaussianExploration(0.1, learn=True)
        opt = torch.optim.Adam([exploration.log_sigma], lr=0.05)
        mean = torch.full((64, 2), 0.5)
        for _ in range(20):
            std = exploration.std(0.1)
            gauss = torch.distributions.Normal(mean, std)
            action = gauss.sample()
            dist = (action - mean).norm(dim=-1)
            adv = (dist.median() - dist) if reward_near_mean else torch.zeros(64)
            loss = -(adv * gauss.log_prob(action).sum(-1)).mean() - entropy_coef * exploration.entropy(std)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(exploration.std(0.1).detach().mean())

    assert sigma_after(0.1, False) > 0.15
    assert sigma_after(0.0, False) == pytest.approx(0.1)
    assert sigma_after(0.0, True) < 0.07


def test_the_exploration_options_are_checked():
    with pytest.raises(ValidationError, match="entropy_coef needs learn_sigma"):
        RLConfig(entropy_coef=0.01)
    with pytest.raises(ValidationError, match="exclude each other"):
        RLConfig(learn_sigma=True, sigma_start=0.1, sigma_anneal_iterations=10)
    with pytest.raises(ValidationError, match="below sigma_min"):
        RLConfig(learn_sigma=True, sigma=1e-4)
    assert RLConfig(learn_sigma=True, entropy_coef=0.01, sigma=0.1).sigma_lr == 1e-3
