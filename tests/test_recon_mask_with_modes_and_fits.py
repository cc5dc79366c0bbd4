"""Invalid detector pixels together with probe modes and in the probe fits (regressions)."""

from __future__ import annotations

import numpy as np

from recon.coherence import PartialCoherence
from recon.engine import Reconstructor, ScanChunk
from recon.grid import ObjectGrid
from recon.options import ReconOptions
from recon.probe import make_probe

K = 16
PIXEL_NM = 0.05
ENERGY_EV = 60e3


def _chunk(window: int, hot: float | None = None) -> tuple[ScanChunk, np.ndarray]:
    """A 4 x 4 raster of smooth fake patterns (K, K); pixel (3, 12) marked invalid (set to ``hot`` when given)."""
    xs = np.arange(4) * 0.06 + 0.013
    positions = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    grid = ObjectGrid.covering((positions[:, 0].min(), positions[:, 1].min(), np.ptp(positions[:, 0]), np.ptp(positions[:, 1])), PIXEL_NM, window)
    rng = np.random.default_rng(0)
    patterns = (rng.random((len(positions), K, K)) * 100 + 50).astype(np.float32)
    invalid = np.zeros((K, K), bool)
    invalid[3, 12] = True
    if hot is not None:
        patterns[:, 3, 12] = hot
    return ScanChunk(patterns, positions, grid, invalid_pixels=invalid), invalid


def test_probe_modes_with_a_detector_mask_and_binning_reconstruct():
    """Partial coherence (probe modes), a detector mask and detector_binning 2 together: the normalisation's valid_fraction
    bins the (n, K*b, K*b) modes' far field (the probe and patterns are K, the model K*b) with bin_blocks, which takes (M, K*b, K*b) only."""
    chunk, _ = _chunk(K)
    options = ReconOptions(iterations=1, detector_binning=2, coherence=PartialCoherence(focal_spread_nm=3.0, nodes_per_axis=2))
    probe = make_probe(K, PIXEL_NM * 10, ENERGY_EV, 30.0, defocus_angstrom=40.0)
    rec = Reconstructor(probe, options, "cpu", energy_ev=ENERGY_EV, pixel_nm=PIXEL_NM)
    result = rec.reconstruct([chunk])[0]
    assert np.isfinite(result.loss_history[-1])


def test_estimate_defocus_leaves_invalid_pixels_out():
    """estimate_defocus scores candidates on the chunk's valid pixels: the value an invalid pixel reads must not change a loss
    (its subset is rebuilt without the chunk's invalid_pixels)."""
    from recon.probe_fit import estimate_defocus

    quiet, _ = _chunk(K, hot=60.0)
    loud, _ = _chunk(K, hot=65535.0)
    kwargs = dict(energy_ev=ENERGY_EV, convergence_mrad=30.0, candidates_nm=[0.0, 4.0], options=ReconOptions(iterations=2))
    _, quiet_losses = estimate_defocus(quiet, **kwargs)
    _, loud_losses = estimate_defocus(loud, **kwargs)
    for c in quiet_losses:
        np.testing.assert_allclose(loud_losses[c], quiet_losses[c], rtol=1e-4)


def test_estimate_focal_spread_leaves_invalid_pixels_out():
    """estimate_focal_spread, likewise: the invalid pixel's value must not change the candidates' losses."""
    from recon.probe_fit import estimate_focal_spread

    probe = make_probe(K, PIXEL_NM * 10, ENERGY_EV, 30.0, defocus_angstrom=40.0)
    losses = []
    for hot in (60.0, 65535.0):
        chunk, _ = _chunk(K, hot=hot)
        _, by_spread = estimate_focal_spread(chunk, probe, energy_ev=ENERGY_EV, candidates_nm=[0.0, 3.0],
                                             options=ReconOptions(iterations=2, coherence=PartialCoherence(nodes_per_axis=2)))
        losses.append(by_spread)
    for c in losses[0]:
        np.testing.assert_allclose(losses[1][c], losses[0][c], rtol=1e-4)
