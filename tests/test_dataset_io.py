"""Dataset files: round trip, validation, one-line errors naming what is wrong."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from recon.dataset import DatasetError, read_dataset, write_dataset


def test_round_trip_keeps_every_field(tiny_dataset, tiny_dataset_file):
    back = read_dataset(tiny_dataset_file)
    np.testing.assert_array_equal(back.patterns, tiny_dataset.patterns)
    np.testing.assert_array_equal(back.positions_nm, tiny_dataset.positions_nm)
    assert back.grid_shape == (6, 6)
    assert back.energy_ev == 60_000.0 and back.convergence_mrad == 33.0
    assert back.probe.shape == (32, 32) and back.probe.dtype == np.complex64
    assert back.ground_truth.phase.shape == tiny_dataset.ground_truth.phase.shape
    assert back.ground_truth.origin_nm == pytest.approx(tiny_dataset.ground_truth.origin_nm)
    with h5py.File(tiny_dataset_file) as f:
        assert f.attrs["format"] == "ptychoscan-4dstem" and f.attrs["version"] == 1


def test_metadata_only_read(tiny_dataset_file):
    meta = read_dataset(tiny_dataset_file, load_patterns=False)
    assert meta.patterns.shape == (0, 32, 32)
    assert meta.positions_nm.shape == (36, 2)


def _corrupt(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.attrs.__setitem__("format", "something-else"), "format"),
        (lambda f: f.attrs.__setitem__("version", 7), "version"),
        (lambda f: f.attrs.__delitem__("energy_ev"), "energy_ev"),
        (lambda f: f.attrs.__setitem__("convergence_mrad", -3.0), "convergence_mrad"),
        (lambda f: f.attrs.__setitem__("detector_pixel_mrad", "wide"), "detector_pixel_mrad"),
        (lambda f: f.attrs.__setitem__("grid_shape", np.array([5, 5])), "grid_shape"),
        (lambda f: f.__delitem__("positions_nm"), "positions_nm"),
        (lambda f: f["patterns"].__setitem__((3, 1, 1), np.nan), "NaN"),
        (lambda f: f["positions_nm"].__setitem__((2, 0), np.inf), "positions_nm"),
        (lambda f: f["ground_truth/phase"].attrs.__delitem__("pixel_nm"), "pixel_nm"),
    ],
)
def test_malformed_file_gives_one_line_error(tiny_dataset_file, edit, message):
    _corrupt(tiny_dataset_file, edit)
    with pytest.raises(DatasetError) as err:
        read_dataset(tiny_dataset_file)
    text = str(err.value)
    assert message in text and "\n" not in text and str(tiny_dataset_file) in text


def test_wrong_shapes_and_dtypes_are_refused(tmp_path, tiny_dataset):
    bad_patterns = dataclasses.replace(tiny_dataset, patterns=tiny_dataset.patterns[:, :, :31])
    with pytest.raises(DatasetError, match=r"shape \(N, K, K\)"):
        write_dataset(tmp_path / "a.h5", bad_patterns)
    bad_dtype = dataclasses.replace(tiny_dataset, patterns=tiny_dataset.patterns.astype(np.float64))
    with pytest.raises(DatasetError, match="dtype"):
        write_dataset(tmp_path / "b.h5", bad_dtype)
    short_positions = dataclasses.replace(tiny_dataset, positions_nm=tiny_dataset.positions_nm[:-1])
    with pytest.raises(DatasetError, match="35 rows but patterns has 36"):
        write_dataset(tmp_path / "c.h5", short_positions)
    assert not list(tmp_path.iterdir()), "a refused write must leave no file behind"


def test_not_hdf5_and_missing_file(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(DatasetError, match="not an HDF5 file"):
        read_dataset(junk)
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "absent.h5")


def test_counts_dtypes_accepted(tmp_path, tiny_dataset):
    counts = dataclasses.replace(tiny_dataset, patterns=(tiny_dataset.patterns * 1000).astype(np.uint16))
    back = read_dataset(write_dataset(tmp_path / "counts.h5", counts))
    assert back.patterns.dtype == np.uint16
