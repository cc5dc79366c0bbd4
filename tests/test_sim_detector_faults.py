"""Every fault mode of the simulated detector, seen through our receiver."""

from __future__ import annotations

import time

import numpy as np
import pytest

from detector_stream.events import Frame, SeriesEnd, SeriesStart, StreamError
from detector_stream.receiver import StreamReceiver

API = "/detector/api/1.8.0"


class Collector:
    def __init__(self):
        self.events = []
        self.arrival = []

    def __call__(self, endpoint, event):
        self.events.append(event)
        self.arrival.append(time.monotonic())

    def wait(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


@pytest.fixture
def stream(sim_detector):
    detector, _, client = sim_detector
    collector = Collector()
    receiver = StreamReceiver([detector.endpoint], collector)
    receiver.start()
    deadline = time.monotonic() + 5
    while not receiver.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert receiver.connected
    for key, value in {"nimages": 5, "ntrigger": 1, "trigger_mode": "ints", "frame_time": 0.0}.items():
        client.put(f"{API}/config/{key}", json={"value": value})
    try:
        yield detector, client, collector, receiver
    finally:
        receiver.stop()


def _run_series(client, collector, faults, wait_end=True):
    assert client.put("/sim/api/1/faults", json=faults).status_code == 200
    seq = client.put(f"{API}/command/arm").json()["sequence id"]
    client.put(f"{API}/command/trigger")
    if wait_end:
        assert collector.wait(lambda ev: any(isinstance(e, SeriesEnd) and e.series == seq for e in ev))
    return seq


def _errors(collector):
    return [e.reason for e in collector.events if isinstance(e, StreamError)]


def _frames(collector):
    return [e.frame for e in collector.events if isinstance(e, Frame)]


def test_dropped_frames(stream):
    _, client, collector, _ = stream
    _run_series(client, collector, {"drop_frames": [2]})
    assert _frames(collector) == [0, 1, 3, 4]
    assert any("missing frame(s) 2..2" in r for r in _errors(collector))
    assert any("series ended after 4 of 5 frames" in r for r in _errors(collector))


def test_duplicated_frames(stream):
    _, client, collector, _ = stream
    _run_series(client, collector, {"duplicate_frames": [1]})
    assert _frames(collector) == [0, 1, 2, 3, 4]
    assert _errors(collector) == ["duplicated frame 1"]


@pytest.mark.parametrize(("fault", "reason"), [("corrupt_frames", "md5"), ("truncate_frames", "truncated frame")])
def test_corrupted_and_truncated_frames(stream, fault, reason):
    _, client, collector, _ = stream
    _run_series(client, collector, {fault: [3]})
    assert _frames(collector) == [0, 1, 2, 4]
    errors = _errors(collector)
    assert any(reason in r for r in errors) and any("after 4 of 5" in r for r in errors)


def test_stall(stream):
    _, client, collector, _ = stream
    _run_series(client, collector, {"stall_at_frame": 2, "stall_s": 0.5})
    assert _errors(collector) == []
    times = {e.frame: t for e, t in zip(collector.events, collector.arrival, strict=True) if isinstance(e, Frame)}
    assert times[2] - times[1] >= 0.4


def test_faults_are_one_shot_unless_persistent(stream):
    detector, client, collector, _ = stream
    _run_series(client, collector, {"drop_frames": [0]})
    assert client.get("/sim/api/1/faults").json()["drop_frames"] == []
    collector.events.clear()
    _run_series(client, collector, {"drop_frames": [0], "persistent": True})
    _run_series(client, collector, {"drop_frames": [0], "persistent": True})
    assert _frames(collector) == [1, 2, 3, 4, 1, 2, 3, 4]
    assert detector.faults.persistent


def test_disconnect_mid_series_then_recover(stream):
    detector, client, collector, receiver = stream
    first = _run_series(client, collector, {"disconnect_at_frame": 3}, wait_end=False)
    assert client.get(f"{API}/status/state").json()["value"] == "idle"
    assert collector.wait(lambda ev: sum(isinstance(e, Frame) for e in ev) >= 3)
    assert not any(isinstance(e, SeriesEnd) for e in collector.events)
    deadline = time.monotonic() + 5
    while not receiver.connected and time.monotonic() < deadline:  # zmq reconnects by itself
        time.sleep(0.02)
    second = _run_series(client, collector, {})
    assert second == first + 1
    assert any(f"series {first} ended without dseries_end after 3 frame(s)" in r for r in _errors(collector))
    starts = [e.series for e in collector.events if isinstance(e, SeriesStart)]
    assert starts == [first, second]
    assert _frames(collector)[-5:] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(collector.events[-2].image, detector.last_images[4])


def test_bad_fault_plan_is_422(sim_detector):
    _, _, client = sim_detector
    r = client.put("/sim/api/1/faults", json={"stall_s": -1})
    assert r.status_code == 422
