"""Other draws of a simulated dataset's scan errors: the same specimen, raster and beam, the patterns at other true positions.

A file made by ``ptychoscan simulate --jitter-nm ... --scan-distortion ...`` holds the patterns at
one draw of the jitter (``--scan-error-seed``, default 0). ``redraw`` simulates the patterns of
chosen raster positions at the true positions of another draw (``ScanErrors.seed``), for
``bench/position_correction.py --scan-error-seeds``. The simulation settings are read back from the
file (beam, detector, raster, specimen kind and seed), the rest are ``SimulationConfig``'s defaults;
``check_file`` confirms that they, and the given scan errors at the file's seed, reproduce the file.
"""

from __future__ import annotations

import numpy as np

from recon.dataset import Dataset4D
from sim_microscope.datasets import SimulationConfig, raster_specimen
from sim_microscope.scan_errors import ScanErrors
from sim_microscope.simulate import simulate_scan
from sim_microscope.specimens import SpecimenConfig

PATTERN_SEED_OFFSET = 1_000_003
"""``simulate_raster_dataset``'s seed of the simulation (specimen seed + this); noise-free files do not use it."""


def simulation_config_of(dataset: Dataset4D, errors: ScanErrors) -> SimulationConfig:
    """The ``SimulationConfig`` that made ``dataset`` (defaults for what the file does not record), with scan errors ``errors``."""
    if dataset.grid_shape is None or dataset.specimen_kind is None or dataset.specimen_seed is None:
        raise ValueError("not a ptychoscan simulate raster file (no grid_shape, specimen_kind or specimen_seed)")
    ny, nx = dataset.grid_shape
    step = float(np.ptp(dataset.positions_nm[:, 0])) / (nx - 1)
    return SimulationConfig(energy_ev=dataset.energy_ev, convergence_mrad=dataset.convergence_mrad, defocus_nm=dataset.defocus_nm,
                            detector_pixels=dataset.patterns.shape[-1], detector_pixel_mrad=dataset.detector_pixel_mrad,
                            scan_shape=(ny, nx), step_nm=step, specimen=SpecimenConfig(kind=dataset.specimen_kind), scan_errors=errors)


def redraw(dataset: Dataset4D, errors: ScanErrors, idx: np.ndarray, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 noise-free patterns, (len(idx), 2) true positions nm) of raster positions ``idx`` of ``dataset``'s specimen
    with scan errors ``errors`` drawn over the whole raster, as ``ptychoscan simulate`` would have made them (bit for bit
    when ``idx`` is every position; a subset's patterns differ by ~1e-3 of their peak: the simulated potential's grid is
    placed by the positions' extent)."""
    config = simulation_config_of(dataset, errors)
    atoms, nominal = raster_specimen(config, int(dataset.specimen_seed))
    if nominal.shape != dataset.positions_nm.shape or not np.allclose(nominal, dataset.positions_nm, atol=1e-6):
        raise ValueError("the file's positions are not the raster ptychoscan simulate makes for its grid and step")
    true = errors.true_positions(nominal)[np.asarray(idx)]
    result = simulate_scan(atoms, true, energy_ev=config.energy_ev, convergence_mrad=config.convergence_mrad,
                           detector_pixels=config.detector_pixels, detector_pixel_mrad=config.detector_pixel_mrad,
                           aberrations=config.nominal_aberrations, binning=config.binning, oversample=config.oversample,
                           seed=int(dataset.specimen_seed) + PATTERN_SEED_OFFSET, device=device)
    return result.patterns.astype(np.float32), true


def check_file(dataset: Dataset4D, errors: ScanErrors, n: int = 3, device: str | None = None) -> None:
    """Raise ValueError unless ``errors`` gives the file's true positions and ``redraw`` its first ``n`` patterns (noise-free files)."""
    truth = dataset.acquisition_truth
    if truth is None or truth.positions_nm is None:
        raise ValueError("the file has no acquisition_truth positions: make it with ptychoscan simulate --jitter-nm ...")
    _, nominal = raster_specimen(simulation_config_of(dataset, errors), int(dataset.specimen_seed))
    if not np.allclose(errors.true_positions(nominal), truth.positions_nm, atol=1e-9):
        raise ValueError(f"the file's scan errors are not {errors.model_dump()} (give its --jitter-nm, --scan-distortion and seed)")
    idx = np.arange(min(n, dataset.n_positions))
    patterns, _ = redraw(dataset, errors, idx, device)
    if not np.allclose(patterns, dataset.patterns[idx], rtol=0.0, atol=1e-2 * float(np.abs(patterns).max())):  # a subset: ~1e-3
        raise ValueError("the file's patterns are not reproduced from its recorded settings and SimulationConfig's defaults")
