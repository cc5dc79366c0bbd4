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


def _counts(fov=FOV, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 counts (n * n, 16, 16), positions (n * n, 2) nm) of an n x n raster over ``fov``, ~20k electrons per pattern."""
    xs = np.linspace(fov[0], fov[0] + fov[2], n)
    positions = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    grid = ObjectGrid.covering(fov, BEAM.pixel_nm, BEAM.detector_pixels)
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


def _session_file(path, patterns: np.ndarray, positions: np.ndarray, detector_mask: np.ndarray | None):
    """A session file as far as ``converged_scores`` reads it: its frames, positions and (when given) ``detector_mask`` flags."""
    with h5py.File(path, "w") as f:
        f.create_dataset("patterns", data=patterns)
        f.create_dataset("positions_nm", data=positions)
        f.create_dataset("received", data=np.ones(len(positions), bool))
        if detector_mask is not None:
            f.create_dataset("detector_mask", data=detector_mask.astype(np.uint8))  # FROM_HEADER: the detector's own pixel mask
    return path


def test_the_demos_converged_scores_leave_out_the_session_files_invalid_pixels(tmp_path):
    """Regression: ``ptychoscan demo``'s own converged reconstruction of each session file fitted the pixels its
    ``detector_mask`` flags (and pixels marked with the largest count) as counts."""
    from ptychoscan.closed_loop import converged_scores
    from recon.dataset import Dataset4D, GroundTruth

    torch.set_num_threads(2)
    fov = (0.0, 0.0, 0.6, 0.6)  # scored over the field: at least 7 x 7 grid pixels
    counts, positions = _counts(fov, 9)
    grid = ObjectGrid.covering(fov, BEAM.pixel_nm, BEAM.detector_pixels)
    truth = GroundTruth(blob_phase(grid.shape, np.random.default_rng(4)).numpy().astype(np.float32), grid.pixel_nm, grid.origin_nm)
    dataset = Dataset4D(counts[:0], positions[:0], BEAM.energy_ev, BEAM.convergence_mrad, BEAM.detector_pixel_mrad, ground_truth=truth)
    hot, marked = counts.copy(), counts.copy()
    hot[:, HOT[0], HOT[1]] = 60_000  # counts: invalid only where the file's detector_mask says so
    marked[:, HOT[0], HOT[1]] = 65535  # the detector's mark
    only = np.zeros((16, 16), bool)
    only[HOT] = True

    def potential(name, patterns, mask):
        return converged_scores(_session_file(tmp_path / f"{name}.h5", patterns, positions, mask), dataset, fov)[1]

    clean = potential("clean", counts, None)
    scale = np.abs(clean).max()
    assert scale > 0.05
    assert np.abs(potential("hot", hot, None) - clean).max() > 0.5 * scale, "the hot pixel matters when nothing flags it"
    assert np.abs(potential("recorded", hot, only) - clean).max() < 0.1 * scale
    assert np.abs(potential("marked", marked, None) - clean).max() < 0.1 * scale


def test_a_session_files_detector_mask_is_read_and_checked_as_a_datasets(tmp_path):
    """One reader (``recon.invalid_pixels.invalid_in_file``) for dataset and session files: a session file's mask of another
    shape was OR-ed in by broadcasting (a (1, K) row flagged a whole column set) instead of refused as a dataset's is."""
    from service.converged_store import ConvergedStoreError, read_measured

    counts, positions = _counts()
    counts[:, 0, 1] = 65535
    recorded = np.zeros((16, 16), bool)
    recorded[HOT] = True
    _, _, invalid = read_measured(_session_file(tmp_path / "ok.h5", counts, positions, recorded))
    assert set(zip(*np.nonzero(invalid), strict=True)) == {HOT, (0, 1)}, "the recorded mask OR the marked pixels"
    with pytest.raises(ConvergedStoreError, match=r"detector_mask must have shape \(16, 16\), got \(1, 16\)"):
        read_measured(_session_file(tmp_path / "row.h5", counts, positions, np.ones((1, 16), bool)))
