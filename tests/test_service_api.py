"""REST lifecycle, status codes (4xx never 5xx for bad input), auth, ask/tell idempotency, problem details, OpenAPI."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, RecordingBackend, frames_for, session_body, wait_until

from service.app import create_app
from service.settings import ServiceSettings


@pytest.fixture
def client(tmp_path):
    settings = ServiceSettings(storage=tmp_path / "sessions", api_keys=[KEY], ask_timeout_s=5.0)
    backend = RecordingBackend()
    app = create_app(settings, backend=backend)
    with TestClient(app) as c:
        c.backend = backend
        yield c


def _problem(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert set(body) >= {"type", "title", "status", "detail"} and body["status"] == status
    return body


def test_health_and_openapi_are_open(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    assert "/api/v1/sessions/{session_id}/ask" in spec["paths"]
    assert client.get("/docs").status_code == 200
    r = wait_until(lambda: (x := client.get("/readyz")).status_code == 200 and x, what="readyz")
    assert r.json()["checks"]["storage_writable"] is True


def test_auth_401_403(client, pusher):
    body = session_body(pusher.endpoint)
    _problem(client.post("/api/v1/sessions", json=body), 401)
    _problem(client.post("/api/v1/sessions", json=body, headers={"Authorization": "Apikey wrong"}), 403)
    _problem(client.post("/api/v1/sessions", json=body, headers={"Authorization": "Basic abc"}), 401)
    r = client.post("/api/v1/sessions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 201
    sid = r.json()["session_id"]
    _problem(client.post(f"/api/v1/sessions/{sid}/ask"), 401)
    _problem(client.delete(f"/api/v1/sessions/{sid}", headers={"Authorization": "Bearer nope"}), 403)


@pytest.mark.parametrize(
    "change",
    [
        {"fov_nm": [0, 0, -1, 1]},
        {"fov_nm": [0, 0, 1]},
        {"budget": 0},
        {"chunk": 50, "budget": 10},
        {"strategy": "random"},
        {"detector_endpoint": "localhost:9999"},
        {"detector_endpoint": "tcp://typo-no-port"},
        {"detector_endpoint": "inproc://elsewhere"},
        {"detector_endpoint": "tcp://host:70000"},
        {"detector_bit_depth": 12},
        {"energy_ev": "sixty"},
        {"unknown_field": 1},
        {"budget": 10**9},
        {"fov_nm": [0, 0, 1e6, 1e6]},
        {"fov_nm": [0, 0, 1e308, 1]},
        {"detector_pixels": 1024, "budget": 20000},
        {"energy_ev": 1.88e307},  # was a 500 (ZeroDivisionError)
        {"energy_ev": 1e-300},
        {"fov_nm": [1e20, 0, 1, 1]},  # was accepted, then raised in the batched reconstruction
        {"convergence_mrad": 1e9},
        {"detector_pixel_mrad": 1e9},
        {"defocus_nm": -1e30},
    ],
)
def test_bad_session_body_is_422(client, pusher, change):
    body = _problem(client.post("/api/v1/sessions", json=session_body(pusher.endpoint, **change), headers=AUTH), 422)
    assert body["detail"]


def test_malformed_json_and_unknown_ids(client):
    r = client.post("/api/v1/sessions", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    _problem(r, 422)
    nan = b'{"detector_endpoint": "tcp://127.0.0.1:1", "fov_nm": [0, 0, NaN, 1]}'
    _problem(client.post("/api/v1/sessions", content=nan, headers={**AUTH, "content-type": "application/json"}), 422)
    surrogate = b'{"detector_endpoint": "tcp://h\\udcff:5", "fov_nm": [0, 0, 1, 1]}'  # pyzmq cannot encode it: it once ended the receive thread
    _problem(client.post("/api/v1/sessions", content=surrogate, headers={**AUTH, "content-type": "application/json"}), 422)
    _problem(client.get("/api/v1/sessions/nope"), 404)
    _problem(client.post("/api/v1/sessions/nope/ask", headers=AUTH), 404)
    _problem(client.post("/api/v1/sessions/nope/tell", json={"batch_id": 0, "series": 1}, headers=AUTH), 404)
    _problem(client.delete("/api/v1/sessions/nope", headers=AUTH), 404)
    _problem(client.get("/api/v1/nothing-here"), 404)
    metrics = client.get("/metrics").text  # each request timed under its route template and status, ids never in a label
    assert 'method="POST",route="/api/v1/sessions/{session_id}/ask",status="404"' in metrics
    assert 'method="POST",route="/api/v1/sessions",status="422"' in metrics
    assert 'route="unmatched",status="404"' in metrics and "nope" not in metrics


def test_lifecycle_ask_tell_idempotent(client, pusher):
    r = client.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=12, chunk=5), headers=AUTH)
    assert r.status_code == 201
    sid = r.json()["session_id"]
    assert r.json()["state"] == "created"
    assert r.json()["strategy"]["used"] == "sparse-grid"
    _problem(client.get(f"/api/v1/sessions/{sid}/reconstruction"), 409)

    series = 7
    seen_batches = []
    while True:
        a1 = client.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH)
        assert a1.status_code == 200, a1.text
        ask = a1.json()
        if ask["done"]:
            assert ask == {"batch_id": None, "positions_nm": [], "done": True}
            break
        a2 = client.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH)
        assert a2.json() == ask, "asking again before telling must return the same batch"
        assert client.get(f"/api/v1/sessions/{sid}").json()["state"] == "acquiring"
        bid, pos = ask["batch_id"], np.asarray(ask["positions_nm"])
        seen_batches.append((bid, len(pos)))
        assert ((pos >= 0) & (pos <= 1)).all()
        # wrong number of measured positions: 422; unknown batch: 409
        _problem(client.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": bid, "series": series, "measured_positions_nm": [[0, 0]] * (len(pos) + 1)}, headers=AUTH), 422)
        _problem(client.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": bid + 5, "series": series}, headers=AUTH), 409)
        _problem(client.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": -1, "series": series}, headers=AUTH), 422)
        _problem(client.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": bid, "series": 2**70}, headers=AUTH), 422)
        _problem(client.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": bid, "series": "x"}, headers=AUTH), 422)
        _problem(client.post(f"/api/v1/sessions/{sid}/tell", json=[1, 2], headers=AUTH), 422)
        tell = {"batch_id": bid, "series": series, "measured_positions_nm": (pos + 0.001).tolist()}
        t1 = client.post(f"/api/v1/sessions/{sid}/tell", json=tell, headers=AUTH)
        assert t1.status_code == 202, t1.text
        t2 = client.post(f"/api/v1/sessions/{sid}/tell", json=tell, headers=AUTH)
        assert t2.status_code == 200 and t2.json()["batch_id"] == bid, "a repeated tell is idempotent"
        _problem(client.post(f"/api/v1/sessions/{sid}/tell", json={**tell, "series": series + 100}, headers=AUTH), 409)
        pusher.series(series, frames_for(series, len(pos)))
        series += 1
    assert seen_batches == [(0, 5), (1, 5), (2, 2)]
    status = client.get(f"/api/v1/sessions/{sid}").json()
    assert status["state"] == "done" and status["frames_received"] == 12 and status["batches_reconstructed"] == 3
    assert client.backend.calls == 3
    jobs = client.backend.jobs
    assert [(len(j.positions_nm), j.n_new, j.final, j.init is not None) for j in jobs] == [(5, 5, False, False), (10, 5, False, True), (12, 2, True, True)], (
        "each job says which positions are new since its warm start, and whether it is the session's last"
    )
    assert all(j.acquisition_s is not None and 0 <= j.acquisition_s < 10 for j in jobs), "each chunk's acquisition time, from its frames' arrival"
    # measured positions are what the reconstruction saw
    assert np.allclose(client.backend.jobs[-1].positions_nm[:5], np.asarray(client.backend.jobs[0].positions_nm[:5]))
    png = client.get(f"/api/v1/sessions/{sid}/reconstruction", headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    raw = client.get(f"/api/v1/sessions/{sid}/reconstruction").json()
    assert np.asarray(raw["potential"]).shape == tuple(raw["shape"])
    _problem(client.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": 0, "series": 1}, headers=AUTH), 409)
    d = client.delete(f"/api/v1/sessions/{sid}", headers=AUTH)
    assert d.status_code == 200 and d.json()["state"] == "done"
    metrics = client.get("/metrics").text
    assert "ptychoscan_ingest_frames_total 12.0" in metrics
    assert "ptychoscan_decision_latency_seconds_count 2.0" in metrics
    waits = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("ptychoscan_decision_wait_seconds_count")]
    assert waits and waits[0] >= 2, "every chunk reconstructed waited for the worker, the last one too"
    assert "ptychoscan_http_request_duration_seconds_bucket" in metrics and sid not in metrics


def test_ask_long_poll_times_out_with_503_then_delete_stops(client, pusher):
    sid = client.post("/api/v1/sessions", json=session_body(pusher.endpoint), headers=AUTH).json()["session_id"]
    ask = client.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
    client.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 3}, headers=AUTH)
    r = client.post(f"/api/v1/sessions/{sid}/ask", params={"timeout_s": 0.3}, headers=AUTH)  # frames never come
    _problem(r, 503)
    assert r.headers["Retry-After"] == "1"
    _problem(client.post(f"/api/v1/sessions/{sid}/ask", params={"timeout_s": -1}, headers=AUTH), 422)
    d = client.delete(f"/api/v1/sessions/{sid}", headers=AUTH)
    assert d.status_code == 200 and d.json()["state"] == "stopped"
    _problem(client.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH), 409)


def test_adaptive_uses_the_shipped_gru_policy(client, pusher):
    r = client.post("/api/v1/sessions", json=session_body(pusher.endpoint, strategy="adaptive"), headers=AUTH)
    strategy = r.json()["strategy"]
    assert strategy["requested"] == "adaptive" and strategy["used"] == "gru-policy"
    assert strategy["fallback"] is None and strategy["planner_version"].startswith("gru-policy:")


def test_broken_policy_checkpoint_falls_back_to_sparse_grid_and_says_so(tmp_path):
    from service.planner import resolve_planner

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    choice = resolve_planner("adaptive", broken)
    assert choice.planner.name == "sparse-grid"
    assert choice.fallback.startswith("GRU policy failed to load")


def test_settings_from_env_and_file(tmp_path, monkeypatch):
    from ptychoscan.config import ConfigError
    from service.settings import load_settings

    monkeypatch.setenv("PTYCHOSCAN_ASK_TIMEOUT_S", "3.5")
    monkeypatch.setenv("PTYCHOSCAN_API_KEYS", '["a", "b"]')
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("port: 9123\nmax_sessions: 3\n")
    s = load_settings(cfg, storage=str(tmp_path / "x"))
    assert (s.ask_timeout_s, s.api_keys, s.port, s.max_sessions) == (3.5, ["a", "b"], 9123, 3)
    assert s.recon_deadline_fraction == 0.5
    monkeypatch.setenv("PTYCHOSCAN_RECON_DEADLINE_FRACTION", "null")  # how the demo turns the deadline off
    assert load_settings(cfg, storage=str(tmp_path / "x")).recon_deadline_fraction is None
    from service.app import Service

    assert Service(s).backend.options["subpixel_steps"] == s.recon_subpixel_steps == 32  # the reconstructor gets it
    monkeypatch.setenv("PTYCHOSCAN_RECON_SUBPIXEL_STEPS", "null")
    assert load_settings(cfg, storage=str(tmp_path / "x")).recon_subpixel_steps is None  # exact positions
    cfg.write_text("port: -4\n")
    with pytest.raises(ConfigError, match="port"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="detectors"):
        load_settings(None, detectors=["localhost:1"])
    with pytest.raises(ConfigError, match="tcp://host:port"):
        load_settings(None, detectors=["tcp://typo-no-port"])  # once stopped every detector's ingest at start-up


@pytest.mark.parametrize("connection", ["always", "in_flight"])
def test_readyz_waits_for_the_configured_detector(tmp_path, pusher, connection):
    """Always connected: readiness needs the connection; connected only in flight: a detector not in use must be reachable."""
    from service_testing import free_port

    nobody = f"tcp://127.0.0.1:{free_port()}"
    settings = ServiceSettings(storage=tmp_path / "s", api_keys=[KEY], detectors=[pusher.endpoint, nobody], detector_connection=connection)
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        body = wait_until(lambda: (r := c.get("/readyz")).json()["checks"]["planner_warm"] and r, what="warm").json()
        assert body["ready"] is False and body["checks"]["ingest_connected"] is False
        assert body["detail"]["ingest"][pusher.endpoint]["connected"] is (connection == "always")
        assert body["detail"]["ingest"][nobody]["connected"] is False
    if connection == "in_flight":  # the unreachable one alone held readiness back
        settings = ServiceSettings(storage=tmp_path / "s2", api_keys=[KEY], detectors=[pusher.endpoint])
        with TestClient(create_app(settings, backend=RecordingBackend())) as c:
            body = wait_until(lambda: (r := c.get("/readyz")).json()["checks"]["planner_warm"] and r, what="warm").json()
            assert body["checks"]["ingest_connected"] is True


def test_the_png_view_is_the_field_of_view_enlarged_with_its_own_grid():
    """The PNG was the whole grid (the field ~40 % of it, padding around) at one pixel per grid pixel: 111 px with a lattice
    too small to see after the README's walk-through. It is now the field (plus 0.1 nm) enlarged to >= 384 px."""
    from service.png import MIN_SIDE_PX, field_view

    pot = np.zeros((110, 110))
    pot[40:70, 40:70] = np.random.default_rng(0).normal(size=(30, 30))
    view, origin, pixel = field_view(pot, (-2.0, -2.0), 0.05, (0.0, 0.0, 1.5, 1.5))
    assert min(view.shape) >= MIN_SIDE_PX and pixel < 0.05
    assert origin == pytest.approx((-0.1, -0.1)) and view.shape[0] * pixel == pytest.approx(1.75, abs=0.06)
    view_all, origin_all, _ = field_view(pot, (-2.0, -2.0), 0.05, (50.0, 50.0, 1.0, 1.0))  # a field off the grid: the whole grid
    assert origin_all == (-2.0, -2.0) and view_all.shape[0] >= MIN_SIDE_PX
