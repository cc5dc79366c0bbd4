"""The mini-batch schedule of a reconstruction call, built on the CPU and sent to the device in one go.

A pass visits every position of every scan once, in mini-batches of at most
``batch_positions`` per scan (each scan its own random order, from its own generator). A
step updates the scans that still have a mini-batch in this pass. The steps of up to
``PASSES_PER_COPY`` passes (all of a service call's) are packed into two host tensors and
copied to the device at once: the steps then index device memory only, and no step waits
for a host-device copy (on a GPU, a step's handful of small copies cost more than its
arithmetic).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch


def minibatches(counts: list[int], size: int | None, generators: list[torch.Generator]) -> list[list[torch.Tensor | None]]:
    """Mini-batches of one pass: step s holds, per scan, its position indices (within the scan) or None.

    Each scan's positions are split into ceil(count / size) groups of equal size (they
    differ by at most one) in the order drawn from its generator, so no update rests on a
    handful of positions; ``size`` None (or >= count): one group of all positions in order.
    """
    per_scan = []
    for count, generator in zip(counts, generators, strict=True):
        if size is None or size >= count:
            per_scan.append([torch.arange(count)])
        else:
            order = torch.randperm(count, generator=generator)
            per_scan.append(list(torch.tensor_split(order, math.ceil(count / size))))
    n_steps = max(len(groups) for groups in per_scan)
    return [[groups[s] if s < len(groups) else None for groups in per_scan] for s in range(n_steps)]


@dataclass
class Step:
    """One update: the positions it uses, on the device."""

    index: torch.Tensor
    """(m,) long: rows of the call's concatenated positions."""
    weights: torch.Tensor
    """(m,) real: 1 / (the scan's positions in this step), so every scan's loss is its mean."""
    scan_of: torch.Tensor
    """(m,) long: the scan of each position."""
    active: torch.Tensor | slice
    """the scans this step updates: ``slice(None)`` when all of them, else a (n_active,) long tensor."""


def plan_passes(
    passes: list[list[list[torch.Tensor | None]]], offsets: list[int], n_scans: int, real_dtype: torch.dtype, device: torch.device
) -> list[list[Step]]:
    """The steps of every pass (``minibatches`` output per pass) as views into two tensors copied to ``device`` once.

    Built with numpy: a final reconstruction's few dozen steps cost a few torch calls each
    otherwise, all of it holding the GIL that the service's other threads wait for.
    """
    longs, reals = [], []
    layout = []  # per pass, per step: (m, n_active or None when all scans are active)
    real_np = np.float64 if real_dtype == torch.float64 else np.float32
    for schedule in passes:
        pass_layout = []
        for step_groups in schedule:
            active = [b for b, group in enumerate(step_groups) if group is not None]
            sizes = np.array([len(step_groups[b]) for b in active])
            longs.append(np.concatenate([offsets[b] + step_groups[b].numpy() for b in active]))
            longs.append(np.repeat(active, sizes))
            reals.append(np.repeat((1.0 / sizes).astype(real_np), sizes))
            everyone = len(active) == n_scans
            if not everyone:
                longs.append(np.asarray(active))
            pass_layout.append((int(sizes.sum()), None if everyone else len(active)))
        layout.append(pass_layout)
    long_all = torch.from_numpy(np.concatenate(longs).astype(np.int64)).to(device, non_blocking=True)
    real_all = torch.from_numpy(np.concatenate(reals)).to(device, non_blocking=True)
    out: list[list[Step]] = []
    li = ri = 0
    for pass_layout in layout:
        steps = []
        for m, n_active in pass_layout:
            index, scan_of = long_all[li : li + m], long_all[li + m : li + 2 * m]
            li += 2 * m
            weights = real_all[ri : ri + m]
            ri += m
            active: torch.Tensor | slice = slice(None)
            if n_active is not None:
                active = long_all[li : li + n_active]
                li += n_active
            steps.append(Step(index, weights, scan_of, active))
        out.append(steps)
    return out


PASSES_PER_COPY = 8
"""Passes planned (and copied to the device) at a time: one copy for the service's few passes, bounded memory for long runs."""


def planned_passes(
    n_passes: int,
    next_pass: Callable[[], list[list[torch.Tensor | None]]],
    offsets: list[int],
    n_scans: int,
    real_dtype: torch.dtype,
    device: torch.device,
) -> Iterator[list[Step]]:
    """The steps of ``n_passes`` passes, ``next_pass()`` drawing each pass's mini-batches in order, planned ``PASSES_PER_COPY`` at a time."""
    for start in range(0, n_passes, PASSES_PER_COPY):
        block = [next_pass() for _ in range(min(PASSES_PER_COPY, n_passes - start))]
        yield from plan_passes(block, offsets, n_scans, real_dtype, device)
