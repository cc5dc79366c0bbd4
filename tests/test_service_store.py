"""Session files and storage failures; batched reconstruction of two sessions in one call."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, RecordingBackend, frames_for, session_body, wait_until

from detector_stream.events import Frame
from service.app import create_app
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.scheduler import Scheduler
from service.settings import ServiceSettings
from service.store import SessionStore, StoreError


def test_full_disk_fails_the_session_not_the_service(tmp_path, pusher, monkeypatch):
    settings = ServiceSettings(storage=tmp_path / "s", api_keys=[KEY], ask_timeout_s=3.0)
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, what="ready")
        ok_sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint), headers=AUTH).json()["session_id"]
        sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint), headers=AUTH).json()["session_id"]
        ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 1}, headers=AUTH)
        store = c.app.state.service.manager.sessions[sid].store

        def full(*_a, **_k):
            raise StoreError(f"{store.path}: write frame failed ([Errno 28] No space left on device)")

        monkeypatch.setattr(store, "write_frame", full)
        monkeypatch.setattr(store, "write_frames", full)
        pusher.series(1, frames_for(1, len(ask["positions_nm"])))
        st = wait_until(lambda: (s := c.get(f"/api/v1/sessions/{sid}").json())["state"] == "failed" and s, what="failed")
        assert "No space left on device" in st["error"]
        r = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH)
        assert r.status_code == 409 and "No space left" in r.json()["detail"]
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "No space left" in ready.json()["detail"]["storage_error"]
        assert c.get("/healthz").status_code == 200
        assert c.post(f"/api/v1/sessions/{ok_sid}/ask", headers=AUTH).status_code == 200
        assert "ptychoscan_storage_errors_total 1.0" in c.get("/metrics").text


def test_unwritable_storage_is_507_and_not_ready(tmp_path, pusher):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the storage folder should be")
    settings = ServiceSettings(storage=blocker / "sessions", api_keys=[KEY])
    app = create_app(settings, backend=RecordingBackend())
    app.state.service.start = lambda: None  # the folder cannot be made: start the app without the lifespan's mkdir
    with TestClient(app) as c:
        r = c.post("/api/v1/sessions", json=session_body(pusher.endpoint), headers=AUTH)
        assert r.status_code == 507 and "cannot create session file" in r.json()["detail"]
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["storage_writable"] is False


def test_store_roundtrip_and_damaged_file(tmp_path):
    params = session_body("tcp://127.0.0.1:1", budget=4, chunk=2) | {"energy_ev": 60000.0, "convergence_mrad": 33.0, "defocus_nm": 0.0}
    store = SessionStore.create(tmp_path / "a.h5", "a", params, {"requested": "sparse-grid"})
    store.append_batch(0, np.array([[0.1, 0.2], [0.3, 0.4]]))
    store.bind(np.array([0, 1]), 5, np.array([[0.11, 0.21], [0.31, 0.41]]))
    store.write_frame(1, np.full((16, 16), 7, np.uint16))
    store.close()
    _, st = SessionStore.open(tmp_path / "a.h5")
    assert st.session_id == "a" and list(st.received) == [False, True] and list(st.slot_series) == [5, 5]
    assert st.patterns[1].max() == 7 and np.allclose(st.positions_measured[0], [0.11, 0.21])
    (tmp_path / "b.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match=r"b\.h5"):
        SessionStore.open(tmp_path / "b.h5")


def test_close_after_a_failed_write_logs_and_still_closes_the_file(tmp_path, monkeypatch, caplog):
    """Shutdown closes every session's file; one whose last write fails (a full disk: h5py raises RuntimeError) must not stop it."""
    params = session_body("tcp://127.0.0.1:1", budget=2, chunk=2) | {"energy_ev": 60000.0, "convergence_mrad": 33.0, "defocus_nm": 0.0}
    store = SessionStore.create(tmp_path / "c.h5", "c", params, {"requested": "sparse-grid"})
    store.append_batch(0, np.zeros((2, 2)))
    store.write_frame(0, np.ones((16, 16), np.uint16))

    def disk_full():
        raise RuntimeError("Can't write data (file write failed)")

    monkeypatch.setattr(store, "_write_pending", disk_full)
    store.close()  # no exception
    assert "could not write its last frames" in caplog.text
    assert not store._f.id.valid, "the file was closed all the same"
    _, st = SessionStore.open(tmp_path / "c.h5")  # what was flushed before is intact
    assert st.session_id == "c" and len(st.received) == 2 and not st.received.any()


