"""An ended session's series bindings are dropped: memory stays bounded, its series numbers are free for a later session
on the same detector endpoint, and a late frame of one of its series is discarded, never stored against another session.

Before, the bindings of every finished session stayed (one per series, frame -> slot maps included), and a later
session telling a series number the detector had used for a finished one had to wait 2 s for its header, then got 409.
"""

from __future__ import annotations

import time

import numpy as np
from service_testing import KEY, RecordingBackend, frames_for, session_body

from detector_stream.errors import StreamErrorKind
from detector_stream.events import Frame, SeriesEnd, SeriesStart, StreamError
from service import routing
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.models import SessionCreate
from service.scheduler import Scheduler
from service.settings import ServiceSettings

EP = "tcp://127.0.0.1:5012"
N = 4


def manager(tmp_path) -> SessionManager:
    return SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())


def new_session(m: SessionManager) -> str:
    """A session of one chunk of ``N`` positions, its batch planned and handed out."""
    sid = m.create(SessionCreate(**session_body(EP, budget=N, chunk=N)).model_dump(mode="json"))["session_id"]
    Scheduler(m, RecordingBackend(), m.metrics).run_round(m.take_work(0.1))
    assert m.try_ask(sid)["batch_id"] == 0
    return sid


def series(number: int, images) -> list:
    return [SeriesStart(number, "basic", {})] + [Frame(number, i, im) for i, im in enumerate(images)] + [SeriesEnd(number)]


def finish(m: SessionManager, sid: str) -> None:
    """Reconstruct until session ``sid`` is done and released."""
    scheduler = Scheduler(m, RecordingBackend(), m.metrics)
    for _ in range(20):
        if sid in m.finished:
            return
        scheduler.run_round(m.take_work(0.1))
    raise AssertionError(f"session {sid} did not finish")


def test_bindings_do_not_grow_over_many_sessions(tmp_path, monkeypatch):
    monkeypatch.setattr(routing, "MAX_RETIRED_SERIES", 3, raising=False)
    m = manager(tmp_path)
    for number in range(1, 9):
        sid = new_session(m)
        assert m.tell(sid, 0, number, None)[0] == 202
        if number % 2:
            m.on_events(EP, series(number, frames_for(number, N)))
            finish(m, sid)
            assert m.finished[sid].state == "done"
        else:
            m.delete(sid)  # stopped mid-batch
        assert m.router.bindings == {}
        assert m.router.started == set()
    assert list(m.router.retired[EP]) == [6, 7, 8]  # the oldest retired series forgotten first
    m.close()


def test_a_finished_sessions_series_number_is_free_for_a_tell_before_its_header(tmp_path):
    m = manager(tmp_path)
    first = new_session(m)
    assert m.tell(first, 0, 1, None)[0] == 202
    m.on_events(EP, series(1, frames_for(1, N)))
    finish(m, first)
    second = new_session(m)  # the detector restarted: it numbers its series from 1 again
    t0 = time.monotonic()
    assert m.tell(second, 0, 1, None)[0] == 202  # was: a 2 s wait for a header, then 409 (series taken)
    assert time.monotonic() - t0 < 1.0
    mine = frames_for(501, N)
    m.on_events(EP, series(1, mine))
    s = m.sessions[second]
    assert s.frames_received == N
    np.testing.assert_array_equal(np.asarray(s.patterns)[:N], mine)
    m.close()


def test_late_frames_of_a_finished_sessions_series_are_stored_nowhere(tmp_path):
    m = manager(tmp_path)
    first = new_session(m)
    assert m.tell(first, 0, 1, None)[0] == 202
    old = frames_for(1, N)
    m.on_events(EP, series(1, old[:2]))  # the series ends short: its batch goes back to issued
    m.delete(first)
    second = new_session(m)
    assert m.tell(second, 0, 1, None)[0] == 202  # before the new run's header
    m.on_events(EP, [Frame(1, 2, old[2]), Frame(1, 3, old[3]), SeriesEnd(1)])  # late frames (a run of them) and end of the old run
    m.on_events(EP, [Frame(1, 0, old[0])])
    s = m.sessions[second]
    assert s.frames_received == 0 and m.buffered_frames == 0
    assert s.counters.get("reissued", 0) == 0  # the old run's end did not cut the new tell short
    assert m.finished[first].summary["stream_errors"]["unexpected"] == 3
    mine = frames_for(501, N)
    m.on_events(EP, series(1, mine))  # the new run: its header ends the retirement
    assert s.frames_received == N
    np.testing.assert_array_equal(np.asarray(s.patterns)[:N], mine)
    m.close()


def test_late_frames_of_a_retired_series_are_not_held_for_a_later_tell(tmp_path):
    m = manager(tmp_path)
    first = new_session(m)
    assert m.tell(first, 0, 2, None)[0] == 202
    old = frames_for(2, N)
    m.on_events(EP, series(2, old[:1]))
    m.delete(first)
    m.on_events(EP, [Frame(2, 1, old[1])])  # late, before any new session told the series
    assert m.buffered_frames == 0
    second = new_session(m)
    assert m.tell(second, 0, 2, None)[0] == 202
    assert m.sessions[second].frames_received == 0
    m.close()


def test_a_stream_error_of_a_retired_series_is_charged_to_the_ended_session_not_a_later_tell(tmp_path):
    m = manager(tmp_path)
    first = new_session(m)
    assert m.tell(first, 0, 3, None)[0] == 202
    m.on_events(EP, series(3, frames_for(3, N))[:-2])  # header and all but the last frame, no end
    m.delete(first)
    m.on_events(EP, [StreamError("series 3: frame 3 truncated", 3, 3, kind=StreamErrorKind.TRUNCATED)])  # the last frame, late and broken
    second = new_session(m)
    assert m.tell(second, 0, 3, None)[0] == 202
    assert m.sessions[second].counters["truncated"] == 0  # was held for the series' next tell
    assert m.finished[first].summary["stream_errors"] == {"truncated": 1}
    m.close()
