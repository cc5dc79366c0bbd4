"""Restarts and repeated tells never lose or misplace a frame: frame i of series S is always stored at the slot bound to (S, i).

A "crash" here is a second manager opening the same storage while the first one's files
are still open and unflushed beyond the last flush (what kill -9 leaves behind).
"""

from __future__ import annotations

import numpy as np
import pytest
from service_testing import KEY, RecordingBackend, frames_for, session_body

from detector_stream.events import Frame, SeriesEnd
from service.errors import ErrorKind, SessionError
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.models import SessionCreate
from service.scheduler import Scheduler
from service.settings import ServiceSettings

EP = "tcp://127.0.0.1:5011"


def _manager(tmp_path, **settings) -> SessionManager:
    return SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY], **settings), ServiceMetrics())


def _session(manager: SessionManager, n: int = 50) -> str:
    sid = manager.create(SessionCreate(**session_body(EP, budget=n, chunk=n)).model_dump(mode="json"))["session_id"]
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(manager.take_work(0.1))
    return sid


def _told_then_restarted(tmp_path, frames: np.ndarray, first: int = 20) -> tuple[SessionManager, SessionManager, str]:
    """tell batch 0 as series 5, frames 0..first-1 arrive and are flushed, then a "kill -9" and a restart."""
    m1 = _manager(tmp_path)
    sid = _session(m1)
    assert m1.tell(sid, 0, 5, None)[0] == 202
    m1.on_events(EP, [Frame(5, i, frames[i]) for i in range(first)])
    m1.flush_all()
    m2 = _manager(tmp_path)
    assert m2.restore() == 1
    return m1, m2, sid


def _stored(tmp_path, sid: str) -> np.ndarray:
    import h5py

    with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
        return f["patterns"][()]


def test_frames_after_a_restart_complete_the_told_batch(tmp_path):
    frames = frames_for(5, 50)
    m1, m2, sid = _told_then_restarted(tmp_path, frames)
    m2.on_events(EP, [Frame(5, i, frames[i]) for i in range(20, 50)])
    s = m2.sessions[sid]
    assert s.frames_received == 50
    assert s.batches[0].status == "complete", "all 50 frames are in: the batch must go to the compute worker"
    items = m2.take_work(0.1)
    assert len(items) == 1 and items[0].job is not None
    assert m2.try_ask(sid) is None or m2.try_ask(sid)["positions_nm"] != []
    m2.flush_all()
    np.testing.assert_array_equal(_stored(tmp_path, sid), frames)
    m1.close()
    m2.close()


def test_a_repeated_tell_after_a_restart_is_idempotent_and_never_rebinds(tmp_path):
    frames = frames_for(5, 50)
    m1, m2, sid = _told_then_restarted(tmp_path, frames)
    code, body = m2.tell(sid, 0, 5, None)
    assert code == 200 and body["series"] == 5 and body["frames_received"] == 20
    m2.on_events(EP, [Frame(5, i, frames[i]) for i in range(20, 50)])
    m2.flush_all()
    np.testing.assert_array_equal(_stored(tmp_path, sid), frames)  # frame i at slot i: nothing moved
    assert m2.sessions[sid].batches[0].status == "complete"
    m1.close()
    m2.close()


def test_tell_after_the_series_ended_short_answers_and_reissues(tmp_path):
    """The series (2 frames dropped) ended before the tell: the tell is accepted and the missing positions are re-issued."""
    m = _manager(tmp_path)
    sid = _session(m, 10)
    frames = frames_for(3, 10)
    m.on_events(EP, [Frame(3, i, frames[i]) for i in range(10) if i not in (4, 7)] + [SeriesEnd(3)])
    code, body = m.tell(sid, 0, 3, None)
    assert code == 202 and body == {"batch_id": 0, "series": 3, "accepted": True, "frames_expected": 10, "frames_received": 8}
    from service.models import TellResponse

    TellResponse(**body)  # what the API validates its answer against
    ask = m.try_ask(sid)
    assert ask["batch_id"] == 0 and len(ask["positions_nm"]) == 2
    m.close()


