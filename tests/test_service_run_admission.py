"""A run of frames admitted at once (``FrameRouter.admit_run``) ends exactly as frame by frame (``FrameRouter.admit`` each).

Each case sends the same events to two managers, one storing runs (the at-once admission
where it applies, else ``admit`` per frame), one frame by frame, and compares everything
the frames change: rows, flags, counters and error details, metrics, the batch, the file.
Every case runs with the frames as rows of one decoded array (``Frame.stack``, the compiled
receive loop's) and as separate arrays.
"""

from __future__ import annotations

from collections.abc import Callable

import h5py
import numpy as np
import pytest
from service_testing import KEY, RecordingBackend, frames_for, session_body

from detector_stream.events import Frame, SeriesEnd
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.scheduler import Scheduler
from service.settings import ServiceSettings

EP = "tcp://127.0.0.1:5001"
N = 6
K = 16


def _frames(sent: list[tuple[int, np.ndarray]], stacked: bool, series: int = 1, t0: float = 10.0) -> list[Frame]:
    """Frames (index, image) of ``series``, received 1 ms apart; ``stacked``: their images as rows of one array."""
    if not stacked:
        return [Frame(series, i, img, received_at=t0 + 0.001 * k) for k, (i, img) in enumerate(sent)]
    rows = np.stack([img for _, img in sent])
    return [Frame(series, i, rows[k], received_at=t0 + 0.001 * k, stack=(rows, k)) for k, (i, _) in enumerate(sent)]


def _told(manager: SessionManager, bit_depth: int) -> str:
    body = session_body(EP, budget=N, chunk=N, detector_bit_depth=bit_depth) | {"energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0}
    sid = manager.create(body)["session_id"]
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(manager.take_work(0.1))
    manager.tell(sid, manager.try_ask(sid)["batch_id"], 1, None)
    return sid


def _outcome(manager: SessionManager, sid: str) -> dict:
    """What the frames changed: the session in memory, the metrics and, flushed, the file."""
    s = manager.sessions[sid]
    b = s.batches[0]
    sample = manager.metrics.registry.get_sample_value
    kinds = ("malformed", "duplicated", "unexpected", "other")
    out = {
        "received": s.received.tolist(),
        "patterns": s.patterns[: len(s.received)].copy(),
        "frames_received": s.frames_received,
        "counters": {k: v for k, v in s.counters.items() if v},
        "errors": [(e["kind"], e["detail"]) for e in s.recent_errors],
        "status": str(b.status),
        "arrivals": (b.first_arrival, b.last_arrival),
        "last_frame_at": s.last_frame_at,
        "state": str(s.state),
        "detector_mask": s.detector_mask.flags.copy(),
        "metrics": (
            sample("ptychoscan_ingest_frames_total"),
            sample("ptychoscan_ingest_bytes_total"),
            sample("ptychoscan_batches_completed_total"),
            {k: sample("ptychoscan_ingest_errors_total", {"kind": k}) for k in kinds},
        ),
    }
    s.flush_frames()
    with h5py.File(s.store.path, "r") as f:
        out["file_received"] = f["received"][:N].tolist()
        out["file_patterns"] = f["patterns"][:N]
        out["file_mask"] = f["detector_mask"][()] if "detector_mask" in f else None
    return out


def _both_ways(tmp_path, monkeypatch, bit_depth: int, setup: Callable[[SessionManager, str], None], events: list) -> tuple[dict, dict, list]:
    """(outcome storing runs, outcome frame by frame, the at-once admission's answers in the first)."""
    outcomes, answers = [], []
    for name, runs in (("runs", True), ("single", False)):
        manager = SessionManager(ServiceSettings(storage=tmp_path / name, api_keys=[KEY]), ServiceMetrics())
        sid = _told(manager, bit_depth)
        if runs:
            admit_run = manager.router.admit_run

            def spy(*a, admit_run=admit_run):
                answers.append(admit_run(*a))
                return answers[-1]

            monkeypatch.setattr(manager.router, "admit_run", spy)
        else:
            monkeypatch.setattr(manager, "_store_run", lambda *_a: False)
        setup(manager, sid)
        if runs:
            answers.clear()  # the setup's own
        manager.on_events(EP, events)
        outcomes.append(_outcome(manager, sid))
        manager.close()
    return outcomes[0], outcomes[1], answers


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


def _nothing(_m: SessionManager, _sid: str) -> None:
    pass


IMAGES = frames_for(1, N + 3, K)
WRONG = np.zeros((8, 8), np.uint16)


def _wide(counts: dict[int, int]) -> np.ndarray:
    """uint32 frames 0..N-1 (of ``frames_for``), pixel (1, 1) of frame i set to ``counts[i]``; pixel (0, 1) of frame 1 at the
    type's largest count (the detector's mark of an invalid pixel, not a count)."""
    img = IMAGES[:N].astype(np.uint32)
    for i, c in counts.items():
        img[i, 1, 1] = c
    img[1, 0, 1] = np.iinfo(np.uint32).max
    return img


CASES = {
    # name: (file bit depth, setup, frames (index, image), at-once admission expected: True, False, or only for "stacked" frames)
    "all-admitted": (16, _nothing, [(i, IMAGES[i]) for i in range(N)], True),
    "a-part-of-the-batch": (16, _nothing, [(i, IMAGES[i]) for i in (1, 2, 3)], True),
    "any-order": (16, _nothing, [(i, IMAGES[i]) for i in (3, 0, 5, 1, 4, 2)], True),
    "swapped-inside": (16, _nothing, [(i, IMAGES[i]) for i in (0, 2, 1, 3)], True),  # first and last span 4 slots, not in order
    "duplicate-in-run": (16, _nothing, [(0, IMAGES[0]), (1, IMAGES[1]), (2, IMAGES[2]), (1, IMAGES[4]), (3, IMAGES[3])], False),
    "already-stored": (16, lambda m, _sid: m.on_events(EP, _frames([(2, IMAGES[2])], False, t0=1.0)), [(i, IMAGES[i]) for i in range(N)], False),
    "beyond-the-binding": (16, _nothing, [(i, IMAGES[i]) for i in (3, 4, 5, 6, 7)], False),
    "negative-index": (16, _nothing, [(-1, IMAGES[0]), (0, IMAGES[0]), (1, IMAGES[1])], False),
    "uint32-counts-fit": (16, _nothing, [(i, img) for i, img in enumerate(_wide({2: 65535}))], "stacked"),
    "uint32-counts-too-large": (16, _nothing, [(i, img) for i, img in enumerate(_wide({2: 70_000, 4: 2**31}))], False),
    "uint32-into-uint32": (32, _nothing, [(i, img) for i, img in enumerate(_wide({2: 70_000}))], True),
}


@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "separate"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_run_admitted_at_once_ends_as_frame_by_frame(tmp_path, monkeypatch, case, stacked):
    bit_depth, setup, sent, at_once = CASES[case]
    runs, single, answers = _both_ways(tmp_path, monkeypatch, bit_depth, setup, _frames(sent, stacked))
    _same(runs, single)
    assert answers and (answers[0] is not None) == (at_once is True or (at_once == "stacked" and stacked)), answers


@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "separate"])
def test_a_run_of_frames_of_another_shape_is_refused_as_frame_by_frame(tmp_path, monkeypatch, stacked):
    sent = [(0, IMAGES[0]), (1, WRONG), (2, IMAGES[2])] if not stacked else [(i, WRONG) for i in range(3)]  # one array: one shape
    runs, single, answers = _both_ways(tmp_path, monkeypatch, 16, _nothing, _frames(sent, stacked))
    _same(runs, single)
    assert answers == [None] and runs["counters"] == {"malformed": 1 if not stacked else 3}


