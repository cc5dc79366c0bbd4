"""Tells that come before their series' header (arm -> tell -> trigger), with restarts of the detector or the service.

The restarted-detector rule (a header for a series number already seen begins a new run)
must not fire on the header of the run a tell has just named: that retired the binding
and re-issued a chunk whose frames then arrived (review of the restarted-detector work).
"""

from __future__ import annotations

import time

from service_testing import KEY, RecordingBackend, frames_for, session_body

from detector_stream.events import Frame, SeriesEnd, SeriesStart
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.models import SessionCreate
from service.scheduler import Scheduler
from service.settings import ServiceSettings

EP = "tcp://127.0.0.1:5011"


def manager(tmp_path) -> SessionManager:
    return SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())


def new_session(m: SessionManager, n: int = 10) -> str:
    sid = m.create(SessionCreate(**session_body(EP, budget=n, chunk=n)).model_dump(mode="json"))["session_id"]
    Scheduler(m, RecordingBackend(), m.metrics).run_round(m.take_work(0.1))
    return sid


def series(number: int, images, start: bool = True) -> list:
    return ([SeriesStart(number, "basic", {})] if start else []) + [Frame(number, i, im) for i, im in enumerate(images)] + [SeriesEnd(number)]


def test_a_tell_before_its_header_survives_a_service_restart(tmp_path):
    frames = frames_for(5, 10)
    m1 = manager(tmp_path)
    sid = new_session(m1)
    m1.try_ask(sid)
    assert m1.tell(sid, 0, 5, None)[0] == 202
    m1.flush_all()
    m2 = manager(tmp_path)
    assert m2.restore() == 1
    m2.on_events(EP, series(5, frames))
    assert m2.sessions[sid].frames_received == 10  # was 0: the restored binding counted as started, the header retired it
    m1.close()
    m2.close()


def test_a_tell_before_its_header_for_a_series_number_seen_before(tmp_path):
    m = manager(tmp_path)
    sid = new_session(m)
    m.on_events(EP, [SeriesStart(1, "basic", {}), SeriesEnd(1)])  # an earlier run's series 1: armed, aborted, never told
    m.try_ask(sid)
    assert m.tell(sid, 0, 1, None)[0] == 202
    m.on_events(EP, series(1, frames_for(1, 10)))  # the restarted detector's series 1
    assert m.sessions[sid].frames_received == 10
    m.close()


def test_a_repeated_tell_after_a_new_run_of_its_series_number_is_still_a_repeat(tmp_path):
    m = manager(tmp_path)
    sid = new_session(m)
    m.try_ask(sid)
    m.on_events(EP, series(1, frames_for(1, 10)))
    assert m.tell(sid, 0, 1, None)[0] == 202
    m.on_events(EP, [SeriesStart(1, "basic", {})])  # the detector restarted
    assert m.tell(sid, 0, 1, None)[0] == 200  # an HTTP retry: was 409 (the new run had retired the binding)
    m.close()


def test_frames_held_from_before_the_batch_was_handed_out_are_not_stored_at_its_positions(tmp_path):
    """An aborted, never-told series 1 of an earlier detector run, then a restart and a tell before the new header:
    the held frames cannot be this batch's (they came before the client had its positions); they are dropped."""
    m = manager(tmp_path)
    sid = new_session(m)
    old = frames_for(9, 10)
    m.on_events(EP, series(1, old))  # held untold
    time.sleep(0.01)
    m.try_ask(sid)
    assert m.tell(sid, 0, 1, None)[0] == 202
    s = m.sessions[sid]
    assert s.frames_received == 0 and s.counters["unexpected"] == 1
    m.on_events(EP, series(1, frames_for(1, 10)))  # the new run
    assert s.frames_received == 10
    m.close()


def test_a_conflicting_tell_is_answered_at_once_when_the_other_batch_has_no_frames(tmp_path):
    """The 2 s wait for a restarted detector's header only makes sense when the other binding's run has begun."""
    import pytest

    from service.errors import SessionError

    m = manager(tmp_path)
    a, b = new_session(m), new_session(m)
    m.try_ask(a)
    m.try_ask(b)
    assert m.tell(a, 0, 1, None)[0] == 202
    t0 = time.monotonic()
    with pytest.raises(SessionError):
        m.tell(b, 0, 1, None)
    assert time.monotonic() - t0 < 1.0
    m.close()


def test_frames_that_arrive_between_a_service_restart_and_the_re_ask_are_kept(tmp_path):
    """The first ask after a restart set the hand-out time, so the told series' frames that came before it (the client
    held the positions from before the restart) were dropped as an earlier run's (second review)."""
    m1 = manager(tmp_path)
    sid = new_session(m1)
    m1.try_ask(sid)
    m1.flush_all()
    m2 = manager(tmp_path)
    assert m2.restore() == 1
    m2.on_events(EP, series(5, frames_for(5, 10)))
    assert m2.try_ask(sid)["batch_id"] == 0  # the client re-asks: the same batch, the same positions
    assert m2.tell(sid, 0, 5, None)[0] == 202
    assert m2.sessions[sid].frames_received == 10
    m1.close()
    m2.close()
