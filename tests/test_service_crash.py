"""A real uvicorn subprocess: kill -9 mid-scan, restart on the same storage, nothing acknowledged is lost; SIGTERM is graceful."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest
import zmq
from service_testing import AUTH, KEY, Pusher, frames_for, free_port, session_body, wait_until

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _start(cmd: list[str], port: int) -> tuple[subprocess.Popen, httpx.Client]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15.0)

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, timeout=90.0, interval=0.1, what="server up")  # importing torch takes > 30 s on a loaded 2-core machine
    return proc, client


def _server(storage: Path) -> tuple[subprocess.Popen, httpx.Client]:
    port = free_port()
    return _start([sys.executable, str(ROOT / "tests" / "service_server.py"), str(storage), str(port), KEY], port)


@pytest.fixture
def pusher():
    p = Pusher()
    p.sock.setsockopt(zmq.SNDTIMEO, 10_000)
    yield p
    p.close()


def test_kill9_mid_scan_then_restart_loses_nothing_and_ask_continues(tmp_path, pusher):
    storage = tmp_path / "sessions"
    proc, c = _server(storage)
    try:
        sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=12, chunk=5), headers=AUTH).json()["session_id"]
        a0 = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": 0, "series": 1}, headers=AUTH)
        f1 = frames_for(1, 5)
        pusher.series(1, f1)
        a1 = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        assert a1["batch_id"] == 1
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": 1, "series": 2}, headers=AUTH)
        f2 = frames_for(2, 5)
        pusher.start(2, 5)
        for i in range(3):
            pusher.frame(2, i, f2[i])
        wait_until(lambda: c.get(f"/api/v1/sessions/{sid}").json()["frames_persisted"] == 8, what="8 frames acknowledged")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        c.close()

    proc, c = _server(storage)
    try:
        st = c.get(f"/api/v1/sessions/{sid}").json()
        assert st["frames_received"] == 8 and st["state"] == "acquiring"
        # batch 1 resumes told (series 2 may still deliver); none of its frames comes within resume_told_timeout_s
        # (1 s in tests/service_server.py), so its missing positions are re-issued while this ask long-polls
        again = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        assert again["batch_id"] == 1
        np.testing.assert_allclose(again["positions_nm"], np.asarray(a1["positions_nm"])[3:])
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": 1, "series": 3}, headers=AUTH)
        pusher.series(3, f2[3:])
        a2 = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        assert a2["batch_id"] == 2 and len(a2["positions_nm"]) == 2
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": 2, "series": 4}, headers=AUTH)
        f3 = frames_for(4, 2)
        pusher.series(4, f3)
        assert c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()["done"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful shutdown
        c.close()
    with h5py.File(storage / f"{sid}.h5", "r") as f:
        np.testing.assert_array_equal(f["patterns"][()], np.concatenate([f1, f2, f3]).astype(np.uint32))
        np.testing.assert_allclose(f["positions_issued_nm"][:5], a0["positions_nm"])
        assert f.attrs["state"] == "done" and len(f["reconstructions"]) == 3


def test_cli_serve_starts_on_loopback_and_stops_on_sigterm(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "ptychoscan.cli", "serve", "--port", str(port), "--storage", str(tmp_path / "s"), "--api-key", KEY, "--log-level", "warning"]
    proc, c = _start(cmd, port)
    try:
        assert c.post("/api/v1/sessions", json={}, headers={"Authorization": "Apikey wrong"}).status_code == 403
        r = c.post("/api/v1/sessions", json=session_body("tcp://127.0.0.1:1"), headers=AUTH)
        assert r.status_code == 201
        assert "ptychoscan_sessions_active 1.0" in c.get("/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful shutdown
        c.close()
    with h5py.File(tmp_path / "s" / f"{r.json()['session_id']}.h5", "r") as f:
        assert f.attrs["session_id"] == r.json()["session_id"]