def test_bind_of_scattered_slots_records_each_slot_its_frame_and_measured_position(tmp_path):
    params = session_body("tcp://127.0.0.1:1", budget=6, chunk=6) | {"energy_ev": 60000.0, "convergence_mrad": 33.0, "defocus_nm": 0.0}
    store = SessionStore.create(tmp_path / "d.h5", "d", params, {"requested": "sparse-grid"})
    store.append_batch(0, np.zeros((6, 2)))
    slots = np.array([4, 1, 2, 5])  # a re-tell of missing slots, in any order: runs 1-2 and 4-5
    measured = np.arange(8, dtype=np.float64).reshape(4, 2) / 10
    store.bind(slots, 9, measured)
    store.close()
    _, st = SessionStore.open(tmp_path / "d.h5")
    assert list(st.slot_series) == [-1, 9, 9, -1, 9, 9]
    assert list(st.slot_frame) == [-1, 1, 2, -1, 0, 3], "frame i of the series fills slots[i]"
    for i, slot in enumerate(slots):
        assert np.allclose(st.positions_measured[slot], measured[i])
    assert np.isnan(st.positions_measured[[0, 3]]).all()


def test_two_sessions_reconstructed_in_one_batched_call(tmp_path):
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY])
    metrics = ServiceMetrics()
    manager = SessionManager(settings, metrics)
    backend = RecordingBackend()
    scheduler = Scheduler(manager, backend, metrics)
    eps = ["tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002"]
    sids = [manager.create(session_body(ep, budget=6, chunk=3) | {"energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0})["session_id"] for ep in eps]
    scheduler.run_round(manager.take_work(0.1))  # first batches, no reconstruction
    assert backend.calls == 0
    for n, (sid, ep) in enumerate(zip(sids, eps, strict=True)):
        ask = manager.try_ask(sid)
        manager.tell(sid, ask["batch_id"], 1, None)
        for i, img in enumerate(frames_for(n, 3)):
            manager.on_event(ep, Frame(1, i, img))
    items = manager.take_work(0.1)
    assert sorted(it.session_id for it in items) == sorted(sids)
    scheduler.run_round(items)
    assert backend.calls == 1 and backend.call_sizes == [2]
    for n, sid in enumerate(sids):
        job = next(j for j in backend.jobs if j.patterns[0, 1, 1] == n * 1000)  # each job holds its own session's frames
        assert job.patterns.shape == (3, 16, 16)
        assert manager.try_ask(sid)["batch_id"] == 1
    assert metrics.recon_sessions.collect()[0].samples  # histogram populated
    manager.close()


def test_shutdown_finishes_the_chunk_in_flight_and_flushes(tmp_path, pusher):
    import h5py

    backend = RecordingBackend(delay_s=0.8)
    settings = ServiceSettings(storage=tmp_path / "s", api_keys=[KEY])
    with TestClient(create_app(settings, backend=backend)) as c:
        sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=6, chunk=3), headers=AUTH).json()["session_id"]
        c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH)
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": 0, "series": 1}, headers=AUTH)
        pusher.series(1, frames_for(1, 3))
        wait_until(lambda: c.app.state.service.scheduler.busy, what="reconstruction in flight")
    # the context exit ran the shutdown while the reconstruction was running
    assert backend.calls == 1
    with h5py.File(tmp_path / "s" / f"{sid}.h5", "r") as f:
        assert len(f["reconstructions"]) == 1, "the chunk in flight was finished and stored"
        assert f["positions_issued_nm"].shape == (6, 2) and f["received"][()].sum() == 3


def test_resume_requeues_a_complete_chunk_that_was_not_reconstructed(tmp_path):
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY])
    ep = "tcp://127.0.0.1:5003"
    m1 = SessionManager(settings, ServiceMetrics())
    sid = m1.create(session_body(ep, budget=6, chunk=3) | {"energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0})["session_id"]
    Scheduler(m1, RecordingBackend(), m1.metrics).run_round(m1.take_work(0.1))
    m1.tell(sid, 0, 11, [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]])
    images = frames_for(11, 3)
    for i, img in enumerate(images):
        m1.on_event(ep, Frame(11, i, img))
    assert m1.sessions[sid].state == "reconstructing"
    # "crash": the worker never ran; the files are not closed
    m2 = SessionManager(settings, ServiceMetrics())
    assert m2.restore() == 1
    s = m2.sessions[sid]
    assert s.state == "reconstructing" and s.frames_received == 3
    items = m2.take_work(0.1)
    assert len(items) == 1 and items[0].job is not None
    np.testing.assert_array_equal(items[0].job.patterns, images.astype(np.float32))
    np.testing.assert_allclose(items[0].job.positions_nm, [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]])  # measured positions survive
    backend = RecordingBackend()
    Scheduler(m2, backend, m2.metrics).run_round(items)
    ask = m2.try_ask(sid)
    assert ask["batch_id"] == 1 and len(ask["positions_nm"]) == 3
    m1.close()
    m2.close()


