"""A done session's converged reconstruction: made in the background, served as its reconstruction, made again after a restart."""

from __future__ import annotations

import threading
import time

import h5py
import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, Pusher, frames_for, session_body, wait_until

from service.app import create_app
from service.background import BackgroundJob, BackgroundWorker
from service.compute import ReconOutput
from service.converged import ConvergedRequest, converged_job
from service.converged_store import ConvergedReconstruction, converged_path, read_converged, write_converged
from service.settings import ServiceSettings
from service.spec import Beam
from service.store import session_files
from service.store_read import read_latest_reconstruction

BEAM = Beam(60_000.0, 33.0, 16, 6.0, 0.0)
FOV = (0.0, 0.0, 0.3, 0.3)


def _until(predicate, timeout=60.0):
    return wait_until(predicate, timeout=timeout, interval=0.05)


def _run_session(c, pusher, **kw) -> str:
    body = session_body(pusher.endpoint, budget=8, chunk=4, fov_nm=list(FOV), **kw)
    sid = c.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
    series = 0
    while not (ask := c.post(f"/api/v1/sessions/{sid}/ask", params={"timeout_s": 30}, headers=AUTH).json())["done"]:
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH)
        pusher.series(series, frames_for(series, len(ask["positions_nm"])) + 20)
        series += 1
    return sid


def _converged_state(c, sid):
    info = c.get(f"/api/v1/sessions/{sid}").json().get("converged_reconstruction") or {}
    return info if info.get("state") in ("done", "failed") else None


def test_done_session_gets_a_converged_reconstruction_served_as_its_reconstruction(tmp_path):
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], recon_iterations=2, torch_threads=2)
    pusher = Pusher()
    try:
        with TestClient(create_app(settings)) as c:
            sid = _run_session(c, pusher)
            info = _until(lambda: _converged_state(c, sid))
            body = c.get(f"/api/v1/sessions/{sid}/reconstruction").json()
            png = c.get(f"/api/v1/sessions/{sid}/reconstruction", headers={"Accept": "image/png"})
            live_body = c.get(f"/api/v1/sessions/{sid}/reconstruction", params={"kind": "live"}).json()
            assert c.get(f"/api/v1/sessions/{sid}/reconstruction", params={"kind": "converged"}).json()["kind"] == "converged"
            assert c.get(f"/api/v1/sessions/{sid}/reconstruction", params={"kind": "best"}).status_code == 422
    finally:
        pusher.close()
    assert info["state"] == "done", info
    assert info["passes"] >= 10 and np.isfinite(info["final_loss"])
    assert body["kind"] == "converged" and png.headers["X-Reconstruction-Kind"] == "converged"
    stored = read_converged(tmp_path / f"{sid}.h5")
    assert stored is not None and stored.n_positions == 8 and stored.recipe["optimizer"] == "gd"
    assert stored.positions_nm is None and stored.recipe["position_correction"] is None and "positions" not in info
    live, _ = read_latest_reconstruction(tmp_path / f"{sid}.h5")
    served = np.asarray(body["potential"], np.float32)
    assert np.allclose(served, stored.potential) and served.shape == live.potential.shape
    assert not np.allclose(served, live.potential), "the converged reconstruction is a new one, not the live one"
    assert live_body["kind"] == "live" and np.allclose(np.asarray(live_body["potential"], np.float32), live.potential)
    assert session_files(tmp_path) == [tmp_path / f"{sid}.h5"], "the converged file is not a session file"


