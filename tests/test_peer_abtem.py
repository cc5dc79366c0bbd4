"""Opt-in peer check: simulate_scan against abTEM 1.0.11 multislice on a tiny MoS2 case.

Runs only with PTYCHOSCAN_PEER_TESTS=1 and the abTEM venv built by
``python bench/fidelity_abtem.py`` (bench/.venvs/abtem); abTEM runs in that venv's
subprocess, never in this environment.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "fidelity_abtem.py"
VENV_PYTHON = ROOT / "bench" / ".venvs" / "abtem" / "bin" / "python"

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(os.environ.get("PTYCHOSCAN_PEER_TESTS") != "1", reason="peer tests are opt-in: PTYCHOSCAN_PEER_TESTS=1"),
    pytest.mark.skipif(not VENV_PYTHON.exists(), reason="no abTEM venv: run python bench/fidelity_abtem.py once"),
]


def _bench():
    spec = importlib.util.spec_from_file_location("fidelity_abtem", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_mos2_matches_abtem():
    from sim_microscope import simulate_scan
    from sim_microscope.simulate import binned_centre_offset

    bench = _bench()
    k, binning, pixel_mrad = 32, 2, 3.36  # raw 64 px at 1.68 mrad: a 29 A cell
    atoms, positions = bench.specimen_and_positions(pixel_mrad / binning, grid=2, step_nm=0.1, seed=5)
    peer = bench.run_abtem(
        atoms,
        positions,
        energy_ev=60e3,
        convergence_mrad=33.0,
        raw_pixels=k * binning,
        shift_px=binned_centre_offset(k, binning),
        gpts=576,
        threads=2,
    )
    theirs = bench.bin2d(peer["shifted"], binning)
    their_fraction = theirs.sum(axis=(1, 2)) / peer["total"]
    ours = simulate_scan(
        atoms,
        positions,
        energy_ev=60e3,
        convergence_mrad=33.0,
        detector_pixels=k,
        detector_pixel_mrad=pixel_mrad,
        binning=binning,
        device="cpu",
    )
    r = bench.pearson(ours.patterns, theirs / theirs.sum(axis=(1, 2), keepdims=True))
    assert r.mean() >= 0.98, r
    assert abs(np.mean(ours.detector_fraction - their_fraction)) < 0.005
    np.testing.assert_allclose(ours.detector_fraction, their_fraction, atol=0.02)
    # Orientation: the dark field agrees as is, not transposed or flipped.
    dark = bench.dark_field_mask(k, pixel_mrad, 33.0)
    scores = bench.orientation_scores(ours.patterns * dark, theirs * dark)
    assert max(scores, key=scores.get) == "identity", scores