def test_a_wider_frame_too_bright_is_refused_with_its_peak(tmp_path, monkeypatch):
    runs, single, _ = _both_ways(tmp_path, monkeypatch, 16, _nothing, _frames(CASES["uint32-counts-too-large"][2], True))
    _same(runs, single)
    assert runs["received"] == [True, True, False, True, False, True]
    assert runs["errors"] == [
        ("malformed", "series 1: frame 2 has counts up to 70000, more than the session file's uint16 holds (65535)"),
        ("malformed", "series 1: frame 4 has counts up to 2147483648, more than the session file's uint16 holds (65535)"),
    ]


def _reissued_as_series_2(manager: SessionManager, sid: str) -> None:
    """Series 1 sends frames 0, 2, 4 of 6 and ends: the batch is re-issued with slots 1, 3, 5 missing, then told as series 2
    (its frames 0, 1, 2 -> slots 1, 3, 5: not consecutive)."""
    manager.on_events(EP, [*_frames([(i, IMAGES[i]) for i in (0, 2, 4)], True, t0=1.0), SeriesEnd(1)])
    manager.tell(sid, manager.try_ask(sid)["batch_id"], 2, None)
    assert manager.router.bindings[(EP, 2)].frame_to_slot == {0: 1, 1: 3, 2: 5}


@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "separate"])
@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [1, 2]], ids=["in-order", "any-order", "part"])
def test_a_run_bound_to_slots_not_consecutive_ends_as_frame_by_frame(tmp_path, monkeypatch, order, stacked):
    sent = [(i, IMAGES[[1, 3, 5][i]]) for i in order]
    runs, single, answers = _both_ways(tmp_path, monkeypatch, 16, _reissued_as_series_2, _frames(sent, stacked, series=2))
    _same(runs, single)
    assert answers[0] is not None
    slots = [[1, 3, 5][i] for i in order]
    np.testing.assert_array_equal(runs["patterns"][slots], IMAGES[slots].astype(np.float32))  # frame i of series 2 at its bound slot
    assert runs["status"] == ("complete" if len(order) == 3 else "told")
