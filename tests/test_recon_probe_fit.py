"""Defocus estimation picks the defocus the data were made with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.engine import ScanChunk
from recon.forward import forward_intensity
from recon.grid import ObjectGrid
from recon.options import ReconOptions
from recon.probe import make_probe
from recon.probe_fit import estimate_defocus


def test_estimate_defocus_finds_the_true_one():
    k, pixel = 24, 0.05
    xs = np.arange(6) * 0.06 + 0.01
    positions = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    grid = ObjectGrid.covering((0.01, 0.01, 0.3, 0.3), pixel, k)
    rng = np.random.default_rng(0)
    v = torch.tensor(rng.uniform(0, 0.4, size=grid.shape), dtype=torch.float32)
    probe = make_probe(k, pixel * 10, 60e3, 40.0, defocus_angstrom=60.0)
    px = torch.tensor(grid.positions_px(positions), dtype=torch.float32)
    patterns = forward_intensity(torch.polar(torch.ones_like(v), v), probe, px).numpy()
    options = ReconOptions(detector_binning=1, iterations=4, optimizer="adam", step_size=0.03, batch_positions=12)
    best, losses = estimate_defocus(ScanChunk(patterns, positions, grid), energy_ev=60e3, convergence_mrad=40.0, candidates_nm=[0.0, 6.0, 12.0], options=options)
    assert best == 6.0, losses
    with pytest.raises(ValueError, match="candidate"):
        estimate_defocus(ScanChunk(patterns, positions, grid), energy_ev=60e3, convergence_mrad=40.0, candidates_nm=[])