def test_off_serves_the_live_reconstruction_and_a_restart_makes_the_missing_one(tmp_path):
    pusher = Pusher()
    try:
        off = ServiceSettings(storage=tmp_path, api_keys=[KEY], recon_iterations=2, torch_threads=2, recon_converged=False)
        with TestClient(create_app(off)) as c:
            sid = _run_session(c, pusher)
            time.sleep(0.3)
            status = c.get(f"/api/v1/sessions/{sid}").json()
            body = c.get(f"/api/v1/sessions/{sid}/reconstruction").json()
            refused = c.get(f"/api/v1/sessions/{sid}/reconstruction", params={"kind": "converged"})
        assert status.get("converged_reconstruction") is None and body["kind"] == "live"
        assert refused.status_code == 409 and "no converged reconstruction" in refused.json()["detail"]
        assert not converged_path(tmp_path / f"{sid}.h5").exists()
        on = ServiceSettings(storage=tmp_path, api_keys=[KEY], recon_iterations=2, torch_threads=2)
        with TestClient(create_app(on)) as c:
            info = _until(lambda: _converged_state(c, sid))
            assert info["state"] == "done"
            assert c.get(f"/api/v1/sessions/{sid}/reconstruction").json()["kind"] == "converged"
            assert c.get("/readyz").json()["detail"]["load_errors"] == [], "the converged file is not loaded as a session"
        with TestClient(create_app(on)) as c:  # a second restart finds it made: not queued again, status says done
            assert c.get(f"/api/v1/sessions/{sid}").json()["converged_reconstruction"]["state"] == "done"
    finally:
        pusher.close()


# --- the background worker and the converged job alone ------------------------------------


def _session_file(path, n=6, k=16):
    with h5py.File(path, "w") as f:
        f["patterns"] = np.full((n, k, k), 5, np.uint16)
        f["positions_nm"] = np.random.default_rng(0).random((n, 2)) * 0.3
        f["received"] = np.array([1] * (n - 1) + [0], np.uint8)  # the last slot never got its frame
    return path


class _Recorder:
    def __init__(self):
        self.states: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, sid, info):
        with self.lock:
            self.states.append((sid, dict(info)))

    def last(self, sid):
        with self.lock:
            return next((info for s, info in reversed(self.states) if s == sid), None)


def _fake_run(passes=3, fail_for=None, seen=None, losses=(3.0, 2.0, 1.0), positions=None):
    def run(job, on_pass):
        if seen is not None:
            seen.append(len(job.positions_nm))
        if positions is not None:
            positions.append(np.array(job.positions_nm))
        if fail_for is not None and len(job.positions_nm) == fail_for:
            raise RuntimeError("boom")
        for i in range(1, passes + 1):
            on_pass(i)
        return ReconOutput(np.ones((4, 4), np.float32), (0.0, 0.0), 0.02, list(losses)[:passes]), {"optimizer": "gd"}

    return run


def _job(path, sid, run, rec, retriever=None, **kw):
    return converged_job(lambda: ConvergedRequest(sid, path, BEAM, FOV, **kw), run, rec, retriever)


def _run_alone(job, rec, sid):
    worker = BackgroundWorker(busy=lambda: False)
    worker.start()
    try:
        assert worker.submit(job)
        return _until(lambda: (info := rec.last(sid) or {}).get("state") in ("done", "failed") and info)
    finally:
        worker.stop()


def test_converged_job_reads_only_received_frames_and_writes_atomically(tmp_path):
    seen: list[int] = []
    rec = _Recorder()
    worker = BackgroundWorker(busy=lambda: False)
    worker.start()
    try:
        path = _session_file(tmp_path / "s1.h5")
        assert worker.submit(_job(path, "s1", _fake_run(seen=seen), rec))
        _until(lambda: (rec.last("s1") or {}).get("state") == "done")
    finally:
        worker.stop()
    assert seen == [5], "only the 5 received frames are reconstructed"
    assert [info["state"] for _, info in rec.states] == ["running", "done"]
    assert rec.last("s1")["probe"]["source"] == "nominal"
    stored = read_converged(path)
    assert stored.passes == 3 and stored.n_positions == 5 and stored.loss_history == [3.0, 2.0, 1.0]
    assert stored.recipe["probe_aberrations"]["defocus_nm"] == 0.0
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left"