def test_a_short_series_then_a_restart_reissues_instead_of_waiting_forever(tmp_path):
    m1 = _manager(tmp_path)
    sid = _session(m1, 10)
    frames = frames_for(3, 10)
    m1.tell(sid, 0, 3, None)
    m1.on_events(EP, [Frame(3, i, frames[i]) for i in range(8)] + [SeriesEnd(3)])
    m1.flush_all()
    m2 = _manager(tmp_path)
    m2.restore()
    ask = m2.try_ask(sid)
    assert ask is not None and ask["batch_id"] == 0 and len(ask["positions_nm"]) == 2
    assert m2.tell(sid, 0, 4, None)[0] == 202
    m2.on_events(EP, [Frame(4, 0, frames[8]), Frame(4, 1, frames[9])])
    assert m2.sessions[sid].batches[0].status == "complete"
    m2.flush_all()
    np.testing.assert_array_equal(_stored(tmp_path, sid), frames)
    m1.close()
    m2.close()


def test_a_frame_refused_for_its_shape_before_the_tell_does_not_block_a_valid_resend(tmp_path):
    m = _manager(tmp_path)
    sid = _session(m, 3)
    frames = frames_for(2, 3)
    wrong = np.zeros((8, 8), np.uint16)
    m.on_events(EP, [Frame(2, 0, frames[0]), Frame(2, 1, wrong), Frame(2, 1, frames[1]), Frame(2, 2, frames[2])])
    m.tell(sid, 0, 2, None)
    s = m.sessions[sid]
    assert s.frames_received == 3 and s.counters["malformed"] == 1 and s.counters["duplicated"] == 0
    m.close()


def test_a_told_batch_whose_last_frames_died_with_the_old_process_is_reissued(tmp_path):
    """frames 20-49 and the series end reached the killed process only: after resume_told_timeout_s the 30 positions are re-issued."""
    import time

    frames = frames_for(5, 50)
    m1, m2, sid = _told_then_restarted(tmp_path, frames)
    m2.settings.resume_told_timeout_s = 0.05
    m2.sessions[sid].batches[0].stall_deadline = time.monotonic() + 0.05
    assert m2.try_ask(sid) is None and m2.reissue_stalled() == 0
    time.sleep(0.1)
    assert m2.reissue_stalled() == 1
    ask = m2.try_ask(sid)
    assert ask["batch_id"] == 0 and len(ask["positions_nm"]) == 30
    assert m2.tell(sid, 0, 5, None)[0] == 200, "the old tell repeated: idempotent, nothing re-bound"
    assert m2.try_ask(sid)["positions_nm"] == ask["positions_nm"]
    assert m2.tell(sid, 0, 6, None)[0] == 202
    m2.on_events(EP, [Frame(5, 25, frames[25])])  # a late frame of the ended series: refused, not stored over series 6's slot
    m2.on_events(EP, [Frame(6, i, frames[20 + i]) for i in range(30)])
    assert m2.sessions[sid].batches[0].status == "complete"
    m2.flush_all()
    np.testing.assert_array_equal(_stored(tmp_path, sid), frames)
    m1.close()
    m2.close()


def test_a_repeated_tell_reaching_a_finished_session_is_200_also_after_a_restart(tmp_path):
    m = _manager(tmp_path)
    sid = _session(m, 4)
    m.tell(sid, 0, 9, None)
    m.on_events(EP, [Frame(9, i, img) for i, img in enumerate(frames_for(9, 4))])
    Scheduler(m, RecordingBackend(), m.metrics).run_round(m.take_work(0.1))
    assert m.get(sid).state == "done"
    assert m.tell(sid, 0, 9, None) == (200, {"batch_id": 0, "series": 9, "accepted": True, "frames_expected": 4, "frames_received": 4})
    m.close()
    m2 = _manager(tmp_path)
    m2.restore()
    assert m2.tell(sid, 0, 9, None)[0] == 200
    with pytest.raises(SessionError) as refused:
        m2.tell(sid, 0, 10, None)  # not a repeat
    assert refused.value.kind == ErrorKind.WRONG_STATE
    m2.close()


def test_a_session_file_with_damaged_params_is_a_load_error_not_a_failed_start(tmp_path):
    """A file that opens but whose stored request lacks a field (one in progress, one stopped) is reported like any damaged
    file (``load_errors``, readiness); the other files still load and the service still starts."""
    import json

    import h5py

    m1 = _manager(tmp_path)
    good, running, stopped = _session(m1, 4), _session(m1, 4), _session(m1, 4)
    m1.delete(stopped)
    m1.close()
    for sid in (running, stopped):
        with h5py.File(tmp_path / f"{sid}.h5", "a") as f:
            params = json.loads(f.attrs["session_params"])
            del params["budget"]
            f.attrs["session_params"] = json.dumps(params)
    m2 = _manager(tmp_path)
    assert m2.restore() == 1
    assert set(m2.sessions) == {good} and not m2.finished
    assert sorted(len([e for e in m2.load_errors if sid in e]) for sid in (running, stopped)) == [1, 1], m2.load_errors
    m2.close()
    with h5py.File(tmp_path / f"{running}.h5", "w"):  # the damaged file was closed again (h5py refuses to truncate an open file)
        pass


