"""bench/scan_error_draws.py: another draw of a simulated file's scan errors, on a tiny raster."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset
from sim_microscope.scan_errors import ScanErrors
from sim_microscope.specimens import SpecimenConfig

BENCH = Path(__file__).resolve().parent.parent / "bench"
ERRORS = ScanErrors(jitter_nm=0.02, distortion=(0.01, 0.0, 0.0, 0.01), seed=0)


@pytest.fixture(scope="module")
def draws():
    spec = importlib.util.spec_from_file_location("scan_error_draws", BENCH / "scan_error_draws.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset():
    config = SimulationConfig(scan_shape=(3, 4), step_nm=0.1, detector_pixels=24, detector_pixel_mrad=3.0,
                              specimen=SpecimenConfig(kind="mos2"), scan_errors=ERRORS)
    return simulate_raster_dataset(config, seed=7, device="cpu")


def test_the_files_own_draw_is_reproduced_and_another_seed_moves_the_beam(draws, dataset):
    draws.check_file(dataset, ERRORS, n=2, device="cpu")
    idx = np.arange(dataset.n_positions)
    same, truth = draws.redraw(dataset, ERRORS, idx, device="cpu")
    np.testing.assert_array_equal(same, dataset.patterns)  # every position: what ptychoscan simulate made, bit for bit
    np.testing.assert_array_equal(truth, dataset.acquisition_truth.positions_nm)
    other, moved = draws.redraw(dataset, ERRORS.model_copy(update={"seed": 1}), idx, device="cpu")
    assert np.abs(moved - truth).max() > 1e-3
    assert not np.allclose(other, same, rtol=1e-3)


def test_scan_errors_that_are_not_the_files_are_refused(draws, dataset):
    with pytest.raises(ValueError, match="scan errors are not"):
        draws.check_file(dataset, ERRORS.model_copy(update={"jitter_nm": 0.03}), device="cpu")
    with pytest.raises(ValueError, match="scan errors are not"):
        draws.check_file(dataset, ERRORS.model_copy(update={"seed": 3}), device="cpu")
