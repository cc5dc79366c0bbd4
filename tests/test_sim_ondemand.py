"""Patterns simulated on demand from a dataset's ground truth agree with the simulator's own."""

import numpy as np
import pytest

from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset
from sim_microscope.ondemand import PhaseObjectSimulator


@pytest.fixture(scope="module")
def dataset():
    cfg = SimulationConfig(scan_shape=(4, 4), step_nm=0.1, detector_pixels=32, detector_pixel_mrad=3.0, binning=1, oversample=2)
    return simulate_raster_dataset(cfg, seed=5)


def test_on_demand_patterns_match_the_raster_simulation(dataset):
    sim = PhaseObjectSimulator.from_dataset(dataset)
    gt = dataset.ground_truth
    # raster positions moved onto the nearest fine pixel: the two models then see the same probe position
    on_pixel = np.rint((dataset.positions_nm - np.asarray(gt.origin_nm)) / gt.pixel_nm) * gt.pixel_nm + np.asarray(gt.origin_nm)
    ours = sim.patterns(on_pixel)
    np.testing.assert_allclose(ours.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    reference = dataset.patterns / dataset.patterns.sum(axis=(1, 2), keepdims=True)
    # the raster positions are within half a fine pixel of on_pixel
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours, reference, strict=True)]
    assert min(corr) > 0.99


def test_positions_off_the_ground_truth_are_refused(dataset):
    sim = PhaseObjectSimulator.from_dataset(dataset)
    with pytest.raises(ValueError, match="leaves the phase grid"):
        sim.patterns(np.array([[50.0, 50.0]]))
    with pytest.raises(ValueError, match="NaN"):
        sim.patterns(np.array([[np.nan, 0.0]]))


def test_a_phase_grid_that_does_not_divide_the_pixel_is_refused(dataset):
    gt = dataset.ground_truth
    with pytest.raises(ValueError, match="integer fraction"):
        PhaseObjectSimulator(gt.phase, gt.pixel_nm * 1.3, gt.origin_nm, energy_ev=dataset.energy_ev, convergence_mrad=dataset.convergence_mrad,
                             detector_pixels=dataset.detector_pixels, detector_pixel_mrad=dataset.detector_pixel_mrad)


def test_a_dataset_read_with_its_truth_simulates_with_the_true_probe():
    from recon.aberrations import ProbeAberrations

    truth = ProbeAberrations(defocus_nm=3.0, astigmatism_nm=1.0, astigmatism_angle_deg=40.0, cs_um=1.0)
    cfg = SimulationConfig(scan_shape=(4, 4), step_nm=0.1, detector_pixels=32, detector_pixel_mrad=3.0, binning=1, oversample=2,
                           true_probe=truth)
    aberrated = simulate_raster_dataset(cfg, seed=5)
    gt = aberrated.ground_truth
    on_pixel = np.rint((aberrated.positions_nm - np.asarray(gt.origin_nm)) / gt.pixel_nm) * gt.pixel_nm + np.asarray(gt.origin_nm)
    reference = aberrated.patterns / aberrated.patterns.sum(axis=(1, 2), keepdims=True)

    def worst_r(sim):
        return min(np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(sim.patterns(on_pixel), reference, strict=True))

    with_truth = worst_r(PhaseObjectSimulator.from_dataset(aberrated))  # acquisition_truth in memory: the true probe
    aberrated.acquisition_truth = None  # as read_dataset returns it by default: the nominal, in-focus probe
    nominal = worst_r(PhaseObjectSimulator.from_dataset(aberrated))
    assert with_truth > 0.99 and nominal < with_truth - 0.02, (with_truth, nominal)
