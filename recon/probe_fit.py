"""Probe estimation from the data: pick the defocus that best explains the patterns.

Real data rarely come with a trustworthy defocus. ``estimate_defocus`` reconstructs a
subset of positions for a few iterations with each candidate defocus and keeps the one
with the lowest final loss (the data term is comparable across candidates because the
patterns and probes are normalised the same way).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
    patterns = np.asarray(chunk.patterns)
    positions = np.asarray(chunk.positions_nm)
    if len(positions) == 0:
        raise ValueError("estimate_defocus needs at least one position")
    if len(positions) > max_positions:
        pick = np.sort(np.random.default_rng(seed).choice(len(positions), size=max_positions, replace=False))
        patterns, positions = patterns[pick], positions[pick]
    sub = ScanChunk(patterns, positions, chunk.grid)
    k = patterns.shape[-1]
    options = options or ReconOptions(iterations=3)
    losses = {}
    for defocus in candidates_nm:
        probe = make_probe(k, chunk.grid.pixel_nm * 10.0, energy_ev, convergence_mrad, defocus_angstrom=10.0 * float(defocus))
        losses[float(defocus)] = Reconstructor(probe, options, device).reconstruct([sub])[0].loss_history[-1]
    best = min(losses, key=losses.get)
    return best, losses
