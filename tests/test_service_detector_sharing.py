"""Sharing a detector: the service listens only while a batch is in flight, and can forward the whole stream to a second consumer."""

from __future__ import annotations

import hashlib
import time

import h5py
import numpy as np
import pytest
import zmq
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, RecordingBackend, frames_for, receive_libertem, session_body, wait_until

from detector_stream.events import Frame, SeriesEnd, SeriesStart
from detector_stream.receiver import StreamReceiver
from service.app import create_app
from service.settings import ServiceSettings

API = "/detector/api/1.8.0"


def _digest(frames: np.ndarray) -> str:
    """A checksum of a frame stack (values as uint32, C order)."""
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.uint32).tobytes()).hexdigest()


def _acquire(client, detector, positions_nm, series_config: dict | None = None) -> int:
    """Arm the simulated detector for one series over ``positions_nm`` (ints, one trigger); returns its sequence id (not yet triggered)."""
    n = len(positions_nm)
    detector.scan.set_positions(positions_nm)
    for key, value in {"nimages": n, "ntrigger": 1, "trigger_mode": "ints", "frame_time": 0.0, **(series_config or {})}.items():
        assert client.put(f"{API}/config/{key}", json={"value": value}).status_code == 200
    return client.put(f"{API}/command/arm").json()["sequence id"]


def test_service_disconnects_when_no_batch_is_in_flight_so_another_consumer_gets_every_frame(tmp_path, sim_detector):
    detector, _, client = sim_detector
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], ask_timeout_s=10.0, detector_quiet_s=0.2)
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        ingest = c.app.state.service.ingest
        body = session_body(detector.endpoint, budget=4, chunk=4, detector_pixels=64)
        sid = c.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
        ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        assert ingest.receiver.is_connected(detector.endpoint)  # listening before the batch was handed out
        series = _acquire(client, detector, ask["positions_nm"])
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH)
        client.put(f"{API}/command/trigger")
        wait_until(lambda: c.get(f"/api/v1/sessions/{sid}").json()["state"] == "done", what="session done")
        mine = detector.last_images.copy()
        wait_until(lambda: detector.endpoint not in ingest.receiver.endpoints, what="disconnected once nothing is in flight")
        before = ingest.receiver.counts(detector.endpoint).messages

        events = []  # a second consumer, alone on the detector now
        other = StreamReceiver([detector.endpoint], lambda ep, e: events.append(e))
        with other:
            wait_until(lambda: other.connected, what="second consumer connected")
            n = 7
            series2 = _acquire(client, detector, np.column_stack([np.linspace(0, 1, n), np.zeros(n)]))
            client.put(f"{API}/command/trigger")
            wait_until(lambda: any(isinstance(e, SeriesEnd) for e in events), what="the whole series")
        frames = [e for e in events if isinstance(e, Frame)]
        assert [e.series for e in events if isinstance(e, SeriesStart)] == [series2]
        assert sorted(f.frame for f in frames) == list(range(n))  # every frame, none dealt to the service
        np.testing.assert_array_equal(np.stack([f.image for f in sorted(frames, key=lambda f: f.frame)]), detector.last_images)
        assert ingest.receiver.counts(detector.endpoint).messages == before
        assert c.app.state.service.manager.buffered_frames == 0
    with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
        assert _digest(f["patterns"][()]) == _digest(mine)


