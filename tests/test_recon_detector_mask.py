"""Invalid detector pixels in the reconstructor: a pixel marked 65535 in every frame, excluded by ``ScanChunk.invalid_pixels``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recon_testing import blob_phase

from recon.engine import Reconstructor, ScanChunk
from recon.forward import bin_patterns, forward_intensity
from recon.grid import ObjectGrid
from recon.invalid_pixels import marked_pixels
from recon.options import ReconOptions
from recon.probe import make_probe

K = 16
PIXEL_NM = 0.05
HOT = (3, 12)
"""(y, x) of the hot pixel: off the bright-field disc, where the true counts are few."""
DOSE = 20_000.0
"""electrons per pattern: the counts are a few thousand at most, far below the 65535 mark."""


def _grid(positions: np.ndarray, window: int) -> ObjectGrid:
    return ObjectGrid.covering((positions[:, 0].min(), positions[:, 1].min(), np.ptp(positions[:, 0]), np.ptp(positions[:, 1])), PIXEL_NM, window)


def _data(binning: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 counts (N, K, K), positions (N, 2) nm) of a 7 x 7 raster, modelled on K*b pixels and binned b x b to K."""
    xs = np.arange(7) * 0.05 + 0.013
    positions = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    grid = _grid(positions, K * binning)
    truth = blob_phase(grid.shape, np.random.default_rng(2)).float()
    probe = make_probe(K * binning, PIXEL_NM * 10, 60e3, 60.0)
    px = torch.tensor(grid.positions_px(positions), dtype=torch.float32)
    intensity = bin_patterns(forward_intensity(torch.polar(torch.ones_like(truth), truth), probe, px), binning)
    counts = np.rint(intensity.numpy() / intensity.sum(dim=(-2, -1)).mean().item() * DOSE).astype(np.uint16)
    return counts, positions


def _reconstruct(patterns, positions, invalid, binning: int, device: str) -> np.ndarray:
    options = ReconOptions(detector_binning=binning, iterations=6, optimizer="adam", step_size=0.02, batch_positions=16)
    grid_k = _grid(positions, K)
    rec = Reconstructor(make_probe(K, PIXEL_NM * 10, 60e3, 60.0), options, device)
    return rec.reconstruct([ScanChunk(patterns, positions, grid_k, invalid_pixels=invalid)])[0].potential.numpy()


@pytest.mark.parametrize("binning", [1, 2])
def test_a_hot_pixel_is_harmless_when_masked_and_not_otherwise(binning, device):
    counts, positions = _data(binning)
    hot = counts.copy()
    hot[:, HOT[0], HOT[1]] = 65535  # what pixel_mask_applied makes of a masked pixel, in every frame
    invalid = marked_pixels(hot)
    assert np.flatnonzero(invalid).tolist() == [HOT[0] * K + HOT[1]] and not marked_pixels(counts).any()
    clean = _reconstruct(counts, positions, None, binning, device)
    masked = _reconstruct(hot, positions, invalid, binning, device)
    unmasked = _reconstruct(hot, positions, None, binning, device)
    assert np.array_equal(hot[:, HOT[0], HOT[1]], np.full(len(hot), 65535))  # the data stay as measured: excluded, not zeroed
    scale = np.abs(clean).max()
    assert scale > 0.05
    assert np.abs(masked - clean).max() < 0.1 * scale  # one pixel of K*K less: nearly the same image
    assert np.abs(unmasked - clean).max() > 0.5 * scale  # the 65535 dominates the normalisation and the loss: a different image


def test_the_mask_is_per_scan_in_a_batched_call(device):
    counts, positions = _data(1)
    hot = counts.copy()
    hot[:, HOT[0], HOT[1]] = 65535
    grid_k = _grid(positions, K)
    rec = Reconstructor(make_probe(K, PIXEL_NM * 10, 60e3, 60.0), ReconOptions(detector_binning=1, iterations=3, batch_positions=16), device)
    both = rec.reconstruct([ScanChunk(counts, positions, grid_k), ScanChunk(hot, positions, grid_k, invalid_pixels=marked_pixels(hot))])
    alone = rec.reconstruct([ScanChunk(counts, positions, grid_k)])[0]
    assert torch.equal(both[0].potential, alone.potential)  # the other scan's mask does not touch this one
    assert np.abs(both[1].potential.numpy() - alone.potential.numpy()).max() < 0.1 * np.abs(alone.potential.numpy()).max()


def test_invalid_pixels_of_the_wrong_shape_or_covering_everything_are_refused():
    counts, positions = _data(1)
    grid_k = _grid(positions, K)
    rec = Reconstructor(make_probe(K, PIXEL_NM * 10, 60e3, 60.0), ReconOptions(detector_binning=1, iterations=1), "cpu")
    with pytest.raises(ValueError, match=r"scan 0: invalid_pixels must have shape \(16, 16\)"):
        rec.reconstruct([ScanChunk(counts, positions, grid_k, invalid_pixels=np.zeros((8, 8), bool))])
    with pytest.raises(ValueError, match="excludes every detector pixel"):
        rec.reconstruct([ScanChunk(counts, positions, grid_k, invalid_pixels=np.ones((K, K), bool))])


def test_a_datasets_invalid_pixels_round_trip_and_are_checked(tmp_path):
    from recon.dataset import Dataset4D, DatasetError, read_dataset, write_dataset

    counts, positions = _data(1)
    invalid = np.zeros((K, K), bool)
    invalid[0, 1] = True
    path = write_dataset(tmp_path / "d.h5", Dataset4D(counts, positions, 60e3, 25.0, 4.0, invalid_pixels=invalid))
    assert np.array_equal(read_dataset(path).invalid_pixels, invalid)
    assert read_dataset(write_dataset(tmp_path / "clean.h5", Dataset4D(counts, positions, 60e3, 25.0, 4.0))).invalid_pixels is None
    with pytest.raises(DatasetError, match=r"detector_mask must have shape \(16, 16\)"):
        write_dataset(tmp_path / "bad.h5", Dataset4D(counts, positions, 60e3, 25.0, 4.0, invalid_pixels=np.zeros((4, 4), bool)))
