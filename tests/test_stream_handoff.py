"""The receive thread hands each compiled-loop drain to a worker that decodes it and calls back, in order, with backpressure."""

from __future__ import annotations

import threading
import time

import pytest
from service_testing import frames_for, wait_until

from detector_stream.events import Frame, SeriesEnd
from detector_stream.handoff import OrderedHandoff
from detector_stream.native import build
from detector_stream.receiver import StreamReceiver


def test_jobs_run_in_order_and_stop_runs_what_is_queued():
    done, gate = [], threading.Event()
    h = OrderedHandoff("test-handoff", depth=100)
    h.start()
    h.submit(lambda: gate.wait(5), threading.Event())
    for i in range(50):
        assert h.submit(lambda i=i: done.append(i), threading.Event())
    gate.set()
    assert h.stop(5.0) and done == list(range(50)) and not h.alive


def test_a_full_queue_holds_the_giver_back_until_stopped():
    gate, stop = threading.Event(), threading.Event()
    h = OrderedHandoff("test-handoff", depth=1)
    h.start()
    h.submit(lambda: gate.wait(5), stop)  # running
    h.submit(lambda: None, stop)  # waiting: the queue is full now
    t0 = time.monotonic()
    threading.Timer(0.3, stop.set).start()
    assert not h.submit(lambda: None, stop)  # held back, then given up once stopping
    assert time.monotonic() - t0 >= 0.25
    gate.set()
    assert h.wait_idle(5.0) and h.stop(5.0)


def test_a_raising_job_is_counted_and_the_worker_goes_on():
    done = []
    h = OrderedHandoff("test-handoff")
    h.start()
    h.submit(lambda: 1 / 0, threading.Event())
    h.submit(lambda: done.append(1), threading.Event())
    assert h.wait_idle(5.0) and done == [1] and h.failures == 1
    h.stop()


@pytest.fixture
def compiled():
    try:
        build.load_library()
    except build.NativeUnavailable as err:
        pytest.skip(f"compiled receive loop unavailable: {err}")


def test_under_a_backlog_the_receive_thread_goes_on_while_the_callback_runs(pushers, compiled):
    """A full drain (a backlog) is decoded and called back on the decode thread: the receive thread is free meanwhile (here it opens
    another endpoint while the callback is held); a drain that emptied its socket with the worker idle is decoded in place."""
    (p, other), gate, holding, threads, got = pushers, threading.Event(), threading.Event(), set(), []

    def on_events(endpoint, events):
        threads.add(threading.current_thread().name)
        if threading.current_thread().name == "stream-v1-decode":
            holding.set()
            gate.wait(10)  # a slow consumer
        got.extend(events)

    with StreamReceiver([p.endpoint], on_events=on_events, max_batch=4) as rx:
        assert rx.native_loop is not None
        wait_until(lambda: rx.is_connected(p.endpoint), what="connected")
        p.series(3, frames_for(3, 14))  # 16 messages: 4 drains at most, within the handoff's depth (a deeper backlog holds the receive thread back)
        assert holding.wait(10)
        t0 = time.monotonic()
        rx.add(other.endpoint, timeout=5)
        wait_until(lambda: rx.is_connected(other.endpoint), what="the other endpoint opened while the callback is held")
        assert time.monotonic() - t0 < 5 and not gate.is_set()
        gate.set()
        wait_until(lambda: any(isinstance(e, SeriesEnd) for e in got), what="series end")
        frames = [e for e in got if isinstance(e, Frame)]
    assert [f.frame for f in frames] == list(range(14)) and "stream-v1-decode" in threads


def test_a_drain_that_empties_its_socket_is_decoded_in_the_receive_thread(pushers, compiled):
    (p, _), threads, got = pushers, set(), []

    def on_events(endpoint, events):
        threads.add(threading.current_thread().name)
        got.extend(events)

    with StreamReceiver([p.endpoint], on_events=on_events, max_batch=512) as rx:
        wait_until(lambda: rx.is_connected(p.endpoint), what="connected")
        for i in range(6):  # at a scan's pace: one message per drain
            p.series(10 + i, frames_for(10 + i, 1))
            wait_until(lambda i=i: sum(isinstance(e, SeriesEnd) for e in got) == i + 1, what="series end")
            if i == 0:
                threads.clear()  # the first may meet the worker still setting its codec threads (a job of its own)
    assert threads == {"stream-v1-receiver"}


def test_remove_hands_on_every_drain_before_it_returns(pushers, compiled):
    (p, _), got = pushers, []

    def on_events(endpoint, events):
        time.sleep(0.05)  # slower than receiving: drains queue up in the handoff (16 drains: 0.8 s)
        got.extend(events)

    with StreamReceiver([p.endpoint], on_events=on_events, max_batch=2) as rx:
        wait_until(lambda: rx.is_connected(p.endpoint), what="connected")
        p.series(4, frames_for(4, 30))
        wait_until(lambda: rx.counts(p.endpoint).messages > 0, what="the first drain handed on")
        time.sleep(0.1)  # the receive thread has drained more meanwhile, up to the handoff's depth
        assert rx.remove(p.endpoint, timeout=10)
        n = len(got)
        assert any(isinstance(e, SeriesEnd) for e in got)
        time.sleep(0.2)
        assert len(got) == n  # nothing handed on after remove returned
