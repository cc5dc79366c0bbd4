"""SIMPLON REST subset, trigger modes, scan controller and frame sources of the simulated microscope."""

from __future__ import annotations

import time

import numpy as np
import pytest

from detector_stream.events import Frame, SeriesEnd
from detector_stream.receiver import StreamReceiver
from recon.dataset import Dataset4D, write_dataset

API = "/detector/api/1.8.0"


def test_version_config_status_and_stream_config(sim_detector):
    _, _, client = sim_detector
    assert client.get("/detector/api/version/").json()["value"] == "1.8.0"
    desc = client.get(f"{API}/config/frame_time").json()
    assert {"value", "value_type", "access_mode"} <= desc.keys() and desc["access_mode"] == "rw"
    assert client.get(f"{API}/config/x_pixels_in_detector").json() == {"value": 64, "value_type": "uint", "access_mode": "r"}
    assert client.get(f"{API}/config/trigger_mode").json()["allowed_values"] == ["exte", "exts", "inte", "ints"]
    assert client.put(f"{API}/config/nimages", json={"value": 7}).status_code == 200
    assert client.get(f"{API}/config/nimages").json()["value"] == 7
    assert client.get(f"{API}/status/state").json()["value"] == "idle"
    assert client.put("/stream/api/1.8.0/config/header_detail", json={"value": "all"}).status_code == 200
    assert client.get("/stream/api/1.8.0/config/header_detail").json()["value"] == "all"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "text"),
    [
        ("put", f"{API}/config/nimages", {"value": 0}, 400, "nimages must be within"),
        ("put", f"{API}/config/trigger_mode", {"value": "auto"}, 400, "must be one of"),
        ("put", f"{API}/config/x_pixels_in_detector", {"value": 3}, 400, "read-only"),
        ("put", f"{API}/config/nonsense", {"value": 3}, 400, "unknown"),
        ("put", f"{API}/config/nimages", {"val": 3}, 400, "body must be"),
        ("get", f"{API}/config/nonsense", None, 404, "unknown config key"),
        ("put", f"{API}/command/trigger", None, 409, "arm first"),
        ("put", f"{API}/command/explode", None, 404, "unknown command"),
        ("put", "/stream/api/1.8.0/config/header_detail", {"value": "most"}, 400, "invalid stream config"),
        ("put", "/scan/api/1/positions", {"positions_nm": [[1, 2, 3]]}, 400, "positions_nm must be"),
        ("put", "/scan/api/1/park", {"position_nm": [1]}, 400, "position_nm"),
        ("put", "/scan/api/1/settle_time", {"value": -1}, 400, "settle time"),
        ("put", "/scan/api/1/command/start", None, 409, "arm it first"),
    ],
)
def test_bad_requests_give_clear_errors(sim_detector, method, path, body, status, text):
    _, _, client = sim_detector
    r = client.request(method.upper(), path, json=body)
    assert r.status_code == status, r.text
    assert text in r.json()["error"] and "\n" not in r.json()["error"]


def test_state_machine(sim_detector):
    _, _, client = sim_detector
    assert client.put(f"{API}/command/arm").json() == {"sequence id": 1}
    assert client.get(f"{API}/status/state").json()["value"] == "ready"
    assert client.put(f"{API}/command/arm").status_code == 409
    assert client.put(f"{API}/config/nimages", json={"value": 2}).status_code == 409
    assert client.put(f"{API}/command/disarm").status_code == 200
    assert client.put(f"{API}/command/arm").json() == {"sequence id": 2}
    assert client.put(f"{API}/command/abort").status_code == 200
    client.put(f"{API}/config/nimages", json={"value": 9})
    assert client.put(f"{API}/command/initialize").status_code == 200
    assert client.get(f"{API}/config/nimages").json()["value"] == 1


@pytest.mark.parametrize(
    ("mode", "nimages", "ntrigger", "expected", "external"),
    [("ints", 3, 2, 6, False), ("inte", 3, 4, 4, False), ("exts", 2, 3, 6, True), ("exte", 5, 4, 4, True)],
)
def test_trigger_modes_frame_counts(sim_detector, mode, nimages, ntrigger, expected, external):
    detector, _, client = sim_detector
    events = []
    with StreamReceiver([detector.endpoint], lambda ep, e: events.append(e)):
        for key, value in {"trigger_mode": mode, "nimages": nimages, "ntrigger": ntrigger, "frame_time": 0.0}.items():
            client.put(f"{API}/config/{key}", json={"value": value})
        client.put(f"{API}/command/arm")
        if external:
            assert client.put(f"{API}/command/trigger").status_code == 409  # external modes wait for the scan controller
            assert client.put("/scan/api/1/command/start").json() == {"frames": expected}
        else:
            triggers = 0
            while client.get(f"{API}/status/state").json()["value"] == "ready":
                client.put(f"{API}/command/trigger")
                triggers += 1
            assert triggers == ntrigger
        deadline = time.monotonic() + 10
        while not any(isinstance(e, SeriesEnd) for e in events) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [e.frame for e in events if isinstance(e, Frame)] == list(range(expected))