def _bound_as_stored(tmp_path, sid: str) -> list[bool]:
    """Per slot: the file's pattern is frame (S, i) of the series and index the slot is recorded as bound to."""
    import h5py

    with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
        series, frame, patterns = f["slot_series"][()], f["slot_frame"][()], f["patterns"][()]
    return [bool(np.array_equal(patterns[k], frames_for(int(series[k]), 10)[int(frame[k])])) for k in range(len(series))]


def _series_3_ends_short_with_6_7_unflushed(manager: SessionManager, sid: str) -> np.ndarray:
    """Series 3 is told for the 10-slot batch; frames 0-5 are flushed, 6 and 7 received but not (lost with the process),
    and the series ends short (slots 8, 9 re-issued). Returns series 3's frames."""
    f3 = frames_for(3, 10)
    manager.tell(sid, 0, 3, None)
    manager.on_events(EP, [Frame(3, i, f3[i]) for i in range(6)])
    manager.flush_all()
    manager.on_events(EP, [Frame(3, 6, f3[6]), Frame(3, 7, f3[7]), SeriesEnd(3)])
    return f3


def _series_fills_the_reissued_slots(tmp_path, manager: SessionManager, sid: str, series: int) -> None:
    """Frames 0-3 of ``series`` (told for the re-issued slots 6-9) complete the batch, and every stored slot holds the
    frame its record names."""
    frames = frames_for(series, 10)
    manager.on_events(EP, [Frame(series, i, frames[i]) for i in range(4)])
    assert manager.sessions[sid].batches[0].status == "complete"
    manager.flush_all()
    assert _bound_as_stored(tmp_path, sid) == [True] * 10


def test_a_slot_asked_for_again_after_a_restart_is_bound_to_the_new_series_only(tmp_path):
    """Series 3 ended short (slots 8, 9 re-issued) and the process died before frames 6, 7 were flushed: after the restart
    the batch asks for 6-9 and series 4 is told for them. A late frame 6 of series 3 must not land in slot 6, which now
    holds frame 0 of series 4 (the kill -9 property run stored frames under another series' record this way)."""
    m1 = _manager(tmp_path)
    sid = _session(m1, 10)
    f3 = _series_3_ends_short_with_6_7_unflushed(m1, sid)
    m2 = _manager(tmp_path)
    m2.restore()
    ask = m2.try_ask(sid)
    assert ask["batch_id"] == 0 and len(ask["positions_nm"]) == 4
    assert m2.tell(sid, 0, 4, None)[0] == 202
    m2.on_events(EP, [Frame(3, 6, f3[6])])  # a late frame of the ended series
    s = m2.sessions[sid]
    assert not s.received[6] and s.counters["unexpected"] == 1, "slot 6 is series 4's now"
    _series_fills_the_reissued_slots(tmp_path, m2, sid, 4)
    m1.close()
    m2.close()


def test_a_series_told_before_a_restart_for_part_of_an_issued_batch_keeps_no_slot_it_may_lose(tmp_path):
    """Series 4 was told for slots 8, 9 after series 3 ended short; the process died with frames 6, 7 (series 3) and 8 (series 4)
    unflushed. After the restart the batch is issued again (6-9) and series 5 is told for what is missing: a frame of series 4
    arriving later must not land in a slot series 5 was told for."""
    m1 = _manager(tmp_path)
    sid = _session(m1, 10)
    _series_3_ends_short_with_6_7_unflushed(m1, sid)
    f4 = frames_for(4, 10)
    assert m1.tell(sid, 0, 4, None)[0] == 202
    m1.on_events(EP, [Frame(4, 0, f4[0])])
    m2 = _manager(tmp_path)
    m2.restore()
    assert m2.tell(sid, 0, 4, None)[0] == 200, "a repeated tell after a restart"
    ask = m2.try_ask(sid)
    assert ask["batch_id"] == 0 and len(ask["positions_nm"]) == 4
    assert m2.tell(sid, 0, 5, None)[0] == 202
    m2.on_events(EP, [Frame(4, 0, f4[0]), Frame(4, 1, f4[1])])  # series 4 goes on after the restart
    s = m2.sessions[sid]
    assert not s.received[6:].any()
    _series_fills_the_reissued_slots(tmp_path, m2, sid, 5)
    m1.close()
    m2.close()