def test_worker_waits_for_decisions_between_steps_runs_urgent_first_and_drops_at_stop(tmp_path):
    busy = threading.Event()
    order: list[str] = []

    def job(key, urgent=False, steps=3, dropped=None):
        def run(pause):
            for _ in range(steps):
                pause()
                order.append(key)
        return BackgroundJob(key, run, urgent=urgent, on_dropped=dropped)

    worker = BackgroundWorker(busy=busy.is_set, poll_s=0.005)
    busy.set()
    worker.start()
    assert worker.submit(job("a"))
    time.sleep(0.2)
    assert order == [], "nothing runs while a decision is being computed"
    assert worker.submit(job("b")) and worker.submit(job("u", urgent=True)) and not worker.submit(job("b")), "a queued key is not queued twice"
    busy.clear()
    _until(lambda: len(order) == 9)
    assert order == ["a"] * 3 + ["u"] * 3 + ["b"] * 3, "the urgent job goes before the older non-urgent one"
    dropped: list[str] = []
    busy.set()
    worker.submit(job("c", dropped=lambda: dropped.append("c")))
    worker.submit(job("d", dropped=lambda: dropped.append("d")))
    _until(lambda: worker.current == "c")
    worker.stop(timeout=5)
    assert sorted(dropped) == ["c", "d"] and order.count("c") == 0


def test_one_failing_job_does_not_stop_the_next(tmp_path):
    rec = _Recorder()
    worker = BackgroundWorker(busy=lambda: False)
    worker.start()
    try:
        worker.submit(BackgroundJob("raises", lambda pause: 1 / 0))  # an error that escapes a job
        worker.submit(_job(_session_file(tmp_path / "bad.h5", n=6), "bad", _fake_run(fail_for=5), rec))
        worker.submit(_job(tmp_path / "gone.h5", "gone", _fake_run(), rec))
        worker.submit(_job(_session_file(tmp_path / "good.h5", n=8), "good", _fake_run(), rec))
        _until(lambda: (rec.last("good") or {}).get("state") == "done")
    finally:
        worker.stop()
    assert rec.last("bad")["state"] == "failed" and "boom" in rec.last("bad")["error"]
    assert rec.last("gone")["state"] == "failed" and "cannot read its frames" in rec.last("gone")["error"]


def test_write_is_all_or_nothing(tmp_path, monkeypatch):
    rec = ConvergedReconstruction(np.zeros((3, 3), np.float32), (0.0, 0.0), 0.02, 4, 2, [1.0, 0.5], {"optimizer": "gd"})
    path = tmp_path / "x.h5"
    assert read_converged(path) is None
    import service.converged_store as store

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "replace", full_disk)
    with pytest.raises(store.ConvergedStoreError, match="No space left"):
        write_converged(path, rec)
    assert not converged_path(path).exists() and not list(tmp_path.iterdir())
    monkeypatch.undo()
    write_converged(path, rec)
    assert read_converged(path).passes == 2


def test_measured_positions_off_the_fov_are_clipped_as_the_live_reconstructions_clip_them(tmp_path):
    """Regression: the converged job read the file's measured positions unclipped; one stray reading (3 nm off a 0.3 nm
    field) made it fail with probe windows outside the grid, a slight one moved frames elsewhere than in the live image."""
    path = _session_file(tmp_path / "s1.h5")
    with h5py.File(path, "a") as f:
        f["positions_nm"][0] = [3.0, -1.0]
    seen_positions: list[np.ndarray] = []
    rec = _Recorder()
    info = _run_alone(_job(path, "s1", _fake_run(positions=seen_positions), rec), rec, "s1")
    assert info["state"] == "done", info
    (used,) = seen_positions
    assert used.min() >= 0.0 and used.max() <= 0.3 and np.allclose(used[0], [0.3, 0.0])


def test_a_diverged_run_is_reported_failed_and_nothing_is_stored(tmp_path):
    """Regression: a run still diverged after the step halvings was stored and its NaN loss put into the status, which
    made GET /sessions (every session's status) answer 500."""
    path = _session_file(tmp_path / "s1.h5")
    rec = _Recorder()
    info = _run_alone(_job(path, "s1", _fake_run(losses=(3.0, 2.0, float("nan"))), rec), rec, "s1")
    assert info["state"] == "failed" and "diverged" in info["error"] and "final_loss" not in info
    assert read_converged(path) is None