def test_forward_and_service_session_both_receive_every_frame_of_one_detector(tmp_path, sim_detector):
    """libertem-dectris (LiberTEM-live's receiver) on the service's forward endpoint, a service session on the detector itself."""
    ld = pytest.importorskip("libertem_dectris")
    detector, _, client = sim_detector
    settings = ServiceSettings(storage=tmp_path / "s", api_keys=[KEY], ask_timeout_s=10.0, forward_endpoint="tcp://127.0.0.1:0")
    n = 12
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        forward = c.app.state.service.ingest.forwarder.endpoint
        conn = ld.DectrisConnection(uri=forward, frame_stack_size=4, handle_path=str(tmp_path / "shm"), num_slots=200, bytes_per_frame=64 * 64 * 4)
        cam = ld.CamClient(conn.get_socket_path())
        try:
            sid = c.post("/api/v1/sessions", json=session_body(detector.endpoint, budget=n, chunk=n, detector_pixels=64), headers=AUTH).json()["session_id"]
            ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
            wait_until(lambda: c.app.state.service.ingest.receiver.is_connected(detector.endpoint), what="service on the detector")
            time.sleep(0.5)  # libertem-dectris' background thread connects to the forward socket
            series = _acquire(client, detector, ask["positions_nm"])
            conn.start(series, timeout=5)
            c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH)
            client.put(f"{API}/command/trigger")
            theirs = receive_libertem(conn, cam, n, max_size=4)
            wait_until(lambda: c.get(f"/api/v1/sessions/{sid}").json()["state"] == "done", what="session done")
            metrics = c.get("/metrics").text
        finally:
            cam.close()
            conn.close()
    assert len(theirs) == n and _digest(theirs) == _digest(detector.last_images)
    with h5py.File(tmp_path / "s" / f"{sid}.h5", "r") as f:
        assert f["received"][()].all() and _digest(f["patterns"][()]) == _digest(detector.last_images)
    assert f"ptychoscan_forward_messages_total {n + 2}.0" in metrics  # header, n frames, end: all of them
    assert "ptychoscan_forward_dropped_messages_total 0.0" in metrics


def test_forward_without_a_reader_drops_and_counts_and_never_holds_up_ingest(tmp_path, pushers):
    p = pushers[0]
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], ask_timeout_s=5.0, forward_endpoint="tcp://127.0.0.1:0", forward_hwm=1)
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        sid = c.post("/api/v1/sessions", json=session_body(p.endpoint, budget=5, chunk=5), headers=AUTH).json()["session_id"]
        ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 3}, headers=AUTH)
        p.series(3, frames_for(3, 5))
        wait_until(lambda: c.get(f"/api/v1/sessions/{sid}").json()["frames_received"] == 5, what="frames stored")
        metrics = c.get("/metrics").text
    assert "ptychoscan_forward_dropped_messages_total 7.0" in metrics  # nobody connected: header, 5 frames, end


def test_forwarded_messages_are_byte_identical_multipart(tmp_path, pushers):
    """Every part of every message, in order, byte for byte (a plain PULL on the forward endpoint)."""
    p = pushers[0]
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], ask_timeout_s=5.0, forward_endpoint="tcp://127.0.0.1:0")
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.connect(c.app.state.service.ingest.forwarder.endpoint)
        try:
            c.post("/api/v1/sessions", json=session_body(p.endpoint), headers=AUTH)
            wait_until(lambda: c.app.state.service.ingest.receiver.is_connected(p.endpoint), what="service connected")
            time.sleep(0.2)
            sent = [[b'{"htype":"dheader-1.0","series":5,"header_detail":"none"}'], [b"\x00odd", b"", b"x" * 5000, b"tail"], [b'{"htype":"dseries_end-1.0","series":5}']]
            for parts in sent:
                p.raw(parts)
            received = []
            while len(received) < len(sent) and pull.poll(5000):
                received.append(pull.recv_multipart())
        finally:
            pull.close(0)
            ctx.term()
    assert received == sent


