"""Partial coherence in the simulator (recon.coherence, shared with the reconstructor): quadrature nodes, the coherent limit, incoherent sums."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from recon.coherence import PartialCoherence
from sim_microscope import simulate_patterns, tmd_monolayer
from sim_microscope.datasets import SimulationConfig

BEAM = dict(energy_ev=60_000.0, convergence_mrad=25.0, detector_pixels=32, detector_pixel_mrad=2.0)
POSITIONS = np.array([[1.0, 1.0], [1.07, 0.96]])


def _patterns(coherence=None, defocus_nm=2.0):
    atoms = tmd_monolayer("MoS2", (2.0, 2.0), seed=0)
    return simulate_patterns(atoms, POSITIONS, **BEAM, defocus_nm=defocus_nm, oversample=2, coherence=coherence)


def test_nodes_are_gaussian_quadratures_of_the_spreads():
    assert PartialCoherence().is_coherent and PartialCoherence().nodes() == [(0.0, 0.0, 0.0, 1.0)]
    c = PartialCoherence(focal_spread_nm=3.0, source_size_nm=0.02)
    nodes = np.array(c.nodes())
    assert len(nodes) == 27 and np.isclose(nodes[:, 3].sum(), 1.0)
    for column, sigma in ((0, 3.0), (1, 0.02), (2, 0.02)):
        assert np.isclose((nodes[:, 3] * nodes[:, column]).sum(), 0.0, atol=1e-12)
        assert np.isclose((nodes[:, 3] * nodes[:, column] ** 2).sum(), sigma**2), "the spread's variance is integrated exactly"
    assert len(PartialCoherence(focal_spread_nm=1.0, nodes_per_axis=5).nodes()) == 5
    with pytest.raises(ValidationError):
        PartialCoherence(source_size_nm=float("inf"))


def test_the_coherent_limit_is_the_coherent_simulation():
    np.testing.assert_array_equal(_patterns(PartialCoherence()), _patterns(None))


def test_a_focal_spread_adds_the_intensities_of_the_defocused_probes():
    spread = PartialCoherence(focal_spread_nm=2.0)
    mixed = _patterns(spread)
    by_hand = sum(w * _patterns(None, defocus_nm=2.0 + dz) for dz, _, _, w in spread.nodes())
    np.testing.assert_allclose(mixed, by_hand, rtol=2e-3, atol=1e-7)  # each coherent pattern is normalised on its own
    assert not np.allclose(mixed, _patterns(None), rtol=1e-3), "a 2 nm spread changes the patterns"


def test_a_source_size_blurs_and_is_an_acquisition_error():
    sharp, blurred = _patterns(None), _patterns(PartialCoherence(source_size_nm=0.03))
    np.testing.assert_allclose(blurred.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert not np.allclose(sharp, blurred, rtol=1e-3)
    assert SimulationConfig(coherence=PartialCoherence(source_size_nm=0.03)).has_acquisition_errors
    assert not SimulationConfig(coherence=PartialCoherence()).has_acquisition_errors


def test_simulate_cli_coherence_flags_reach_the_patterns(tmp_path, capsys):
    from ptychoscan.cli import main
    from recon.dataset import read_dataset

    args = ["simulate", "--specimen", "mos2", "--scan-shape", "2", "2", "--step-nm", "0.1", "--detector-pixels", "32",
            "--detector-pixel-mrad", "3.0", "--binning", "1", "--oversample", "2", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "coherent")]) == 0
    assert main([*args, "--out", str(tmp_path / "partial"), "--focal-spread-nm", "3", "--source-size-nm", "0.02"]) == 0
    coherent = read_dataset(next((tmp_path / "coherent").glob("*.h5")), with_acquisition_truth=True)
    partial = read_dataset(next((tmp_path / "partial").glob("*.h5")), with_acquisition_truth=True)
    assert coherent.acquisition_truth is None and partial.acquisition_truth is not None  # the file says it is not as nominal
    assert not np.allclose(coherent.patterns, partial.patterns, rtol=1e-3)
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--source-size-nm", "-1"]) != 0
    assert "coherence.source_size_nm" in capsys.readouterr().err
