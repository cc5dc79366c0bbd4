"""Probe estimation from the data: pick the defocus that best explains the patterns.

Real data rarely come with a trustworthy defocus. ``estimate_defocus`` reconstructs a
subset of positions for a few iterations with each candidate defocus and keeps the one
with the lowest final loss (the data term is comparable across candidates because the
patterns and probes are normalised the same way). ``estimate_focal_spread`` does the same
for the focal spread of a partially coherent beam (``ReconOptions.coherence``), 0 meaning
a coherent probe.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from recon.coherence import PartialCoherence
from recon.engine import Reconstructor, ScanChunk
from recon.options import ReconOptions
from recon.probe import make_probe


def estimate_defocus(
    chunk: ScanChunk,
    *,
    energy_ev: float,
    convergence_mrad: float,
    candidates_nm: Sequence[float],
    options: ReconOptions | None = None,
    max_positions: int = 256,
    seed: int = 0,
    device=None,
) -> tuple[float, dict[float, float]]:
    """Return (best defocus in nm, {candidate: final loss}) over ``candidates_nm``.

    The probe for each candidate is built on ``chunk.grid``'s pixel (nm) with K = the
    pattern size; at most ``max_positions`` positions (a seeded random subset) are used.
    """
    if len(candidates_nm) == 0:
        raise ValueError("estimate_defocus needs at least one candidate defocus")
    sub = _subset(chunk, max_positions, seed, "estimate_defocus")
    k = np.asarray(sub.patterns).shape[-1]
    options = options or ReconOptions(iterations=3)
    losses = {}
    for defocus in candidates_nm:
        probe = make_probe(k, chunk.grid.pixel_nm * 10.0, energy_ev, convergence_mrad, defocus_angstrom=10.0 * float(defocus))
        losses[float(defocus)] = Reconstructor(probe, options, device).reconstruct([sub])[0].loss_history[-1]
    best = min(losses, key=losses.get)
    return best, losses


def estimate_focal_spread(
    chunk: ScanChunk,
    probe: torch.Tensor | np.ndarray,
    *,
    energy_ev: float,
    candidates_nm: Sequence[float],
    source_size_nm: float = 0.0,
    options: ReconOptions | None = None,
    max_positions: int = 256,
    seed: int = 0,
    device=None,
) -> tuple[float, dict[float, float]]:
    """Return (best focal spread in nm, 1 sigma; {candidate: final loss}) over ``candidates_nm`` (0: a coherent probe).

    Each candidate reconstructs the same seeded subset of at most ``max_positions`` positions
    with ``probe`` (K, K) on ``chunk.grid`` and the probe modes of that spread (and
    ``source_size_nm``, nm), with ``options`` (its ``coherence`` replaced, its nodes per spread kept;
    default ``ReconOptions(iterations=3)``).
    """
    if len(candidates_nm) == 0:
        raise ValueError("estimate_focal_spread needs at least one candidate focal spread")
    if any(not float(c) >= 0 for c in candidates_nm):
        raise ValueError(f"focal spreads must be >= 0 nm, got {list(candidates_nm)}")
    sub = _subset(chunk, max_positions, seed, "estimate_focal_spread")
    options = options or ReconOptions(iterations=3)
    nodes = options.coherence.nodes_per_axis if options.coherence is not None else PartialCoherence().nodes_per_axis
    losses = {}
    for spread in candidates_nm:
        coherence = PartialCoherence(focal_spread_nm=float(spread), source_size_nm=source_size_nm, nodes_per_axis=nodes)
        rec = Reconstructor(probe, options.model_copy(update={"coherence": coherence}), device, energy_ev=energy_ev, pixel_nm=chunk.grid.pixel_nm)
        losses[float(spread)] = rec.reconstruct([sub])[0].loss_history[-1]
    best = min(losses, key=losses.get)
    return best, losses


def _subset(chunk: ScanChunk, max_positions: int, seed: int, caller: str) -> ScanChunk:
    """``chunk`` itself, or a seeded random subset of ``max_positions`` of its positions."""
    n = len(chunk.positions_nm)
    if n == 0:
        raise ValueError(f"{caller} needs at least one position")
    if n > max_positions:
        return chunk.subset(np.sort(np.random.default_rng(seed).choice(n, size=max_positions, replace=False)))
    return chunk