def test_another_consumers_acquisition_does_not_keep_the_service_connected(tmp_path, pusher):
    """With nothing in flight the service let go only after quiet_s without a message, so a second consumer streaming
    continuously kept it connected, and it took half of that acquisition's frames (review)."""
    import threading

    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], ask_timeout_s=10.0, detector_quiet_s=0.2)
    ctx = zmq.Context.instance()
    other = ctx.socket(zmq.PULL)
    other.connect(pusher.endpoint)
    stop = threading.Event()

    def stream():  # the other consumer's acquisition: a frame every 20 ms
        pusher.start(50, 10_000)
        i = 0
        while not stop.is_set():
            pusher.frame(50, i, frames_for(50, 1)[0])
            i += 1
            time.sleep(0.02)

    def drain():
        while not stop.is_set():
            if other.poll(50):
                other.recv_multipart()

    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        ingest = c.app.state.service.ingest
        sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=4, chunk=4), headers=AUTH).json()["session_id"]
        c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH)
        assert ingest.receiver.is_connected(pusher.endpoint)
        threads = [threading.Thread(target=stream), threading.Thread(target=drain)]
        for t in threads:
            t.start()
        try:
            c.delete(f"/api/v1/sessions/{sid}", headers=AUTH)  # nothing in flight any more
            wait_until(lambda: pusher.endpoint not in ingest.receiver.endpoints, timeout=3.0, what="let go despite the other stream")
        finally:
            stop.set()
            for t in threads:
                t.join(5)
            other.close(0)


def test_forwarding_works_when_a_restored_session_starts_the_receiver_before_the_service_starts(tmp_path, pushers):
    """Regression: restore connects a resumed session's detector (``Ingest.ensure``) before ``Ingest.start`` bound the
    forward socket; the compiled loop, made then, forwarded nothing for the rest of the process (and counted nothing)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter as PromCounter

    from service.forward import Forwarder
    from service.ingest import Ingest
    from service.manager import SessionManager
    from service.metrics import ServiceMetrics

    p = pushers[0]
    registry = CollectorRegistry()
    forwarded, dropped = PromCounter("fwd", "f", registry=registry), PromCounter("drop", "d", registry=registry)
    manager = SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())
    ingest = Ingest(manager, [], on_demand=False, forwarder=Forwarder("tcp://127.0.0.1:0", 1000, forwarded, dropped))
    ctx = zmq.Context()
    try:
        ingest.ensure(p.endpoint)  # as restore does, before start
        ingest.start()
        pull = ctx.socket(zmq.PULL)
        pull.connect(ingest.forwarder.endpoint)
        wait_until(lambda: ingest.receiver.is_connected(p.endpoint), what="service connected")
        time.sleep(0.3)
        sent = [[b'{"htype":"dseries_end-1.0","series":%d}' % i] for i in range(5)]
        for parts in sent:
            p.raw(parts)
        received = []
        while len(received) < len(sent) and pull.poll(5000):
            received.append(pull.recv_multipart())
        assert received == sent
    finally:
        ingest.stop()
        manager.close()
        ctx.destroy(linger=0)


def test_the_forward_socket_stays_open_while_the_receive_thread_has_not_stopped(tmp_path, monkeypatch):
    """Regression: stop closed the forward socket even when the receive thread outlived its join, under the compiled loop
    that still sends on it."""
    from service.ingest import Ingest
    from service.manager import SessionManager
    from service.metrics import ServiceMetrics

    closed = []

    class Stuck:
        def stop(self):
            return False  # the thread is still running

    class Forward:
        socket = None

        def close(self):
            closed.append(True)

    manager = SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())
    ingest = Ingest(manager, [], on_demand=False, forwarder=Forward())
    ingest.receiver = Stuck()
    ingest.stop()
    assert closed == []
    manager.close()


def test_receiver_stop_says_whether_its_thread_ended(pusher):
    import threading

    entered, release = threading.Event(), threading.Event()

    def slow(endpoint, events):
        entered.set()
        release.wait(10)

    receiver = StreamReceiver([pusher.endpoint], on_events=slow)
    receiver.start()
    wait_until(lambda: receiver.is_connected(pusher.endpoint), what="connected")
    pusher.raw([b'{"htype":"dseries_end-1.0","series":1}'])
    assert entered.wait(10)
    assert receiver.stop(timeout=0.2) is False
    release.set()