def _stream_series(detector, client, n):
    events = []
    with StreamReceiver([detector.endpoint], lambda ep, e: events.append(e)):
        client.put(f"{API}/config/nimages", json={"value": n})
        client.put(f"{API}/config/frame_time", json={"value": 0.0})
        client.put(f"{API}/command/arm")
        client.put(f"{API}/command/trigger")
        deadline = time.monotonic() + 10
        while not any(isinstance(e, SeriesEnd) for e in events) and time.monotonic() < deadline:
            time.sleep(0.01)
    return np.stack([e.image for e in events if isinstance(e, Frame)])


def test_replay_gives_nearest_raster_pattern_per_probe_position(tmp_path):
    import httpx

    from sim_microscope.detector import SimDetector
    from sim_microscope.frame_source import DatasetReplay
    from sim_microscope.simplon_api import ServerThread, create_app

    ys, xs = np.meshgrid(np.arange(4) * 0.1, np.arange(5) * 0.1, indexing="ij")
    positions = np.column_stack([xs.ravel(), ys.ravel()])
    patterns = np.repeat(np.arange(20, dtype=np.uint16)[:, None, None], 8, axis=1).repeat(8, axis=2) * 100
    path = write_dataset(tmp_path / "d.h5", Dataset4D(patterns, positions, 60e3, 33.0, 1.68, grid_shape=(4, 5)))
    detector = SimDetector(DatasetReplay(str(path)), port=0)
    server = ServerThread(create_app(detector)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            asked = [[0.31, 0.02], [0.0, 0.29], [0.41, 0.33]]  # nearest raster indices 3, 15, 19
            assert client.put("/scan/api/1/positions", json={"positions_nm": asked}).json() == {"count": 3}
            assert client.put("/scan/api/1/settle_time", json={"value": 0.05}).status_code == 200
            start = time.monotonic()
            frames = _stream_series(detector, client, 3)
            assert time.monotonic() - start >= 0.15  # three settles of 50 ms
            assert [int(f[0, 0]) for f in frames] == [300, 1500, 1900]
            assert client.get("/scan/api/1/probe").json()["position_nm"] == [0.41, 0.33]
            assert client.put("/scan/api/1/park", json={"position_nm": [0.2, 0.1]}).status_code == 200
            assert client.get("/scan/api/1/probe").json()["parked"] is True
            client.put("/scan/api/1/settle_time", json={"value": 0.0})
            assert [int(f[0, 0]) for f in _stream_series(detector, client, 2)] == [700, 700]
    finally:
        server.stop()
        detector.close()


def test_specimen_source_simulates_counts_at_dose():
    from sim_microscope.frame_source import SpecimenSource, to_counts

    source = SpecimenSource("mos2", 1.2, detector_pixels=16, detector_pixel_mrad=6.72, oversample=1)
    x0, y0, w, h = source.extent_nm
    pos = np.array([[x0 + w / 2, y0 + h / 2], [x0 + w / 2 + 0.05, y0 + h / 2], [x0 - 5, y0 - 5]])
    patterns = source.patterns(pos)
    assert patterns.shape == (3, 16, 16)
    np.testing.assert_allclose(patterns.sum(axis=(1, 2)), 1.0, rtol=1e-4)
    assert not np.allclose(patterns[0], patterns[1])
    counts = to_counts(patterns, "uint16", 5000.0, np.random.default_rng(0))
    assert counts.dtype == np.uint16 and abs(counts[0].sum() - 5000) < 400
    assert to_counts(np.full((1, 2, 2), 70000, np.uint32), "uint16", 1, np.random.default_rng(0)).max() == 65535


def test_image_appendix_and_dconfig_timing_on_the_wire(sim_detector):
    import json

    import zmq

    detector, _, client = sim_detector
    client.put("/stream/api/1.8.0/config/image_appendix", json={"value": '{"user": 1}'})
    client.put(f"{API}/config/nimages", json={"value": 2})
    client.put(f"{API}/config/frame_time", json={"value": 0.01})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(detector.endpoint)
    try:
        client.put(f"{API}/command/arm")
        client.put(f"{API}/command/trigger")
        messages = [sock.recv_multipart() for _ in range(4)]
    finally:
        sock.close()
        ctx.term()
    assert json.loads(messages[0][0])["htype"] == "dheader-1.0" and json.loads(messages[0][1])["nimages"] == 2
    for i, msg in enumerate(messages[1:3]):
        assert len(msg) == 5 and msg[4] == b'{"user": 1}' and json.loads(msg[0])["frame"] == i
        timing = json.loads(msg[3])
        assert timing["htype"] == "dconfig-1.0" and timing["real_time"] == 10_000_000
        assert timing["stop_time"] - timing["start_time"] == 10_000_000
    assert json.loads(messages[3][0]) == {"htype": "dseries_end-1.0", "series": 1}
