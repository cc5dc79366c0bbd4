"""Voronoi labelling of an image by the Jump Flooding Algorithm (JFA), batched in torch.

The reward of the paper (Schloz et al. 2023) for scan position m is the reconstructed
phase summed over m's Voronoi cell. JFA labels every pixel with (approximately) its
nearest seed in O(log N) passes over the image: each pass looks at the 3x3
neighbourhood at distance k (k = N/2, N/4, ..., 1) and keeps the closest seed seen.
One extra pass at k = 1 ("JFA+1") removes most of the rare errors of the plain
algorithm. ``brute_force_voronoi`` is the exact reference used by the tests.

Coordinates are in pixels of the labelled image: seed (x, y) = (column, row).
"""

from __future__ import annotations

import torch


def _check(seeds: torch.Tensor, shape: tuple[int, int], valid: torch.Tensor | None) -> torch.Tensor:
    if seeds.ndim != 3 or seeds.shape[-1] != 2:
        raise ValueError(f"seeds must be (B, P, 2) pixel coordinates (x, y), got shape {tuple(seeds.shape)}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with H, W >= 1, got {shape!r}")
    if seeds.shape[1] < 1:
        raise ValueError("need at least one seed per image")
    if valid is None:
        valid = torch.ones(seeds.shape[:2], dtype=torch.bool, device=seeds.device)
    if valid.shape != seeds.shape[:2]:
        raise ValueError(f"valid must be (B, P) = {tuple(seeds.shape[:2])}, got {tuple(valid.shape)}")
    if not bool(valid.any(dim=1).all()):
        raise ValueError("every image needs at least one valid seed")
    return valid


def brute_force_voronoi(seeds: torch.Tensor, shape: tuple[int, int], valid: torch.Tensor | None = None) -> torch.Tensor:
    """Exact nearest-seed labels (B, H, W) int64 by comparing every pixel with every seed.

    Args:
        seeds: (B, P, 2) seed positions (x, y) in pixels.
        shape: (H, W) of the labelled image.
        valid: optional (B, P) bool; invalid seeds never win.
    """
    valid = _check(seeds, shape, valid)
    h, w = shape
    ys, xs = torch.meshgrid(torch.arange(h, device=seeds.device), torch.arange(w, device=seeds.device), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(1, h * w, 1, 2).to(seeds.dtype)
    d2 = ((pix - seeds[:, None, :, :]) ** 2).sum(-1)  # (B, HW, P)
    d2 = d2.masked_fill(~valid[:, None, :], float("inf"))
    return d2.argmin(-1).reshape(-1, h, w)


def jfa_voronoi(seeds: torch.Tensor, shape: tuple[int, int], valid: torch.Tensor | None = None, extra_pass: bool = True) -> torch.Tensor:
    """Approximate nearest-seed labels (B, H, W) int64 by jump flooding.

    Args:
        seeds: (B, P, 2) seed positions (x, y) in pixels (any float; may lie outside).
        shape: (H, W) of the labelled image.
        valid: optional (B, P) bool mask; invalid seeds (padding) are ignored.
        extra_pass: run one more pass at step 1 after the last (JFA+1).

    Seeds are planted at their rounded pixel (clamped into the image); distances are
    measured to the true (sub-pixel) seed position. Where two seeds round to the same
    pixel the later one is planted, and the earlier one can only win pixels by
    propagation through the 3x3 checks, so its cell may be empty: exact labelling of
    such ties is what ``brute_force_voronoi`` is for.
    """
    valid = _check(seeds, shape, valid)
    b, p, _ = seeds.shape
    h, w = shape
    device = seeds.device
    seeds_f = seeds.to(torch.float32)
    labels = torch.full((b, h * w), -1, dtype=torch.long, device=device)
    cols = seeds_f[..., 0].round().clamp(0, w - 1).long()
    rows = seeds_f[..., 1].round().clamp(0, h - 1).long()
    flat = rows * w + cols
    order = torch.arange(p, device=device).expand(b, p)
    batch_idx = torch.arange(b, device=device)[:, None].expand(b, p)
    keep = valid
    labels[batch_idx[keep], flat[keep]] = order[keep]
    labels = labels.reshape(b, h, w)

    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pix = torch.stack([xs, ys], -1).to(torch.float32)  # (H, W, 2)
    steps = []
    k = 1
    while k < max(h, w):
        k *= 2
    k //= 2
    while k >= 1:
        steps.append(k)
        k //= 2
    if extra_pass or not steps:
        steps.append(1)

    def distance(lab: torch.Tensor) -> torch.Tensor:
        safe = lab.clamp(min=0).reshape(b, h * w, 1).expand(b, h * w, 2)
        pos = torch.gather(seeds_f, 1, safe).reshape(b, h, w, 2)
        d2 = ((pos - pix) ** 2).sum(-1)
        return d2.masked_fill(lab < 0, float("inf"))

    best_d = distance(labels)
    for k in steps:
        padded = torch.nn.functional.pad(labels, (k, k, k, k), value=-1)
        for dy in (-k, 0, k):
            for dx in (-k, 0, k):
                if dx == 0 and dy == 0:
                    continue
                cand = padded[:, k + dy : k + dy + h, k + dx : k + dx + w]
                d = distance(cand)
                better = d < best_d
                labels = torch.where(better, cand, labels)
                best_d = torch.where(better, d, best_d)
    return labels


def cell_sums(labels: torch.Tensor, image: torch.Tensor, n_seeds: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, n_seeds) sums of ``image`` (B, H, W) over each label's cell (pixels outside ``mask`` skipped)."""
    b = labels.shape[0]
    lab = labels.reshape(b, -1)
    val = image.reshape(b, -1).to(torch.float32)
    ok = lab >= 0
    if mask is not None:
        ok = ok & mask.reshape(b, -1) if mask.shape[0] == b else ok & mask.reshape(1, -1)
    out = torch.zeros(b, n_seeds, dtype=torch.float32, device=labels.device)
    return out.scatter_add_(1, lab.clamp(min=0), torch.where(ok, val, torch.zeros_like(val)))