def test_a_failed_probe_retrieval_falls_back_to_the_nominal_probe(tmp_path):
    """Regression: asked to retrieve the probe (retrieval failed during the scan), a second failure lost the converged
    reconstruction altogether; now it is made with the nominal probe and the status says the retrieval failed."""
    def broken(patterns, positions, beam, fov_nm, pause, invalid_pixels=None):
        raise RuntimeError("no overlap")

    path = _session_file(tmp_path / "s1.h5")
    rec = _Recorder()
    info = _run_alone(_job(path, "s1", _fake_run(), rec, retriever=broken, retrieve=True), rec, "s1")
    assert info["state"] == "done", info
    assert info["probe"]["state"] == "failed" and "no overlap" in info["probe"]["error"] and info["probe"]["defocus_nm"] == 0.0
    assert read_converged(path).recipe["probe_aberrations"]["defocus_nm"] == 0.0


def test_position_correction_on_request_refines_the_positions_stores_and_reports_them(tmp_path):
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], recon_iterations=2, torch_threads=2)
    pusher = Pusher()
    try:
        with TestClient(create_app(settings)) as c:
            sid = _run_session(c, pusher, position_correction=True)
            info = _until(lambda: _converged_state(c, sid))
    finally:
        pusher.close()
    assert info["state"] == "done", info
    moved = info["positions"]
    assert moved["corrected"] == 8 and 0 < moved["rms_shift_nm"] <= moved["max_shift_nm"] <= 0.08 + 1e-9
    assert np.asarray(moved["scan_matrix"]).shape == (2, 2)
    stored = read_converged(tmp_path / f"{sid}.h5")
    assert stored.positions_nm.shape == (8, 2) and stored.scan_matrix.shape == (2, 2)
    assert stored.recipe["position_correction"]["max_shift_nm"] == 0.08
    with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
        measured = f["positions_nm"][()]
    shift = np.linalg.norm(stored.positions_nm - np.clip(measured, 0.0, 0.3), axis=1)
    assert np.isclose(np.sqrt((shift**2).mean()), moved["rms_shift_nm"], atol=1e-5)


def test_a_restart_queues_only_the_most_recent_missing_converged_reconstructions(tmp_path, caplog):
    """Suspicion from review, now bounded: after an upgrade every older done session lacked its converged file and all were
    queued at once (hours of background work on a CPU); only the ``recon_converged_backlog`` most recent are now."""
    pusher = Pusher()
    try:
        off = ServiceSettings(storage=tmp_path, api_keys=[KEY], recon_iterations=2, torch_threads=2, recon_converged=False)
        with TestClient(create_app(off)) as c:
            sids = []
            for _ in range(3):
                sids.append(_run_session(c, pusher))
                time.sleep(0.05)  # distinct creation times
        on = ServiceSettings(storage=tmp_path, api_keys=[KEY], recon_iterations=2, torch_threads=2, recon_converged_backlog=2)
        with TestClient(create_app(on)) as c:
            for sid in sids[1:]:
                assert _until(lambda sid=sid: _converged_state(c, sid))["state"] == "done"
            assert c.get(f"/api/v1/sessions/{sids[0]}").json().get("converged_reconstruction") is None
        assert not converged_path(tmp_path / f"{sids[0]}.h5").exists()
        assert "1 older done sessions have no converged reconstruction" in caplog.text
    finally:
        pusher.close()


def test_the_position_summary_survives_a_restart_and_the_option_needs_converged_reconstructions(tmp_path):
    """Regressions (review): after a restart the status lost converged_reconstruction.positions (only in memory); a service
    with recon_converged off accepted position_correction and silently never made the corrected positions."""
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], recon_iterations=2, torch_threads=2)
    pusher = Pusher()
    try:
        with TestClient(create_app(settings)) as c:
            sid = _run_session(c, pusher, position_correction=True)
            before = _until(lambda: _converged_state(c, sid))
        with TestClient(create_app(settings)) as c:
            after = c.get(f"/api/v1/sessions/{sid}").json()["converged_reconstruction"]
        assert before["positions"] is not None and after["positions"] == before["positions"]
        off = ServiceSettings(storage=tmp_path / "off", api_keys=[KEY], recon_converged=False)
        with TestClient(create_app(off)) as c:
            r = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=8, chunk=4, fov_nm=list(FOV), position_correction=True),
                       headers=AUTH)
        assert r.status_code == 422 and "recon_converged" in r.json()["detail"], r.text
    finally:
        pusher.close()
