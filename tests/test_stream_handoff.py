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


def test_the_receive_thread_takes_the_next_drain_while_the_callback_runs(pushers, compiled):
    (p, _), gate, threads, got = pushers, threading.Event(), set(), []

    def on_events(endpoint, events):
        threads.add(threading.current_thread().name)
        gate.wait(10)  # a slow consumer: the receive thread goes on draining the socket meanwhile
        got.extend(events)

    with StreamReceiver([p.endpoint], on_events=on_events, max_batch=4) as rx:
        assert rx.native_loop is not None
        wait_until(lambda: rx.is_connected(p.endpoint), what="connected")
        images = frames_for(3, 40)
        p.series(3, images)
        time.sleep(0.5)  # the first drain's callback is held; the receive thread has taken more drains meanwhile (bounded)
        held = rx.messages_received  # counted when handed on: the first drain only
        gate.set()
        wait_until(lambda: any(isinstance(e, SeriesEnd) for e in got), what="series end")
        frames = [e for e in got if isinstance(e, Frame)]
    assert held <= 4 and [f.frame for f in frames] == list(range(40)) and threads == {"stream-v1-decode"}


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