def test_frames_reach_the_file_at_flush_in_bulk_and_a_failing_flush_fails_the_session(tmp_path, pusher, monkeypatch):
    params = session_body("tcp://127.0.0.1:1", budget=5, chunk=5) | {"energy_ev": 60000.0, "convergence_mrad": 33.0, "defocus_nm": 0.0}
    store = SessionStore.create(tmp_path / "c.h5", "c", params, {"requested": "sparse-grid"})
    store.append_batch(0, np.zeros((5, 2)))
    for slot in (4, 0, 1, 3):  # two runs: 0-1 and 3-4
        store.write_frame(slot, np.full((16, 16), slot + 1, np.uint16))
    assert store.pending_frames == 4
    store.flush()
    assert store.pending_frames == 0
    store.close()
    _, st = SessionStore.open(tmp_path / "c.h5")
    assert list(st.received) == [True, True, False, True, True]
    assert [int(st.patterns[i].max()) for i in range(5)] == [1, 2, 0, 4, 5]

    settings = ServiceSettings(storage=tmp_path / "s", api_keys=[KEY], ask_timeout_s=3.0)
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, what="ready")
        sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint), headers=AUTH).json()["session_id"]
        ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 1}, headers=AUTH)
        session_store = c.app.state.service.manager.sessions[sid].store

        def full():
            raise StoreError(f"{session_store.path}: flush failed ([Errno 28] No space left on device)")

        monkeypatch.setattr(session_store, "flush", full)
        pusher.series(1, frames_for(1, len(ask["positions_nm"])))
        st = wait_until(lambda: (s := c.get(f"/api/v1/sessions/{sid}").json())["state"] == "failed" and s, what="failed")
        assert "No space left on device" in st["error"]


def _told_session(tmp_path, n: int, ep: str = "tcp://127.0.0.1:5001") -> tuple[SessionManager, str]:
    """A manager with one session of budget and chunk ``n`` whose first batch is told as series 1 (no worker thread)."""
    manager = SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())
    sid = manager.create(session_body(ep, budget=n, chunk=n) | {"energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0})["session_id"]
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(manager.take_work(0.1))
    manager.tell(sid, manager.try_ask(sid)["batch_id"], 1, None)
    return manager, sid


def test_a_batch_of_events_is_applied_whole_even_when_one_event_fails(tmp_path, monkeypatch):
    manager, sid = _told_session(tmp_path, 3)
    ep = "tcp://127.0.0.1:5001"
    apply = manager._apply_event

    def failing_on_frame_1(endpoint, event, arrived_at):
        if isinstance(event, Frame) and event.frame == 1:
            raise RuntimeError("handler bug")
        apply(endpoint, event, arrived_at)

    monkeypatch.setattr(manager, "_apply_event", failing_on_frame_1)
    monkeypatch.setattr(manager, "_store_run", lambda *_a: False)  # frame by frame (the run path: test_service_frame_runs)
    with pytest.raises(RuntimeError, match="handler bug"):  # raised after the batch, for the receiver to count
        manager.on_events(ep, [Frame(1, i, img) for i, img in enumerate(frames_for(0, 3))])
    s = manager.sessions[sid]
    assert list(s.received) == [True, False, True]
    counts = [x.value for x in manager.metrics.ingest_seconds.collect()[0].samples if x.name.endswith("_count")]
    assert counts == [1.0]  # one observation for the whole batch
    manager.close()


def test_a_chunk_handed_over_in_one_batch_keeps_its_acquisition_time(tmp_path):
    """Frames carry when their message came off the socket: one drained batch still spans the chunk's acquisition."""
    from service.work import acquisition_s

    manager, sid = _told_session(tmp_path, 4)
    ep = "tcp://127.0.0.1:5001"
    t0 = 1000.0
    manager.on_events(ep, [Frame(1, i, img, received_at=t0 + 0.001 * i) for i, img in enumerate(frames_for(0, 4))])
    b = manager.sessions[sid].batches[0]
    assert b.status == "complete"
    assert acquisition_s(b) == pytest.approx(0.004)  # 3 dwell intervals scaled to 4 frames, not 0
    assert manager.sessions[sid].last_frame_at == t0 + 0.003  # the decision latency starts at the last frame's arrival
    manager.close()
