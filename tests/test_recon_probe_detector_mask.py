"""Probe retrieval and refinement leave invalid detector pixels out of their losses, as the reconstructor does: a pixel
reading a huge value in every frame (a DECTRIS-masked pixel at the pixel type's largest count) changes the aberrations
found without the mask, and not with it."""

from __future__ import annotations

import numpy as np
import pytest

from recon.aberrations import ProbeAberrations
from recon.engine import ScanChunk
from recon.inputs import chunk_from_dataset
from recon.options import ReconOptions
from recon.probe_refinement import ProbeRefinementOptions, reconstruct_refining_aberrations
from recon.probe_retrieval import RetrievalOptions, retrieve_aberrations
from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset

TRUE = ProbeAberrations(defocus_nm=3.0, astigmatism_nm=1.5, astigmatism_angle_deg=60.0)
HOT = [(2, 3), (20, 9), (16, 16)]
"""hot pixels (one in the bright-field disc's centre)."""


@pytest.fixture(scope="module")
def chunks():
    config = SimulationConfig(scan_shape=(8, 8), step_nm=0.05, detector_pixels=32, detector_pixel_mrad=3.0, binning=1, oversample=2,
                              true_probe=TRUE)
    clean = chunk_from_dataset(simulate_raster_dataset(config, seed=5))
    patterns = np.array(clean.patterns, np.float32)
    invalid = np.zeros(patterns.shape[1:], bool)
    for y, x in HOT:
        patterns[:, y, x] = 50.0 * patterns.max()
        invalid[y, x] = True
    hot = ScanChunk(patterns, clean.positions_nm, clean.grid)
    masked = ScanChunk(patterns, clean.positions_nm, clean.grid, invalid_pixels=invalid)
    return clean, hot, masked


def _refine(chunk: ScanChunk, energy_ev=60e3, convergence_mrad=33.0) -> ProbeAberrations:
    options = ReconOptions(iterations=15, batch_positions=None, optimizer="gd", step_size=5.0)
    return reconstruct_refining_aberrations(chunk, ProbeAberrations(defocus_nm=1.5), energy_ev=energy_ev, convergence_mrad=convergence_mrad,
                                            options=options, refinement=ProbeRefinementOptions(passes_per_block=5, steps_per_block=10,
                                                                                               fit_cs=False)).aberrations


def _distance(a: ProbeAberrations, b: ProbeAberrations) -> float:
    return abs(a.defocus_nm - b.defocus_nm) + a.astigmatism_error_nm(b)


def test_refinement_with_the_mask_matches_the_clean_data_and_without_it_does_not(chunks):
    clean, hot, masked = chunks
    reference = _refine(clean)
    assert _distance(_refine(masked), reference) < 0.1, "masked hot pixels change nothing"
    assert _distance(_refine(hot), reference) > 0.3, "unmasked hot pixels pull the aberrations away"


def test_retrieval_on_a_subset_keeps_the_mask(chunks):
    # max_positions below the chunk's 64 positions: the subset the search runs on must keep the chunk's invalid pixels
    clean, hot, masked = chunks
    options = RetrievalOptions(defocus_range_nm=(-6.0, 6.0), defocus_step_nm=1.5, astigmatism_magnitudes_nm=(1.0, 2.0), refine_evaluations=25,
                               fit_cs=False, max_positions=36)

    def found(chunk):
        return retrieve_aberrations(chunk, energy_ev=60e3, convergence_mrad=33.0, options=options).aberrations

    reference = found(clean)
    assert _distance(found(masked), reference) < 0.2
    assert _distance(found(hot), reference) > 0.3
