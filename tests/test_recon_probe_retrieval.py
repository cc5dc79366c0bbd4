"""Probe retrieval recovers a known defocus and astigmatism from the patterns alone; refinement moves towards it."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from recon.aberrations import ProbeAberrations
from recon.inputs import chunk_from_dataset
from recon.options import ReconOptions
from recon.probe_refinement import ProbeRefinementOptions, reconstruct_refining_aberrations
from recon.probe_retrieval import RetrievalOptions, retrieve_aberrations
from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset

TRUE = ProbeAberrations(defocus_nm=3.0, astigmatism_nm=1.5, astigmatism_angle_deg=60.0)
QUICK = dict(defocus_range_nm=(-6.0, 6.0), defocus_step_nm=1.5, astigmatism_magnitudes_nm=(1.0, 2.0), refine_evaluations=40, fit_cs=False)


@pytest.fixture(scope="module")
def aberrated():
    config = SimulationConfig(scan_shape=(8, 8), step_nm=0.05, detector_pixels=32, detector_pixel_mrad=3.0, binning=1, oversample=2,
                              true_probe=TRUE)
    return simulate_raster_dataset(config, seed=5)


def test_retrieval_recovers_defocus_and_astigmatism(aberrated):
    # tolerance: 0.4 nm in defocus, 0.4 nm in |C12 - C12_true| (magnitude and angle together); the search starts in focus
    found = retrieve_aberrations(chunk_from_dataset(aberrated), energy_ev=aberrated.energy_ev,
                                 convergence_mrad=aberrated.convergence_mrad, options=RetrievalOptions(**QUICK))
    assert abs(found.aberrations.defocus_nm - TRUE.defocus_nm) < 0.4, found.aberrations.summary()
    assert found.aberrations.astigmatism_error_nm(TRUE) < 0.4, found.aberrations.summary()
    assert found.aberrations.cs_um == 0.0  # not fitted
    assert found.loss == min(loss for _, loss in found.evaluations)
    assert found.positions_used == 64


def test_retrieval_on_a_sparse_subset_without_astigmatism_finds_the_defocus(aberrated):
    # a random half of the positions, astigmatism not fitted: the defocus still lands near the truth
    rng = np.random.default_rng(1)
    chunk = chunk_from_dataset(aberrated, np.sort(rng.choice(64, size=32, replace=False)))
    options = RetrievalOptions(**{**QUICK, "fit_astigmatism": False, "refine_evaluations": 15})
    found = retrieve_aberrations(chunk, energy_ev=aberrated.energy_ev, convergence_mrad=aberrated.convergence_mrad, options=options)
    assert abs(found.aberrations.defocus_nm - TRUE.defocus_nm) < 1.0, found.aberrations.summary()
    assert found.aberrations.astigmatism_nm == 0.0


def test_cartesian_astigmatism_round_trips():
    for angle in (0.0, 30.0, 95.0, 179.0):
        a = ProbeAberrations(defocus_nm=1.0, astigmatism_nm=2.0, astigmatism_angle_deg=angle, cs_um=3.0)
        b = ProbeAberrations.from_cartesian(a.defocus_nm, *a.astigmatism_cartesian_nm, a.cs_um)
        assert b.astigmatism_angle_deg == pytest.approx(angle) and b.astigmatism_nm == pytest.approx(2.0)
    # 0 and 180 deg are the same astigmatism
    assert ProbeAberrations(astigmatism_nm=1.0).astigmatism_error_nm(ProbeAberrations(astigmatism_nm=1.0, astigmatism_angle_deg=180.0)) < 1e-9


def test_bad_retrieval_options_are_rejected():
    with pytest.raises(ValidationError, match="from <= to"):
        RetrievalOptions(defocus_range_nm=(5.0, -5.0))
    with pytest.raises(ValidationError, match="astigmatism_magnitudes_nm must be positive"):
        RetrievalOptions(astigmatism_magnitudes_nm=(0.0,))
    with pytest.raises(ValidationError, match="refine_steps must be positive"):
        RetrievalOptions(refine_steps=(1.0, 0.0, 1.0))
    with pytest.raises(ValidationError, match="greater than or equal to 4"):
        RetrievalOptions(max_positions=2)


def test_refinement_moves_the_aberrations_towards_the_truth(aberrated):
    # starting 1.5 nm off in defocus and without astigmatism, 4 blocks of refinement end within 0.5 nm of the truth
    start = ProbeAberrations(defocus_nm=1.5)
    options = ReconOptions(iterations=20, batch_positions=None, optimizer="gd", step_size=5.0)
    out = reconstruct_refining_aberrations(chunk_from_dataset(aberrated), start, energy_ev=aberrated.energy_ev,
                                           convergence_mrad=aberrated.convergence_mrad, options=options,
                                           refinement=ProbeRefinementOptions(passes_per_block=5, steps_per_block=10, fit_cs=False))
    assert len(out.history) == 3 and out.result.potential.shape == chunk_from_dataset(aberrated).grid.shape
    assert abs(out.aberrations.defocus_nm - TRUE.defocus_nm) < 0.5, out.aberrations.summary()
    assert out.aberrations.astigmatism_error_nm(TRUE) < 0.5, out.aberrations.summary()
    assert out.aberrations.cs_um == 0.0


def test_refinement_rejects_a_binned_model(aberrated):
    with pytest.raises(ValueError, match="detector_binning 1"):
        reconstruct_refining_aberrations(chunk_from_dataset(aberrated), ProbeAberrations(), energy_ev=60e3, convergence_mrad=33.0,
                                         options=ReconOptions(detector_binning=2))
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ProbeRefinementOptions(passes_per_block=0)
