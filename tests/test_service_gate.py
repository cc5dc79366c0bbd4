"""Unauthenticated load and reach: the key is checked before the body is read, bodies are size-limited, metric labels
come from a closed set, keys have scopes, detectors come from an allow-list, responses carry no absolute paths."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, RecordingBackend, session_body

from service.app import create_app
from service.settings import ServiceSettings

READ_KEY = "read-only-key-456"


@pytest.fixture
def client(tmp_path):
    settings = ServiceSettings(storage=tmp_path / "sessions", api_keys=[KEY], read_api_keys=[READ_KEY], max_request_bytes=64 * 1024)
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        yield c


def _asgi_post(app, headers: list[tuple[bytes, bytes]], body_parts: int) -> tuple[int, int]:
    """POST /api/v1/sessions straight into the ASGI app: (status, how many body messages the app pulled)."""
    pulled = 0
    status = 0

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 1_000_000, "more_body": pulled < body_parts}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/api/v1/sessions",
        "raw_path": b"/api/v1/sessions", "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    return status, pulled


def test_a_request_without_a_key_is_refused_before_its_body_is_read(tmp_path):
    app = create_app(ServiceSettings(storage=tmp_path, api_keys=[KEY]), backend=RecordingBackend())
    status, pulled = _asgi_post(app, [(b"content-type", b"application/json")], body_parts=50)
    assert status == 401 and pulled == 0, "50 MB offered without a key: not a byte read"
    status, pulled = _asgi_post(app, [(b"authorization", b"Apikey wrong"), (b"content-type", b"application/json")], body_parts=50)
    assert status == 403 and pulled == 0


def test_request_bodies_are_size_limited(client, tmp_path):
    big = b'{"x": "' + b"a" * 100_000 + b'"}'
    r = client.post("/api/v1/sessions", content=big, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"].startswith("application/problem+json")
    app = create_app(ServiceSettings(storage=tmp_path, api_keys=[KEY], max_request_bytes=2_000_000), backend=RecordingBackend())
    status, pulled = _asgi_post(app, [(b"authorization", f"Apikey {KEY}".encode())], body_parts=50)  # no content-length: counted
    assert status == 413 and pulled <= 3


def test_metric_labels_come_from_a_closed_set(client):
    for i in range(30):
        client.request(f"INVENTED{i}", "/healthz")
    metrics = client.get("/metrics").text
    assert "INVENTED" not in metrics and 'method="other"' in metrics


def test_keys_have_scopes(tmp_path):
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], read_api_keys=[READ_KEY], open_reads=False)
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        body = session_body("tcp://127.0.0.1:5999")
        r = c.post("/api/v1/sessions", json=body, headers={"Authorization": f"Apikey {READ_KEY}"})
        assert r.status_code == 403 and "control" in r.json()["detail"]
        sid = c.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
        assert c.get(f"/api/v1/sessions/{sid}").status_code == 401
        assert c.get(f"/api/v1/sessions/{sid}", headers={"Authorization": f"Bearer {READ_KEY}"}).status_code == 200
        assert c.get("/api/v1/sessions", headers=AUTH).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200


@pytest.mark.parametrize("endpoint", ["ipc:///tmp/anything", "tcp://10.1.2.3:9999", "tcp://detector.example.org:9999"])
def test_detectors_come_from_an_allow_list(client, endpoint):
    r = client.post("/api/v1/sessions", json=session_body(endpoint), headers=AUTH)
    assert r.status_code == 422 and "detector_endpoint" in r.json()["detail"]


def test_allow_list_and_configured_detectors_are_accepted(tmp_path):
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], detectors=["tcp://127.0.0.1:5998"], detector_allow=["tcp://dcu-*.lab:9999"])
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        assert c.post("/api/v1/sessions", json=session_body("tcp://dcu-2.lab:9999"), headers=AUTH).status_code == 201
        assert c.post("/api/v1/sessions", json=session_body("tcp://127.0.0.1:5998"), headers=AUTH).status_code == 201
        assert c.post("/api/v1/sessions", json=session_body("tcp://127.0.0.1:5997"), headers=AUTH).status_code == 422


def test_responses_carry_no_absolute_paths(tmp_path):
    storage = tmp_path / "sessions"
    storage.mkdir()
    (storage / "junk.h5").write_bytes(b"not hdf5")
    with TestClient(create_app(ServiceSettings(storage=storage, api_keys=[KEY]), backend=RecordingBackend())) as c:
        sid = c.post("/api/v1/sessions", json=session_body("tcp://127.0.0.1:5996"), headers=AUTH).json()["session_id"]
        texts = [c.get(f"/api/v1/sessions/{sid}").text, c.get("/api/v1/sessions").text, c.get("/readyz").text]
        assert "junk.h5" in texts[2]
        for text in texts:
            assert str(tmp_path) not in text
