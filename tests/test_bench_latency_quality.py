"""bench/latency_quality.py and the latency bench's decision count, on tiny arrays (no service, no simulation)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # service_latency imports latency_quality by name in its functions
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lq():
    return _load("latency_quality")


def _raster(lq, tmp_path: Path, ny: int = 3, nx: int = 4, k: int = 4):
    patterns = np.arange(ny * nx, dtype=np.float32)[:, None, None] * np.ones((1, k, k), np.float32) / (k * k)
    patterns += 1.0 / (k * k)  # every pattern sums to 1 + its index
    np.save(tmp_path / "p.npy", patterns)
    return lq.RasterFrames("unused.h5", (1.0, 2.0, 0.3, 0.2), 0.1, (ny, nx), str(tmp_path / "p.npy"), {})


def test_snap_takes_the_nearest_raster_point_and_clips_to_the_raster(lq, tmp_path):
    r = _raster(lq, tmp_path)
    idx = r.snap(np.array([[1.0, 2.0], [1.14, 2.06], [1.31, 2.19], [5.0, -3.0]]))
    assert idx.tolist() == [0, 1 * 4 + 1, 2 * 4 + 3, 0 * 4 + 3]
    assert np.allclose(r.position(idx), [[1.0, 2.0], [1.1, 2.1], [1.3, 2.2], [1.3, 2.0]])


def test_frames_are_counts_of_the_snapped_patterns_seeded_by_session_and_chunk(lq, tmp_path):
    r = _raster(lq, tmp_path)
    maker = lq.FrameMaker(r, dose=1000.0, seed=7)
    pos = np.array([[1.0, 2.0], [1.3, 2.2]])
    frames, measured = maker.frames(pos, chunk_index=3)
    assert frames.dtype == np.uint16 and frames.shape == (2, 4, 4)
    assert np.allclose(measured, pos)
    assert 900 < frames[0].sum() < 1100 and 11_000 < frames[1].sum() < 13_000, "dose x the pattern at the raster point (sums 1 and 12)"
    again, _ = lq.FrameMaker(r, dose=1000.0, seed=7).frames(pos, chunk_index=3)
    assert np.array_equal(frames, again), "the same session and chunk: the same noise, whatever else ran"
    other, _ = maker.frames(pos, chunk_index=4)
    assert not np.array_equal(frames, other)


def test_paired_difference(lq):
    d, se, wins = lq.paired([0.5, 0.6, 0.7], [0.5, 0.5, 0.8])
    assert d == pytest.approx(0.0) and se == pytest.approx(np.std([0.0, 0.1, -0.1], ddof=1) / np.sqrt(3)) and wins == 1


def test_decisions_per_session_is_every_chunk_but_the_last():
    sl = _load("service_latency")
    assert sl.Load(50, 250, 64, 1, 1, "adaptive", 1e-3).decisions_per_session == 4
    assert sl.Load(100, 250, 64, 1, 1, "adaptive", 1e-3).decisions_per_session == 2
    assert sl.Load(50, 50, 64, 1, 1, "adaptive", 1e-3).decisions_per_session == 0


def test_quality_rows_pair_sessions_by_seed_and_count_those_with_the_same_positions():
    sl = _load("service_latency")

    def row(seed, r, shift=0.0, shrunk=0):
        pos = np.array([[1.0, 2.0], [1.5, 2.5]]) + shift
        return {"seed": seed, "shrunk": shrunk, "positions": pos, "issued": pos, "live": {"pearson_r": r, "ssim": r / 2},
                "converged": {"pearson_r": 0.8, "ssim": 0.4}}

    on = [row(0, 0.5, shrunk=3), row(1, 0.6, shift=0.1, shrunk=3), row(7, 0.1)]  # seed 7 has no partner: left out
    off = [row(1, 0.7), row(0, 0.6)]
    lines = sl.quality_rows(4, 50, on, off)
    assert "same with and without the deadline: 1;" in lines[0] and "0.1 nm" in lines[0]
    live_r = next(line for line in lines if "live pearson_r" in " ".join(line.split()))
    fields = live_r.split()
    assert fields[2:4] == ["2", "6"], "2 pairs, 6 shrunk updates"
    assert float(fields[8]) == pytest.approx(-0.1) and fields[-1] == "0", "on - off per pair, then averaged; no pair won"


def test_shrunk_counts_only_updates_a_decision_waited_for():
    sl = _load("service_latency")
    chunks = [
        {"update_shrunk": False, "decision_latency_s": 0.05},
        {"update_shrunk": True, "decision_latency_s": 0.04},
        {"update_shrunk": True, "decision_latency_s": 0.03},
        {"update_shrunk": True, "decision_latency_s": None},  # the last chunk: no decision waits for it
        {"update_shrunk": None, "decision_latency_s": None},  # not reconstructed yet
    ]
    assert sl.shrunk_waited(chunks) == 2
    assert sl.shrunk_waited([]) == 0
