"""The stream v1 receiver: one thread for every endpoint, endpoints added while it runs, events handed over in batches."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from service_testing import frames_for, wait_until

from detector_stream.codec import decode_frames, encode_frames
from detector_stream.codec_threads import loaded_openmp_runtimes, set_codec_threads
from detector_stream.errors import StreamErrorKind
from detector_stream.events import Frame, SeriesEnd, SeriesStart, StreamError
from detector_stream.receiver import StreamReceiver


class Collector:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[tuple[str, list]] = []

    def __call__(self, endpoint: str, events: list) -> None:
        with self.lock:
            self.batches.append((endpoint, list(events)))

    def events(self, endpoint: str) -> list:
        with self.lock:
            return [e for ep, batch in self.batches if ep == endpoint for e in batch]


def test_endpoints_added_while_running_share_the_thread_and_keep_their_order(pushers):
    first, second = pushers
    got = Collector()
    rx = StreamReceiver([first.endpoint], on_events=got)
    with rx:
        threads_before = set(threading.enumerate())
        rx.add(second.endpoint)
        rx.add(second.endpoint)  # idempotent
        assert rx.endpoints == [first.endpoint, second.endpoint]
        assert not set(threading.enumerate()) - threads_before  # no thread per detector (others' threads may end meanwhile)
        images = {p.endpoint: frames_for(n, 5) for n, p in enumerate(pushers)}
        for p in pushers:
            p.series(7, images[p.endpoint])
        for p in pushers:
            wait_until(lambda p=p: any(isinstance(e, SeriesEnd) for e in got.events(p.endpoint)) or None, what=f"end of series from {p.endpoint}")
            events = got.events(p.endpoint)
            assert isinstance(events[0], SeriesStart) and isinstance(events[-1], SeriesEnd)
            frames = [e for e in events if isinstance(e, Frame)]
            assert [f.frame for f in frames] == list(range(5))  # in order, nothing from the other detector
            np.testing.assert_array_equal(np.stack([f.image for f in frames]), images[p.endpoint])
            assert rx.messages_from(p.endpoint) == 7
        assert rx.messages_received == 14
        wait_until(lambda: rx.connected or None, what="both endpoints connected")


def test_exactly_one_callback_and_valid_endpoints():
    with pytest.raises(ValueError, match="exactly one"):
        StreamReceiver(["tcp://127.0.0.1:1"])
    with pytest.raises(ValueError, match="exactly one"):
        StreamReceiver(["tcp://127.0.0.1:1"], lambda ep, e: None, on_events=lambda ep, es: None)
    rx = StreamReceiver([], lambda ep, e: None)
    with pytest.raises(ValueError, match="tcp://host:port"):
        rx.add("localhost:5555")


def test_a_raising_callback_neither_stops_the_receiver_nor_drops_the_other_events(pushers):
    p = pushers[0]
    seen: list = []

    def on_event(endpoint, event):
        if isinstance(event, Frame) and event.frame == 1:
            raise RuntimeError("consumer bug")
        seen.append(event)

    with StreamReceiver([p.endpoint], on_event) as rx:
        p.series(3, frames_for(3, 4))
        wait_until(lambda: any(isinstance(e, SeriesEnd) for e in seen) or None, what="end of series")
        p.series(4, frames_for(4, 2))
        wait_until(lambda: sum(isinstance(e, SeriesEnd) for e in seen) == 2 or None, what="second series")
    assert [e.frame for e in seen if isinstance(e, Frame) and e.series == 3] == [0, 2, 3]
    assert rx.callback_errors >= 1


def test_codec_threads_are_set_per_thread_and_decoding_is_unchanged():
    with pytest.raises(ValueError):
        set_codec_threads(0)
    images = np.random.default_rng(0).poisson(30, size=(4, 64, 64)).astype(np.uint16)
    blobs = encode_frames(images, "bs16-lz4<")
    result: dict = {}

    def decode_with_one_thread():
        result["set"] = set_codec_threads(1)
        result["images"] = decode_frames(blobs, (64, 64), "uint16", "bs16-lz4<")

    t = threading.Thread(target=decode_with_one_thread)
    t.start()
    t.join()
    assert result["set"] == len(loaded_openmp_runtimes())
    np.testing.assert_array_equal(result["images"], images)
    np.testing.assert_array_equal(decode_frames(blobs, (64, 64), "uint16", "bs16-lz4<"), images)


def test_an_endpoint_that_cannot_be_opened_is_reported_and_the_others_are_still_served(pushers):
    good, later = pushers
    unopenable = "ipc:///tmp/" + "x" * 200  # passes the endpoint check, but the path is too long for a socket
    got = Collector()
    rx = StreamReceiver([unopenable, good.endpoint], on_events=got)
    with rx:
        assert unopenable in rx.failures and "too long" in rx.failures[unopenable].lower()
        rx.add("ipc:///tmp/" + "y" * 200)  # added while running: the same, the thread lives on
        rx.add(later.endpoint)
        for p in pushers:
            p.series(2, frames_for(2, 3))
        for p in pushers:
            wait_until(lambda p=p: any(isinstance(e, SeriesEnd) for e in got.events(p.endpoint)) or None, what=f"series from {p.endpoint}")
        assert rx.alive and len(rx.failures) == 2
    assert not rx.alive and not rx.is_connected(good.endpoint)  # a stopped receiver reports nothing connected
    assert rx.messages_from(good.endpoint) == 5  # counts survive the stop


def test_frames_carry_when_their_message_came_off_the_socket(pushers):
    p = pushers[0]
    got = Collector()
    with StreamReceiver([p.endpoint], on_events=got):
        p.start(1, 4)
        for i, img in enumerate(frames_for(1, 4)):
            p.frame(1, i, img)
            time.sleep(0.02)
        p.end(1)
        wait_until(lambda: any(isinstance(e, SeriesEnd) for e in got.events(p.endpoint)) or None, what="end of series")
    stamps = [e.received_at for e in got.events(p.endpoint) if isinstance(e, Frame)]
    assert len(stamps) == 4 and stamps == sorted(stamps), stamps
    assert stamps[-1] - stamps[0] >= 0.03, stamps  # sent 20 ms apart: the stamps are per message, not per drained batch


def test_malformed_messages_are_counted_per_endpoint_by_kind(pushers):
    p = pushers[0]
    got = Collector()
    rx = StreamReceiver([p.endpoint], on_events=got)
    with rx:
        p.start(1, 2)
        p.raw([b"\x00garbage"])  # before the first frame: once dropped without a trace
        p.raw([b"[1, 2]"])
        for i, img in enumerate(frames_for(1, 2)):
            p.frame(1, i, img)
        p.end(1)
        wait_until(lambda: any(isinstance(e, SeriesEnd) for e in got.events(p.endpoint)) or None, what="end of series")
    errors = [e for e in got.events(p.endpoint) if isinstance(e, StreamError)]
    assert [e.kind for e in errors] == [StreamErrorKind.MALFORMED] * 2
    assert rx.counts(p.endpoint).stream_errors == {StreamErrorKind.MALFORMED: 2}  # kept after stop


def test_an_endpoint_added_and_removed_in_one_turn_leaves_no_second_socket(pushers):
    """An add and a remove of one endpoint that reached the thread in one turn were applied removals first: the socket was
    opened after its removal, served but no longer tracked, and the next add opened a second PULL on the same detector,
    whose PUSH then dealt every other message to each socket (two decoders, each missing half a series)."""
    a, b = pushers
    gate, collect = threading.Event(), Collector()
    gate.set()

    def on_events(endpoint, events):
        gate.wait(10)  # holds the receive thread while the requests below queue up
        collect(endpoint, events)

    with StreamReceiver([a.endpoint], on_events=on_events, native=False) as rx:  # the Python loop calls back on the receive thread
        wait_until(lambda: rx.is_connected(a.endpoint), what="a connected")
        gate.clear()
        a.start(1, 1)
        wait_until(lambda: rx.messages_from(a.endpoint) == 1, what="the thread busy with a's message")
        rx.add(b.endpoint, timeout=0)  # e.g. an add that timed out, then a remove, both before the thread's next turn
        rx.remove(b.endpoint, timeout=0)
        gate.set()
        time.sleep(0.2)
        rx.add(b.endpoint)
        wait_until(lambda: rx.is_connected(b.endpoint), what="b connected")
        time.sleep(0.3)  # any second connection would be up by now
        n = 10
        b.series(7, frames_for(7, n))
        wait_until(lambda: any(isinstance(e, SeriesEnd) for e in collect.events(b.endpoint)), what="b's series end")
        time.sleep(0.2)
        events = collect.events(b.endpoint)
    assert [e for e in events if isinstance(e, StreamError)] == []
    assert [e.frame for e in events if isinstance(e, Frame)] == list(range(n))
    assert [e.series for e in events if isinstance(e, SeriesStart)] == [7]
