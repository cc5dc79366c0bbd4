"""Simulation with an aberrated probe and scan errors: the truth is recorded apart, the default read is nominal."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ptychoscan.cli import main
from recon.aberrations import ProbeAberrations
from recon.dataset import DatasetError, read_dataset, write_dataset
from recon.engine import Reconstructor
from recon.inputs import chunk_from_dataset, fov_of
from recon.metrics import quality_scores, registered_truth
from recon.options import ReconOptions
from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset
from sim_microscope.scan_errors import ScanErrors

TRUE_PROBE = ProbeAberrations(defocus_nm=3.0, astigmatism_nm=1.0, astigmatism_angle_deg=30.0, cs_um=1.0)
SCAN_ERRORS = ScanErrors(jitter_nm=0.01, drift_nm_per_position=(1e-3, 0.0), distortion=(0.01, 0.0, 0.0, 0.01), seed=2)


def tiny(**update) -> SimulationConfig:
    base = dict(scan_shape=(6, 6), step_nm=0.1, detector_pixels=32, detector_pixel_mrad=3.0, binning=1, oversample=2)
    return SimulationConfig(**{**base, **update})


def test_truth_is_recorded_apart_and_the_default_read_is_nominal(tmp_path):
    config = tiny(true_probe=TRUE_PROBE, scan_errors=SCAN_ERRORS)
    path = write_dataset(tmp_path / "aberrated.h5", simulate_raster_dataset(config, seed=3))
    plain = read_dataset(path)
    nominal = simulate_raster_dataset(tiny(), seed=3)
    assert plain.acquisition_truth is None
    np.testing.assert_allclose(plain.positions_nm, nominal.positions_nm)  # commanded raster, not where the beam was
    assert plain.defocus_nm == 0.0
    np.testing.assert_allclose(plain.probe, nominal.probe, atol=1e-6)  # the nominal (in-focus) probe
    assert not np.allclose(plain.patterns, nominal.patterns, atol=1e-4)  # but the patterns are the aberrated ones

    truth = read_dataset(path, with_acquisition_truth=True).acquisition_truth
    assert ProbeAberrations(**truth.aberrations) == TRUE_PROBE
    np.testing.assert_allclose(truth.positions_nm, SCAN_ERRORS.true_positions(plain.positions_nm))
    expected = TRUE_PROBE.reconstruction_probe(config.energy_ev, config.convergence_mrad, 32, 3.0).numpy()
    np.testing.assert_allclose(truth.probe, expected, atol=1e-6)
    error = np.linalg.norm(truth.positions_nm - plain.positions_nm, axis=1)
    assert 0.005 < error.mean() < 0.06


def test_without_errors_no_truth_group_is_written(tmp_path):
    dataset = simulate_raster_dataset(tiny(true_probe=ProbeAberrations(), scan_errors=ScanErrors()), seed=3)
    assert dataset.acquisition_truth is None
    path = write_dataset(tmp_path / "plain.h5", dataset)
    assert read_dataset(path, with_acquisition_truth=True).acquisition_truth is None


def test_scan_errors_move_positions_as_stated():
    nominal = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    scaled = ScanErrors(distortion=(0.01, 0.0, 0.0, 0.01)).true_positions(nominal)
    np.testing.assert_allclose(scaled - 0.5, 1.01 * (nominal - 0.5))
    drifted = ScanErrors(drift_nm_per_position=(0.1, -0.2)).true_positions(nominal)
    np.testing.assert_allclose(drifted[3] - nominal[3], [0.3, -0.6])
    jitter = ScanErrors(jitter_nm=0.02, seed=1).true_positions(np.zeros((4000, 2)))
    assert jitter.std() == pytest.approx(0.02, rel=0.05)


def test_astigmatism_angle_is_measured_from_the_x_axis():
    # defocus d with C12 = d at 0 deg: chi = -pi/lambda * 2 d alpha_y^2, a line focus: spread along y (rows), sharp along x
    def widths(angle: float) -> tuple[float, float]:
        probe = ProbeAberrations(defocus_nm=5.0, astigmatism_nm=5.0, astigmatism_angle_deg=angle).probe(64, 0.45, 60e3, 33.0)
        weight = (probe.abs() ** 2).double()
        coords = torch.arange(64, dtype=torch.float64) - 32
        return float((weight.sum(0) * coords**2).sum()), float((weight.sum(1) * coords**2).sum())

    x0, y0 = widths(0.0)
    assert y0 > 2.5 * x0
    x90, y90 = widths(90.0)
    assert x90 > 2.5 * y90


def _score(dataset, probe) -> float:
    options = ReconOptions(iterations=8, batch_positions=None, optimizer="gd", step_size=5.0)
    chunk = chunk_from_dataset(dataset)
    (result,) = Reconstructor(probe, options, device="cpu").reconstruct([chunk])
    image, truth = registered_truth(result.potential, chunk.grid, dataset.ground_truth, fov_of(dataset.positions_nm))
    return quality_scores(image, truth)["pearson_r"]


def test_reconstruction_with_the_true_probe_matches_the_in_focus_case():
    # the simulator's and the reconstructor's sign conventions agree: a defocused, astigmatic dataset reconstructed
    # with the probe of its true aberrations scores like an in-focus one with its own probe; a sign flip does not
    torch.manual_seed(0)
    config = tiny(scan_shape=(8, 8), step_nm=0.05)
    beam = (config.energy_ev, config.convergence_mrad, 32, 3.0)
    aberrations = ProbeAberrations(defocus_nm=4.0, astigmatism_nm=2.0, astigmatism_angle_deg=30.0)
    in_focus = simulate_raster_dataset(config, seed=5)
    aberrated = simulate_raster_dataset(config.model_copy(update={"true_probe": aberrations}), seed=5)
    r_focus = _score(in_focus, ProbeAberrations().reconstruction_probe(*beam))
    r_true = _score(aberrated, aberrations.reconstruction_probe(*beam))
    flipped = aberrations.model_copy(update={"defocus_nm": -4.0})
    mirrored = aberrations.model_copy(update={"astigmatism_angle_deg": -30.0})
    r_flipped = _score(aberrated, flipped.reconstruction_probe(*beam))
    r_mirrored = _score(aberrated, mirrored.reconstruction_probe(*beam))
    assert r_true > r_focus - 0.05, (r_true, r_focus)
    assert r_true > r_flipped + 0.1 and r_true > r_mirrored + 0.05, (r_true, r_flipped, r_mirrored)


def test_bad_options_are_rejected_with_clear_errors():
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        ProbeAberrations(astigmatism_nm=-1.0)
    with pytest.raises(ValidationError, match="finite"):
        ProbeAberrations(defocus_nm=float("nan"))
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        ScanErrors(jitter_nm=-0.01)
    with pytest.raises(ValidationError, match="close to the identity"):
        ScanErrors(distortion=(-0.9, 0.0, 0.0, 0.0))
    with pytest.raises(ValidationError, match="extra"):
        ScanErrors(jiter_nm=0.01)


def test_simulate_cli_flags_reach_the_file(tmp_path, capsys):
    args = ["simulate", "--specimen", "mos2", "--out", str(tmp_path), "--scan-shape", "3", "3", "--step-nm", "0.1",
            "--detector-pixels", "32", "--detector-pixel-mrad", "3.0", "--binning", "1", "--oversample", "2", "--device", "cpu"]
    assert main([*args, "--true-astigmatism-nm", "1.5", "--true-astigmatism-angle-deg", "20", "--jitter-nm", "0.01"]) == 0
    truth = read_dataset(next(tmp_path.glob("*.h5")), with_acquisition_truth=True).acquisition_truth
    assert truth.aberrations == {"defocus_nm": 0.0, "astigmatism_nm": 1.5, "astigmatism_angle_deg": 20.0, "cs_um": 0.0}
    capsys.readouterr()
    assert main([*args, "--true-astigmatism-nm", "-1"]) != 0
    assert "true_probe.astigmatism_nm: Input should be greater than or equal to 0" in capsys.readouterr().err
    assert main([*args, "--scan-distortion", "-0.9", "0", "0", "0"]) != 0
    assert "scan_errors.distortion" in capsys.readouterr().err


def test_a_malformed_truth_group_is_named(tmp_path):
    dataset = simulate_raster_dataset(tiny(true_probe=TRUE_PROBE), seed=3)
    dataset.acquisition_truth.positions_nm = dataset.acquisition_truth.positions_nm[:-1]
    with pytest.raises(DatasetError, match=r"acquisition_truth/positions_nm must be finite with shape \(36, 2\)"):
        write_dataset(tmp_path / "bad.h5", dataset)
    good = write_dataset(tmp_path / "good.h5", simulate_raster_dataset(tiny(true_probe=TRUE_PROBE), seed=3))
    with h5py.File(good, "r+") as f:
        del f["acquisition_truth/probe"]
    assert read_dataset(good).acquisition_truth is None  # the default read never opens the group
    with pytest.raises(DatasetError, match="acquisition_truth lacks dataset 'probe'"):
        read_dataset(good, with_acquisition_truth=True)


def test_detector_from_truth_simulates_with_the_true_probe_not_the_nominal_one(tmp_path):
    from sim_microscope.frame_source import GroundTruthSource
    from sim_microscope.ondemand import PhaseObjectSimulator

    path = write_dataset(tmp_path / "aberrated.h5", simulate_raster_dataset(tiny(true_probe=TRUE_PROBE), seed=3))
    source = GroundTruthSource(str(path))
    at = source.beam_positions(np.array([[0.25, 0.25], [0.3, 0.2]]))  # inside the field the ground truth can simulate
    true = PhaseObjectSimulator.from_dataset(read_dataset(path, with_acquisition_truth=True), device="cpu").patterns(at)
    nominal = PhaseObjectSimulator.from_dataset(read_dataset(path), device="cpu").patterns(at)
    np.testing.assert_allclose(source.patterns(at), true, rtol=1e-5, atol=1e-7)
    assert not np.allclose(true, nominal, atol=1e-4), "the detector is the microscope: its probe is the aberrated one"
