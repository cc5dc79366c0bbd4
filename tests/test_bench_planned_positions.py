"""bench/planned_positions.py: a strategy's positions on a file's own raster, as indices select_subset reads back."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from recon.dataset import read_dataset
from recon.inputs import select_subset

BENCH = Path(__file__).resolve().parent.parent / "bench" / "planned_positions.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("planned_positions", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_indices_of_finds_raster_rows_and_rejects_positions_off_it(bench):
    raster = np.stack(np.meshgrid(np.arange(4) * 0.1, np.arange(3) * 0.1), axis=-1).reshape(-1, 2)
    np.testing.assert_array_equal(bench.indices_of(raster[[7, 2, 11]], raster), [7, 2, 11])
    with pytest.raises(ValueError, match="not on the raster"):
        bench.indices_of(raster[[1]] + 0.03, raster)


def test_structure_guided_plan_is_a_subset_of_the_file(bench, tiny_dataset_file, tmp_path, monkeypatch):
    out = tmp_path / "plan.npy"
    monkeypatch.setattr(sys, "argv", ["planned_positions.py", str(tiny_dataset_file), "--budget", "12", "--chunk", "6", "--out", str(out)])
    bench.main()
    indices = np.load(out)
    dataset = read_dataset(tiny_dataset_file)
    assert len(indices) == 12 and len(np.unique(indices)) == 12
    np.testing.assert_array_equal(select_subset(dataset, str(out)), indices)
