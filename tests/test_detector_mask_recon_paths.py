"""Every reconstruction path leaves invalid detector pixels out of the loss: the service's live chunks and converged run, and
``ptychoscan reconstruct`` reading a file with a ``detector_mask``."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from recon_testing import blob_phase

from recon.forward import forward_intensity
from recon.grid import ObjectGrid
from recon.invalid_pixels import marked_pixels
from service.compute import ReconJob, TorchReconBackend
from service.spec import Beam

BEAM = Beam(60_000.0, 25.0, 16, 4.0, 0.0)
FOV = (0.0, 0.0, 0.3, 0.3)
HOT = (3, 12)


def _counts() -> tuple[np.ndarray, np.ndarray]:
    """(uint16 counts (25, 16, 16), positions (25, 2) nm) of a 5 x 5 raster over ``FOV``, ~20k electrons per pattern."""
    xs = np.linspace(0.0, 0.3, 5)
    positions = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    grid = ObjectGrid.covering(FOV, BEAM.pixel_nm, BEAM.detector_pixels)
    truth = blob_phase(grid.shape, np.random.default_rng(4)).float()
    px = torch.tensor(grid.positions_px(positions), dtype=torch.float32)
    intensity = forward_intensity(torch.polar(torch.ones_like(truth), truth), BEAM.probe().to(torch.complex64), px)
    return np.rint(intensity.numpy() / intensity.sum(dim=(-2, -1)).mean().item() * 20_000).astype(np.uint16), positions


@pytest.mark.parametrize("which", ["live", "converged"])
def test_service_reconstruction_with_a_masked_hot_pixel_matches_the_clean_one(which):
    torch.set_num_threads(2)
    counts, positions = _counts()
    hot = counts.copy()
    hot[:, HOT[0], HOT[1]] = 65535
    backend = TorchReconBackend(update=3, options={"detector_binning": 1})

    def run(patterns, invalid):
        job = ReconJob(BEAM, FOV, patterns.astype(np.float32), positions, None, final=True, invalid_pixels=invalid)
        return backend.reconstruct([job])[0].potential if which == "live" else backend.converged(job, lambda _pass: None)[0].potential

    clean, masked, unmasked = run(counts, None), run(hot, marked_pixels(hot)), run(hot, None)
    scale = np.abs(clean).max()
    assert scale > 0.05
    assert np.abs(masked - clean).max() < 0.1 * scale
    assert np.abs(unmasked - clean).max() > 0.5 * scale


def _offline(tmp_path, name: str, patterns: np.ndarray, positions: np.ndarray, detector_mask: np.ndarray | None) -> np.ndarray:
    from ptychoscan.cli import main
    from recon.dataset import Dataset4D, write_dataset

    path = write_dataset(tmp_path / f"{name}.h5", Dataset4D(patterns, positions, BEAM.energy_ev, BEAM.convergence_mrad, BEAM.detector_pixel_mrad))
    if detector_mask is not None:  # as a session file records it
        with h5py.File(path, "a") as f:
            f.create_dataset("detector_mask", data=detector_mask.astype(np.uint8) * 2)
    out = tmp_path / f"{name}-rec.h5"
    assert main(["reconstruct", str(path), "--out", str(out), "--iterations", "3", "--detector-binning", "1", "--device", "cpu"]) == 0
    with h5py.File(out, "r") as f:
        return f["phase"][()]


def test_offline_reconstruct_reads_the_files_detector_mask_and_its_marked_pixels(tmp_path):
    torch.set_num_threads(2)
    counts, positions = _counts()
    marked, hot = counts.copy(), counts.copy()
    marked[:, HOT[0], HOT[1]] = 65535  # the detector's mark: invalid without a recorded mask
    hot[:, HOT[0], HOT[1]] = 60_000  # a hot pixel's counts: invalid only where the file's detector_mask says so
    only = np.zeros((16, 16), bool)
    only[HOT] = True
    clean = _offline(tmp_path, "clean", counts, positions, None)
    scale = np.abs(clean).max()
    assert scale > 0.05
    assert np.abs(_offline(tmp_path, "marked", marked, positions, None) - clean).max() < 0.1 * scale
    assert np.abs(_offline(tmp_path, "recorded", hot, positions, only) - clean).max() < 0.1 * scale
    assert np.abs(_offline(tmp_path, "hot", hot, positions, None) - clean).max() > 0.5 * scale
