"""The receive thread hands each compiled-loop drain to a worker that decodes it and calls back, in order, with backpressure."""

from __future__ import annotations

import threading
import time

import pytest
from service_testing import frames_for, wait_until

from detector_stream.decoder import StreamDecoder
from detector_stream.events import Frame, SeriesEnd
from detector_stream.handoff import OrderedHandoff
from detector_stream.native import build
from detector_stream.receiver import StreamReceiver


def test_jobs_run_in_order_and_stop_drops_what_is_still_queued():
    done, gate = [], threading.Event()
    h = OrderedHandoff("test-handoff", depth=100)
    h.start()
    for i in range(50):
        assert h.submit(lambda i=i: done.append(i), threading.Event())
    assert h.wait_idle(5.0) and done == list(range(50)) and h.idle
    running = threading.Event()
    h.submit(lambda: (running.set(), gate.wait(5)), threading.Event())
    for i in range(50, 60):
        h.submit(lambda i=i: done.append(i), threading.Event())
    assert running.wait(5)
    threading.Timer(0.2, gate.set).start()
    assert len(h.stop(5.0)) == 10 and done == list(range(50)) and not h.alive  # the job in flight finished, the queued ones dropped


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
    assert h.wait_idle(5.0) and h.stop(5.0) == [] and not h.alive


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


