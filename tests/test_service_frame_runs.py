"""Runs of frames of one series stored in one go (``StreamHandling._store_run``): same outcome as frame by frame, right slots."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from service_testing import KEY, RecordingBackend, frames_for, session_body

from detector_stream.events import Frame, FrameRun, SeriesEnd, SeriesStart, StreamError, as_frames
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.routing import frame_runs
from service.scheduler import Scheduler
from service.settings import ServiceSettings

EP = "tcp://127.0.0.1:5001"
EP2 = "tcp://127.0.0.1:5002"


def _manager(tmp_path) -> SessionManager:
    return SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())


def _told(manager: SessionManager, n: int, ep: str = EP, series: int = 1, **extra) -> str:
    """A session of budget and chunk ``n`` on ``ep`` whose first batch is told as ``series`` (``extra``: more of its parameters)."""
    body = session_body(ep, budget=n, chunk=n) | {"energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0} | extra
    sid = manager.create(body)["session_id"]
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(manager.take_work(0.1))
    manager.tell(sid, manager.try_ask(sid)["batch_id"], series, None)
    return sid


def _state(manager: SessionManager, sid: str) -> dict:
    s = manager.sessions[sid]
    b = s.batches[0]
    return {
        "received": s.received.tolist(),
        "patterns": s.patterns[: len(s.received)].copy(),
        "frames_received": s.frames_received,
        "counters": {k: v for k, v in s.counters.items() if v},
        "status": str(b.status),
        "arrivals": (b.first_arrival, b.last_arrival),
        "last_frame_at": s.last_frame_at,
        "state": str(s.state),
    }


def _both_ways(tmp_path, monkeypatch, n: int, events: list) -> tuple[dict, dict]:
    """The session after ``events`` in one drained batch: (run path, frame-by-frame path)."""
    out = []
    for name, runs in (("runs", True), ("single", False)):
        manager = _manager(tmp_path / name)
        sid = _told(manager, n)
        if not runs:
            monkeypatch.setattr(manager, "_store_run", lambda *_a: False)
        manager.on_events(EP, events)
        out.append(_state(manager, sid))
        manager.close()
    return out[0], out[1]


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k])
        else:
            assert a[k] == b[k], k


def test_frame_runs_groups_consecutive_frames_of_one_series():
    img = np.zeros((2, 2), np.uint16)
    f = [Frame(1, i, img) for i in range(3)]
    g = [Frame(2, i, img) for i in range(2)]
    start, end, err = SeriesStart(1, "basic", {}), SeriesEnd(1), StreamError("x", 1, 0)
    assert frame_runs([start, *f, err, f[0], *g, end]) == [start, f, err, f[0], g, end]
    assert frame_runs([]) == []
    assert frame_runs([f[0]]) == [f[0]]


def test_a_run_lands_every_frame_at_its_slot_in_any_order(tmp_path, monkeypatch):
    images = frames_for(1, 6)
    order = [3, 0, 5, 1, 4, 2]
    events = [Frame(1, i, images[i], received_at=100.0 + 0.001 * k) for k, i in enumerate(order)]
    runs, single = _both_ways(tmp_path, monkeypatch, 6, events)
    _same(runs, single)
    assert runs["received"] == [True] * 6 and runs["frames_received"] == 6
    np.testing.assert_array_equal(runs["patterns"], images.astype(np.float32))  # frame i in slot i, whatever the order
    assert runs["status"] == "complete" and runs["state"] == "reconstructing"
    assert runs["arrivals"] == (100.0, 100.005) and runs["last_frame_at"] == 100.005


def test_a_run_refuses_what_frame_by_frame_refuses(tmp_path, monkeypatch):
    images = frames_for(1, 5)
    wrong = np.zeros((8, 8), np.uint16)
    sent = [(0, images[0]), (1, wrong), (2, images[2]), (2, images[1]), (9, images[3]), (1, images[1])]
    events = [Frame(1, i, img, received_at=50.0 + k) for k, (i, img) in enumerate(sent)]
    runs, single = _both_ways(tmp_path, monkeypatch, 5, events)
    _same(runs, single)
    assert runs["received"] == [True, True, True, False, False]
    np.testing.assert_array_equal(runs["patterns"][:3], images[:3].astype(np.float32))  # the duplicate of 2 did not replace it
    assert runs["counters"] == {"malformed": 1, "duplicated": 1, "unexpected": 1}
    assert runs["status"] == "told"


def test_a_run_is_queued_for_the_session_file(tmp_path):
    manager = _manager(tmp_path)
    sid = _told(manager, 4)
    images = frames_for(1, 4)
    manager.on_events(EP, [Frame(1, i, images[i]) for i in range(4)])
    s = manager.sessions[sid]
    s.flush_frames()
    import h5py

    with h5py.File(s.store.path, "r") as f:
        np.testing.assert_array_equal(f["patterns"][:4], images)
        assert f["received"][:4].tolist() == [1, 1, 1, 1]
    manager.close()


def test_runs_of_two_detectors_stay_in_their_own_sessions(tmp_path):
    manager = _manager(tmp_path)
    a, b = _told(manager, 3, EP), _told(manager, 3, EP2)
    manager.on_events(EP, [Frame(1, i, img) for i, img in enumerate(frames_for(1, 3))])
    manager.on_events(EP2, [Frame(1, i, img) for i, img in enumerate(frames_for(7, 3))])
    np.testing.assert_array_equal(manager.sessions[a].patterns[:3], frames_for(1, 3).astype(np.float32))
    np.testing.assert_array_equal(manager.sessions[b].patterns[:3], frames_for(7, 3).astype(np.float32))
    manager.close()


def test_a_run_of_an_untold_series_is_held_for_its_tell(tmp_path):
    manager = _manager(tmp_path)
    sid = _told(manager, 3, series=1)
    manager.on_events(EP, [Frame(2, i, img) for i, img in enumerate(frames_for(2, 3))])  # series 2: not told
    assert manager.sessions[sid].frames_received == 0
    assert manager.router.buffered_frames == 3
    manager.close()


def test_a_run_whose_checks_raise_goes_frame_by_frame(tmp_path, monkeypatch):
    """A bug while checking one frame of a run costs that frame only, and is raised after the batch (for the receiver to count)."""
    manager = _manager(tmp_path)
    sid = _told(manager, 3)
    admit = manager.router.admit

    def failing_on_frame_1(key, idx, *rest):
        if idx == 1:
            raise RuntimeError("admit bug")
        return admit(key, idx, *rest)

    monkeypatch.setattr(manager.router, "admit", failing_on_frame_1)
    monkeypatch.setattr(manager.router, "admit_run", lambda *_a: None)  # not the common case: admit of each frame
    with pytest.raises(RuntimeError, match="admit bug"):
        manager.on_events(EP, [Frame(1, i, img) for i, img in enumerate(frames_for(1, 3))])
    assert manager.sessions[sid].received.tolist() == [True, False, True]
    manager.close()


def test_a_run_whose_checks_at_once_raise_goes_frame_by_frame(tmp_path, monkeypatch):
    """A bug in admitting a run at once (``admit_run``) costs nothing: its frames are admitted one by one."""
    manager = _manager(tmp_path)
    sid = _told(manager, 3)

    def failing(*_a):
        raise RuntimeError("admit_run bug")

    monkeypatch.setattr(manager.router, "admit_run", failing)
    manager.on_events(EP, [Frame(1, i, img) for i, img in enumerate(frames_for(1, 3))])
    assert manager.sessions[sid].received.tolist() == [True, True, True]
    manager.close()


def test_a_flush_in_pieces_writes_every_frame_to_its_row(tmp_path, monkeypatch):
    """Frames that go through HDF5 are staged for the file in pieces of WRITE_ROWS through one reused buffer: each lands in its
    own row."""
    import h5py

    from service import row_writer

    monkeypatch.setattr(row_writer, "WRITE_ROWS", 3)
    monkeypatch.setattr(row_writer.PatternRows, "write_in_place", lambda _self, _pending, slots: slots)  # all through HDF5
    manager = _manager(tmp_path)
    sid = _told(manager, 8)
    images = frames_for(1, 8)
    manager.on_events(EP, [Frame(1, i, images[i]) for i in (0, 1, 2, 3, 4, 6, 7)])  # slot 5 missing: two runs of slots
    s = manager.sessions[sid]
    s.flush_frames()
    manager.on_events(EP, [Frame(1, 5, images[5])])
    s.flush_frames()
    with h5py.File(s.store.path, "r") as f:
        np.testing.assert_array_equal(f["patterns"][:8], images)
        assert f["received"][:8].tolist() == [1] * 8
    manager.close()


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4, 5], [3, 0, 5, 1, 4, 2], [0, 1, 1, 2, 9, 3]], ids=["in-order", "any-order", "refusals"])
def test_frames_decoded_back_to_back_store_as_frame_by_frame(tmp_path, monkeypatch, order):
    """Frames that are rows of one decoded array (``Frame.stack``, the compiled receive loop's) take the one-copy path where
    their slots are consecutive, and end exactly as frame by frame: rows, refusals, arrivals, the file."""
    images = frames_for(1, 10)
    images[2, 0, 0] = np.iinfo(np.uint16).max  # a pixel at the largest count: learned as invalid from the stack too
    rows = np.stack([images[i] for i in order])
    events = [Frame(1, i, rows[k], received_at=10.0 + k, stack=(rows, k)) for k, i in enumerate(order)]
    runs, single = _both_ways(tmp_path, monkeypatch, 6, events)
    _same(runs, single)
    assert runs["frames_received"] == len({i for i in order if i < 6})
    manager = _manager(tmp_path / "file")
    sid = _told(manager, 6)
    manager.on_events(EP, events)
    s = manager.sessions[sid]
    s.flush_frames()
    assert s.detector_mask.flags[0, 0] != 0
    import h5py

    with h5py.File(s.store.path, "r") as f:
        got = f["received"][:6].astype(bool)
        np.testing.assert_array_equal(f["patterns"][:6][got], images[:6][got])
    manager.close()


def test_session_memory_holds_the_frames_as_the_file_does(tmp_path):
    """Session memory is in the file's pixel type (uint16 here): the ingest copies, the compute worker converts to float32,
    and a restart reads back exactly what was in memory."""
    manager = _manager(tmp_path)
    sid = _told(manager, 4, detector_bit_depth=16)
    images = frames_for(1, 4)
    manager.on_events(EP, [Frame(1, i, images[i]) for i in range(4)])
    s = manager.sessions[sid]
    assert s.patterns.dtype == s.pixel_dtype == np.uint16
    np.testing.assert_array_equal(s.patterns[:4], images)
    s.flush_frames()
    import h5py

    with h5py.File(s.store.path, "r") as f:
        np.testing.assert_array_equal(f["patterns"][:4], s.patterns[:4])
    manager.close()
    from service.compute import counts_as_float

    floats = counts_as_float(s.patterns[:4])
    assert floats.dtype.is_floating_point and floats.numpy().dtype == np.float32 and np.array_equal(floats.numpy(), images)


def test_frames_that_are_not_unsigned_counts_are_refused_not_cast(tmp_path):
    """A float frame (NaN, -1.0) would be cast blindly into the session's unsigned memory (-1.0 reads as a mark): refused as
    malformed, alone and within a run; the unsigned frames of the run are stored."""
    manager = _manager(tmp_path)
    sid = _told(manager, 4, detector_bit_depth=16)
    good = frames_for(1, 4)
    bad = np.full((16, 16), -1.0, np.float32)
    manager.on_events(EP, [Frame(1, 0, good[0]), Frame(1, 1, bad), Frame(1, 2, good[2])])
    manager.on_events(EP, [Frame(1, 3, good[3].astype(np.int32))])
    s = manager.sessions[sid]
    assert s.received[:4].tolist() == [True, False, True, False]
    assert s.counters["malformed"] == 2
    np.testing.assert_array_equal(s.patterns[[0, 2]], good[[0, 2]])
    manager.close()


def test_measured_frames_are_copied_in_the_files_pixel_type(tmp_path):
    """The copy made under the manager's lock for a probe job stays in the pixel type (the job converts it to float32)."""
    manager = _manager(tmp_path)
    sid = _told(manager, 4, detector_bit_depth=16)
    images = frames_for(1, 4)
    manager.on_events(EP, [Frame(1, i, images[i]) for i in range(4)])
    patterns, positions = manager.sessions[sid].measured_frames()
    assert patterns.dtype == np.uint16 and positions.shape == (4, 2)
    np.testing.assert_array_equal(patterns, images)
    assert not np.shares_memory(patterns, manager.sessions[sid].patterns)
    manager.close()


def _frame_run(series: int, first: int, images: np.ndarray, t0: float = 10.0) -> FrameRun:
    """Frames ``first``... of ``series`` as the compiled loop's decoder gives them (``StreamDecoder(runs=True)``)."""
    n = len(images)
    return FrameRun(series, first, np.ascontiguousarray(images), [(None, None, None)] * n, [t0 + k for k in range(n)], [None] * n, [None] * n)



@pytest.mark.parametrize(
    "case", ["whole", "past-the-batch", "a-slot-filled-before", "wider-type-that-fits", "wider-type-that-does-not", "untold-series"]
)
def test_a_frame_run_ends_exactly_as_its_frames_one_by_one(tmp_path, monkeypatch, case):
    """A ``FrameRun`` (the service's receiver asks for them) is stored whole when every frame is certain to be admitted, else it
    goes as its frames: either way the session, its counters and its file end as with its frames one by one."""
    images = frames_for(1, 8)
    before, run = [], _frame_run(1, 0, images[:6])
    if case == "past-the-batch":
        run = _frame_run(1, 3, images[3:8])  # frames 6 and 7 are not in the batch: "unexpected"
    elif case == "a-slot-filled-before":
        before = [Frame(1, 2, images[2], received_at=1.0)]
    elif case.startswith("wider-type"):
        wide = images[:6].astype(np.uint32)
        if case == "wider-type-that-does-not":
            wide[1, 0, 0] = 70_000  # above uint16: frame 1 is refused
        run = _frame_run(1, 0, wide)
    elif case == "untold-series":
        run = _frame_run(2, 0, images[:6])
    out = []
    for name, runs in (("runs", True), ("single", False)):
        manager = _manager(tmp_path / name)
        sid = _told(manager, 6, detector_bit_depth=16)
        manager.on_events(EP, before)
        if not runs:
            monkeypatch.setattr(manager, "_store_run", lambda *_a: False)
        elif case in ("whole", "wider-type-that-fits"):  # stored whole: its frames are never made
            monkeypatch.setattr(FrameRun, "frames", lambda _self: pytest.fail("a run admitted whole was expanded"))
        manager.on_events(EP, [run] if runs else as_frames([run]))
        monkeypatch.undo()
        s = manager.sessions[sid]
        s.flush_frames()
        with h5py.File(s.store.path, "r") as f:
            out.append((_state(manager, sid), f["patterns"][:6].copy(), f["received"][:6].copy(), manager.router.buffered_frames))
        manager.close()
    (runs_state, *runs_file), (single_state, *single_file) = out
    _same(runs_state, single_state)
    for a, b in zip(runs_file, single_file, strict=True):
        np.testing.assert_array_equal(a, b)
    received = runs_state["received"]
    expected = {
        "whole": [True] * 6, "past-the-batch": [False] * 3 + [True] * 3, "a-slot-filled-before": [True] * 6,
        "wider-type-that-fits": [True] * 6, "wider-type-that-does-not": [True, False] + [True] * 4, "untold-series": [False] * 6,
    }[case]
    assert received == expected
    assert runs_state["counters"] == {
        "past-the-batch": {"unexpected": 2}, "a-slot-filled-before": {"duplicated": 1}, "wider-type-that-does-not": {"malformed": 1}
    }.get(case, {})
    assert (out[0][3] == 6) == (case == "untold-series")  # held for the tell of series 2
    np.testing.assert_array_equal(runs_state["patterns"][np.array(received)], images[:6][np.array(received)])


def test_frame_runs_leaves_a_frame_run_as_one_item():
    img = np.zeros((2, 2), np.uint16)
    f = [Frame(1, i, img) for i in range(2)]
    run = _frame_run(1, 2, np.zeros((3, 2, 2), np.uint16))
    assert frame_runs([*f, run, Frame(1, 5, img)]) == [f, run, Frame(1, 5, img)]
    assert run != _frame_run(1, 2, np.zeros((3, 2, 2), np.uint16))  # another run of the same pixels: compared without raising


def test_a_second_frame_for_a_slot_is_a_duplicate_whatever_else_is_wrong_with_it(tmp_path, monkeypatch):
    """Frame by frame, a frame for a filled slot is refused as duplicated before its shape or counts are looked at: so within
    a run too, where the first frame for that slot is not yet in the session when the second is checked."""
    images = frames_for(1, 4)
    wrong_shape = np.zeros((8, 8), np.uint16)
    too_high = images[1].astype(np.uint32)
    too_high[3, 3] = 70_000  # more than the file's uint16 holds
    sent = [(0, images[0]), (0, wrong_shape), (1, images[1]), (1, too_high), (2, images[2])]
    events = [Frame(1, i, img, received_at=20.0 + k) for k, (i, img) in enumerate(sent)]
    runs, single = _both_ways(tmp_path, monkeypatch, 4, events)
    assert single["counters"] == {"duplicated": 2}
    _same(runs, single)


def _observed(manager: SessionManager, sids: list[str]) -> dict:
    """What a run and its frames one by one must leave the same: each session's frames, counters and batch (in progress or
    ended), the buffer, the endpoint's counts and the ingest metrics."""
    out: dict = {}
    for sid in sids:
        s = manager.get(sid)
        status = s.status()
        out[sid[:0] + str(sids.index(sid))] = (
            str(status["state"]), status["frames_received"], status["stream_errors"], [(e["kind"], e["detail"]) for e in status["recent_errors"]],
            None if getattr(s, "received", None) is None else s.received.tolist(),
        )
    out["buffer"] = {k: (v.count, sorted(v.frames), v.errors, v.ended) for k, v in manager.router.buffer.items()}
    out["endpoint"] = manager.router.endpoint_errors
    out["metrics"] = sorted(
        (sample.name, tuple(sorted(sample.labels.items())), sample.value) for family in manager.metrics.registry.collect() for sample in family.samples
        if family.name.startswith("ptychoscan_ingest") and "duration" not in family.name and not sample.name.endswith("_created")
    )
    return out


@pytest.mark.parametrize("case", ["late-frames-of-an-ended-session", "restarted-in-the-drain", "checks-at-once-raise"])
def test_a_frame_run_is_refused_or_held_exactly_as_its_frames(tmp_path, monkeypatch, case):
    """The refusals a ``FrameRun`` can meet besides a frame's own checks: a series retired from an ended session (its frames are
    late ones, charged to it), a header of its series earlier in the same drain (a restarted detector: the frames wait for a
    new tell), a bug in admitting it at once (then frame by frame, nothing lost)."""
    images = frames_for(1, 6)
    drain = [_frame_run(1, 0, images[:4])]
    if case == "restarted-in-the-drain":
        drain = [_frame_run(1, 0, images[:2]), SeriesStart(1, "basic", {}), _frame_run(1, 0, images[:3])]
    out = []
    for name, runs in (("runs", True), ("single", False)):
        manager = _manager(tmp_path / name)
        sid = _told(manager, 6)
        if case == "late-frames-of-an-ended-session":
            manager.delete(sid)
        if case == "checks-at-once-raise":
            monkeypatch.setattr(manager.router, "admit_run", lambda *_a: (_ for _ in ()).throw(RuntimeError("admit_run bug")))
        if not runs:
            monkeypatch.setattr(manager, "_store_run", lambda *_a: False)
        manager.on_events(EP, drain if runs else as_frames(drain))
        monkeypatch.undo()
        out.append(_observed(manager, [sid]))
        manager.close()
    assert out[0] == out[1]
    state, frames_received, errors, _, received = out[0]["0"]
    if case == "late-frames-of-an-ended-session":
        assert (state, frames_received, errors) == ("stopped", 0, {"unexpected": 4})
    elif case == "restarted-in-the-drain":  # the first run's frames stored, the new run's held for its own tell
        assert received == [True, True] + [False] * 4 and out[0]["buffer"][(EP, 1)][0] == 3 and errors == {"reissued": 1}
    else:
        assert received == [True] * 4 + [False] * 2 and errors == {}


def test_a_frame_run_puts_the_detectors_blobs_in_a_compressed_file_as_its_frames_do(tmp_path, monkeypatch):
    """With ``compressed_patterns`` the file takes a run's blobs (the compiled loop keeps them): stored whole, the run gives the
    file exactly what its frames one by one give, row for row."""
    from detector_stream.codec import encode_frames

    images = frames_for(1, 8, k=64)  # 64x64 uint16: whole 8192-byte blocks, chunks written as the detector's blobs
    blobs = encode_frames(images, "bs16-lz4<")
    runs = [_frame_run(1, 0, images[:5]), _frame_run(1, 5, images[5:])]
    for run, first in zip(runs, (0, 5), strict=True):
        run.blobs = blobs[first : first + len(run)]
    files = []
    for name, whole in (("runs", True), ("single", False)):
        manager = SessionManager(ServiceSettings(storage=tmp_path / name, api_keys=[KEY], compressed_patterns=True), ServiceMetrics())
        sid = _told(manager, 8, detector_pixels=64, detector_bit_depth=16)
        if not whole:
            monkeypatch.setattr(manager, "_store_run", lambda *_a: False)
        else:
            monkeypatch.setattr(FrameRun, "frames", lambda _self: pytest.fail("a run admitted whole was expanded"))
        manager.on_events(EP, runs if whole else as_frames(runs))
        monkeypatch.undo()
        s = manager.sessions[sid]
        s.flush_frames()
        with h5py.File(s.store.path, "r") as f:
            files.append((f["patterns"][:8].copy(), f["received"][:8].copy()))
        manager.close()
    for a, b in zip(*files, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(files[0][0], images)
