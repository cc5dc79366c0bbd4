"""JFA Voronoi labelling against exact brute-force nearest-seed labelling."""

import pytest
import torch

from policy.voronoi import brute_force_voronoi, cell_sums, jfa_voronoi


def _agreement(seeds, shape):
    jfa = jfa_voronoi(seeds, shape)
    exact = brute_force_voronoi(seeds, shape)
    h, w = shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pix = torch.stack([xs, ys], -1).float()
    def dist(lab):
        pos = torch.gather(seeds, 1, lab.reshape(seeds.shape[0], -1, 1).expand(-1, -1, 2)).reshape(seeds.shape[0], h, w, 2)
        return ((pos - pix) ** 2).sum(-1).sqrt()
    excess = dist(jfa) - dist(exact)
    return (jfa == exact).float().mean().item(), excess.max().item()


@pytest.mark.parametrize("shape,n", [((48, 48), 30), ((37, 61), 80), ((64, 64), 250)])
def test_jfa_matches_brute_force(shape, n):
    g = torch.Generator().manual_seed(n)
    b = 3
    # distinct integer pixels plus a sub-pixel jitter: no two seeds share a pixel
    flat = torch.stack([torch.randperm(shape[0] * shape[1], generator=g)[:n] for _ in range(b)])
    seeds = torch.stack([flat % shape[1], flat // shape[1]], -1).float() + (torch.rand(b, n, 2, generator=g) - 0.5) * 0.9
    agree, excess = _agreement(seeds, shape)
    assert agree >= 0.995, agree
    assert excess <= 1.0  # any disagreement picks a seed at most one pixel farther


def test_plain_jfa_is_worse_or_equal_than_jfa_plus_one():
    g = torch.Generator().manual_seed(3)
    seeds = torch.rand(4, 120, 2, generator=g) * 63
    plus = (jfa_voronoi(seeds, (64, 64)) == brute_force_voronoi(seeds, (64, 64))).float().mean()
    plain = (jfa_voronoi(seeds, (64, 64), extra_pass=False) == brute_force_voronoi(seeds, (64, 64))).float().mean()
    assert plus >= plain


def test_invalid_seeds_are_ignored_and_cell_sums_conserve_total():
    seeds = torch.tensor([[[2.0, 2.0], [10.0, 10.0], [5.0, 5.0]]])
    valid = torch.tensor([[True, True, False]])
    labels = jfa_voronoi(seeds, (12, 12), valid)
    assert not (labels == 2).any()
    assert torch.equal(labels, brute_force_voronoi(seeds, (12, 12), valid))
    image = torch.rand(1, 12, 12)
    sums = cell_sums(labels, image, 3)
    assert sums[0, 2] == 0
    assert torch.isclose(sums.sum(), image.sum())


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="seeds must be"):
        jfa_voronoi(torch.zeros(5, 2), (8, 8))
    with pytest.raises(ValueError, match="at least one valid seed"):
        jfa_voronoi(torch.zeros(1, 2, 2), (8, 8), torch.zeros(1, 2, dtype=torch.bool))