class Consumer:
    """An event callback that records events and threads; ``hold`` holds the receive thread in the first (inline) callback,
    ``slow_s`` makes each callback on the decode thread that long (``held`` is set when the first starts). Both act only once
    ``armed`` (``make_backlog`` arms it): a callback before that (the lone message, which may meet the decode thread still setting
    its codec threads and so be decoded there) runs at once."""

    def __init__(self, slow_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.got, self.threads, self.running, self.armed = [], set(), 0, False
        self.hold, self.held, self.slow_s, self.gate = threading.Event(), threading.Event(), slow_s, gate
        self.hold.set()

    def __call__(self, endpoint, events):
        name = threading.current_thread().name
        self.threads.add(name)
        self.running += 1
        if not self.armed:
            pass
        elif name == "stream-v1-receiver":
            self.hold.wait(10)
        else:
            self.held.set()
            if self.gate is not None:
                self.gate.wait(10)
            time.sleep(self.slow_s)
        self.got.extend(events)
        self.running -= 1


def make_backlog(p, rx, consumer: Consumer, series: int, n: int) -> None:
    """Queue a series' ``n`` frames and end behind its start while the receive thread is held in the start's callback: its next
    drains are full (a backlog, for the decode thread) however slowly the frames were encoded and sent."""
    before, called_back = rx.counts(p.endpoint).messages, len(consumer.got)
    p.start(series + 1000, 1)  # a lone message first: once it is called back (and a moment after), the decode thread is idle
    wait_until(lambda: len(consumer.got) > called_back, what="a lone message called back")
    time.sleep(0.1)
    consumer.armed = True
    consumer.hold.clear()
    p.start(series, n)
    wait_until(lambda: rx.counts(p.endpoint).messages > before + 1, what="the start message handed on (in the receive thread)")
    for i, image in enumerate(frames_for(series, n)):
        p.frame(series, i, image)
    p.end(series)
    time.sleep(0.5)  # all on the PULL socket
    consumer.hold.set()


def held_with_backlog(p, consumer: Consumer, max_batch: int, series: int, n: int) -> StreamReceiver:
    """A started receiver on ``p`` whose decode thread is in ``consumer``'s callback with a backlog behind it (``make_backlog``);
    the test stops it."""
    rx = StreamReceiver([p.endpoint], on_events=consumer, max_batch=max_batch)
    rx.start()
    wait_until(lambda: rx.is_connected(p.endpoint), what="connected")
    make_backlog(p, rx, consumer, series, n)
    assert consumer.held.wait(10)
    return rx


def test_under_a_backlog_the_receive_thread_goes_on_while_the_callback_runs(pushers, compiled):
    """A full drain (a backlog) is decoded and called back on the decode thread: the receive thread is free meanwhile (here it opens
    another endpoint while the callback is held)."""
    (p, other), gate = pushers, threading.Event()
    consumer = Consumer(gate=gate)
    with StreamReceiver([p.endpoint], on_events=consumer, max_batch=4) as rx:
        assert rx.native_loop is not None
        wait_until(lambda: rx.is_connected(p.endpoint), what="connected")
        make_backlog(p, rx, consumer, 3, 4)  # 5 messages behind the start: a full drain, then one; never more drains than the handoff holds
        assert consumer.held.wait(10)
        t0 = time.monotonic()
        rx.add(other.endpoint, timeout=5)
        wait_until(lambda: rx.is_connected(other.endpoint), what="the other endpoint opened while the callback is held")
        assert time.monotonic() - t0 < 5 and not gate.is_set()
        gate.set()
        wait_until(lambda: any(isinstance(e, SeriesEnd) for e in consumer.got), what="series end")
        frames = [e for e in consumer.got if isinstance(e, Frame)]
    assert [f.frame for f in frames] == list(range(4)) and consumer.threads == {"stream-v1-receiver", "stream-v1-decode"}


def test_stop_drops_the_drains_not_yet_decoded_and_calls_back_no_more(pushers, compiled):
    """Regression: stop ran every queued drain through a slow callback, gave up after its timeout and the callbacks went on after
    it returned (into a manager closing its sessions)."""
    (p, _) = pushers
    consumer = Consumer(slow_s=0.5)
    rx = held_with_backlog(p, consumer, 2, 5, 9)  # 10 messages behind the start: 5 drains, 0.5 s each
    t0 = time.monotonic()
    assert rx.stop(timeout=5)
    stopped_after, calls = time.monotonic() - t0, len(consumer.got)
    time.sleep(1.0)
    assert stopped_after < 1.5 and len(consumer.got) == calls  # the callback in flight finished; nothing after stop returned


def test_remove_waits_for_a_slow_consumer(pushers, compiled):
    """Regression: remove gave up waiting after 5 s and returned while drains of the removed socket were still being handed on."""
    (p, _) = pushers
    consumer = Consumer(slow_s=1.4)
    with StreamReceiver([p.endpoint], on_events=consumer, max_batch=2) as rx:
        wait_until(lambda: rx.is_connected(p.endpoint), what="connected")
        make_backlog(p, rx, consumer, 6, 7)  # 8 messages behind the start: 4 drains, 1.4 s each
        assert consumer.held.wait(10)
        assert rx.remove(p.endpoint, timeout=20)
        n = len(consumer.got)
        assert any(isinstance(e, SeriesEnd) for e in consumer.got)
        time.sleep(0.5)
        assert len(consumer.got) == n


def test_a_decode_failure_on_the_decode_thread_is_counted(pushers, compiled, monkeypatch):
    """Regression: what the decode thread raised was counted only by the handoff, which nobody read."""
    (p, _) = pushers
    consumer = Consumer()
    real = StreamDecoder.feed_native

    def failing(self, batch):
        if threading.current_thread().name == "stream-v1-decode" and len(batch) > 1:  # the backlog's drains
            raise RuntimeError("decoder bug")
        return real(self, batch)

    monkeypatch.setattr(StreamDecoder, "feed_native", failing)
    with StreamReceiver([p.endpoint], on_events=consumer, max_batch=4) as rx:
        wait_until(lambda: rx.is_connected(p.endpoint), what="connected")
        make_backlog(p, rx, consumer, 7, 7)
        wait_until(lambda: rx.socket_errors >= 1, what="the decode thread's failure counted")


def test_a_socket_removed_in_a_poll_turn_that_also_has_its_messages_is_not_an_error(pushers, compiled):
    """Regression: a poll turn that returned the control socket (a remove) and the removed data socket looked the closed socket up
    after closing it: a KeyError counted as a socket error."""
    errors, p = [], pushers[0]
    for _ in range(4):
        first = threading.Event()

        def on_events(endpoint, events, first=first):
            first.set()
            time.sleep(0.1)

        with StreamReceiver([p.endpoint], on_events=on_events, max_batch=4) as rx:
            wait_until(lambda rx=rx: rx.is_connected(p.endpoint), what="connected")
            for i, image in enumerate(frames_for(1, 20)):
                p.frame(1, i, image)
            assert first.wait(5)
            rx.remove(p.endpoint, timeout=30)
            time.sleep(0.2)
            errors.append(rx.socket_errors)
    assert errors == [0] * 4


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


def test_stop_says_true_only_once_no_callback_runs(pushers, compiled):
    """Regression: stop returned True after 5 s while a slow callback still ran on the decode thread, and events came after."""
    (p, _) = pushers
    consumer = Consumer(slow_s=6.0)
    rx = held_with_backlog(p, consumer, 2, 8, 3)
    assert not rx.stop(timeout=0.5)  # the callback in flight is still running
    assert rx.stop(timeout=10) and consumer.running == 0
    calls = len(consumer.got)
    time.sleep(0.5)
    assert len(consumer.got) == calls


def test_stop_while_a_remove_drains_a_busy_socket_is_prompt(pushers, compiled):
    """Regression: a remove of a socket with a backlog drained it to the end, 50 ms a drain once stopping: stop took seconds."""
    (p, _) = pushers
    consumer = Consumer(slow_s=0.3)
    rx = held_with_backlog(p, consumer, 4, 9, 400)
    rx.remove(p.endpoint, timeout=0)  # asked: the receive thread drains the socket's backlog (held back by the slow consumer)
    time.sleep(1.0)
    t0 = time.monotonic()
    assert rx.stop(timeout=5) and time.monotonic() - t0 < 2.0
