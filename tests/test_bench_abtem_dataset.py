"""bench/abtem_dataset.py without abTEM: the worker's arrays into a Dataset4D, and the raster."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from recon.dataset import read_dataset, write_dataset

BENCH = Path(__file__).resolve().parent.parent / "bench" / "abtem_dataset.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("abtem_dataset", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake(n_side=2, k=4, binning=2):
    rng = np.random.default_rng(0)
    shifted = rng.random((n_side * n_side, k * binning, k * binning)).astype(np.float32)
    positions = np.array([(x, y) for y in (1.0, 1.1) for x in (2.0, 2.1)])
    phase = rng.random((6, 5)).astype(np.float32)
    return shifted, positions, phase


def test_binning_normalisation_and_ground_truth(bench):
    shifted, positions, phase = _fake()
    shifted[1] = 0
    shifted[1, 4, 5] = 3.0  # raw (ky=4, kx=5) -> binned (2, 2) with K=4, b=2
    ds = bench.dataset_from_abtem(shifted, positions, (2, 2), phase, 0.01, detector_pixel_mrad=3.36)
    assert ds.patterns.shape == (4, 4, 4) and ds.patterns.dtype == np.float32
    np.testing.assert_allclose(ds.patterns.sum(axis=(1, 2)), 1.0, rtol=1e-6)
    expected = np.zeros((4, 4), np.float32)
    expected[2, 2] = 1.0
    np.testing.assert_array_equal(ds.patterns[1], expected)
    block = shifted[0, 2:4, 6:8].sum() / shifted[0].sum()
    assert ds.patterns[0, 1, 3] == pytest.approx(block, rel=1e-5)
    assert ds.ground_truth.origin_nm == (0.0, 0.0) and ds.ground_truth.pixel_nm == 0.01
    np.testing.assert_array_equal(ds.ground_truth.phase, phase)  # already [y, x]: not transposed again
    assert ds.grid_shape == (2, 2) and ds.probe.shape == (4, 4) and np.iscomplexobj(ds.probe)


def test_round_trip_through_the_file_format(bench, tmp_path):
    shifted, positions, phase = _fake()
    ds = bench.dataset_from_abtem(shifted, positions, (2, 2), phase, 0.01, detector_pixel_mrad=3.36)
    back = read_dataset(write_dataset(tmp_path / "a.h5", ds))
    np.testing.assert_array_equal(back.patterns, ds.patterns)
    np.testing.assert_array_equal(back.positions_nm, positions)
    np.testing.assert_array_equal(back.ground_truth.phase, phase)
    assert back.detector_pixel_mrad == 3.36 and back.grid_shape == (2, 2)


def test_dose_gives_poisson_counts(bench):
    shifted, positions, phase = _fake()
    ds = bench.dataset_from_abtem(shifted, positions, (2, 2), phase, 0.01, step_nm=0.05, dose_per_a2=4000.0, seed=3)
    assert ds.patterns.dtype == np.uint32
    assert ds.patterns.sum(axis=(1, 2)).mean() == pytest.approx(4000.0 * 0.5**2, rel=0.1)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(grid_shape=(3, 2)), "do not agree"),
        (dict(shifted=np.ones((4, 7, 7))), "must be"),
        (dict(dose_per_a2=10.0), "dose"),
    ],
)
def test_bad_input_is_one_line_error(bench, change, message):
    shifted, positions, phase = _fake()
    kwargs = dict(shifted=shifted, positions_nm=positions, grid_shape=(2, 2), phase=phase, phase_pixel_nm=0.01) | change
    with pytest.raises(ValueError, match=message):
        bench.dataset_from_abtem(**kwargs)


def test_raster_is_centred_row_major_and_must_fit(bench):
    positions = bench.centred_raster(5.79, (3, 4), 0.05)
    assert positions.shape == (12, 2)
    np.testing.assert_allclose(positions.mean(axis=0), (5.79 / 2, 5.79 / 2))
    np.testing.assert_allclose(positions[1] - positions[0], (0.05, 0.0))  # x varies fastest
    np.testing.assert_allclose(positions[4] - positions[0], (0.0, 0.05))
    with pytest.raises(ValueError, match="exceeds"):
        bench.centred_raster(5.79, (80, 80), 0.05)


def test_aberrated_probe_goes_to_the_acquisition_truth_not_the_beam(bench, tmp_path):
    from recon.aberrations import ProbeAberrations

    shifted, positions, phase = _fake()
    true = ProbeAberrations(defocus_nm=4.0, astigmatism_nm=2.5, astigmatism_angle_deg=30.0, cs_um=2.0)
    ds = bench.dataset_from_abtem(shifted, positions, (2, 2), phase, 0.01, detector_pixel_mrad=3.36, true_aberrations=true)
    back = read_dataset(write_dataset(tmp_path / "a.h5", ds), with_acquisition_truth=True)
    assert back.defocus_nm == 0.0  # the nominal beam stays in focus
    nominal = bench.dataset_from_abtem(shifted, positions, (2, 2), phase, 0.01, detector_pixel_mrad=3.36)
    np.testing.assert_array_equal(back.probe, nominal.probe)
    assert ProbeAberrations(**back.acquisition_truth.aberrations) == true
    np.testing.assert_array_equal(back.acquisition_truth.positions_nm, positions)
    from recon.physics import real_space_pixel_angstrom

    pixel_a = real_space_pixel_angstrom(back.energy_ev, 4, 3.36)
    expected = true.probe(4, pixel_a, back.energy_ev, back.convergence_mrad).numpy()
    np.testing.assert_allclose(back.acquisition_truth.probe, expected, atol=1e-6)
    assert not np.allclose(back.acquisition_truth.probe, back.probe, atol=1e-3)
    assert nominal.acquisition_truth is None
    in_focus = bench.dataset_from_abtem(shifted, positions, (2, 2), phase, 0.01, detector_pixel_mrad=3.36,
                                        true_aberrations=ProbeAberrations())
    assert in_focus.acquisition_truth is None


def test_abtem_parameters_are_ours_in_angstrom_and_rad(bench):
    from recon.aberrations import ProbeAberrations

    job = bench.abtem_aberrations(ProbeAberrations(defocus_nm=4.0, astigmatism_nm=2.5, astigmatism_angle_deg=30.0, cs_um=2.0))
    assert job == pytest.approx({"defocus_a": 40.0, "c12_a": 25.0, "phi12_rad": np.pi / 6, "cs_a": 2e4})
