"""Domain errors (``service.errors``) become HTTP problems in one place: every kind is mapped, and each answer is pinned byte for byte."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, RecordingBackend, session_body, wait_until

from service.app import create_app
from service.errors import ErrorKind, SessionError
from service.problems import HTTP_OF_ERROR, PROBLEM_TYPE, session_problem
from service.settings import ServiceSettings
from service.store import SessionStore, StoreError

EP = "tcp://127.0.0.1:5999"


def test_every_error_kind_has_an_http_status_and_problem_type():
    assert set(HTTP_OF_ERROR) == set(ErrorKind)
    p = session_problem(SessionError(ErrorKind.SHUTTING_DOWN, "later", retry_after_s=5))
    assert (p.status, p.kind, p.detail, p.headers) == (503, "service-unavailable", "later", {"Retry-After": "5"})
    assert session_problem(SessionError(ErrorKind.UNKNOWN_SESSION, "x")).headers == {}


def _pinned(r, status: int, title: str, kind: str, detail: str, retry_after: str | None = None) -> None:
    """``r`` is exactly the problem+json answer the service has always sent for this error."""
    body = {"type": PROBLEM_TYPE + kind, "title": title, "status": status, "detail": detail}
    raw = json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()
    assert r.status_code == status, r.text
    assert r.content == raw
    expected = {"content-type": "application/problem+json", "content-length": str(len(raw))}
    if retry_after is not None:
        expected["retry-after"] = retry_after
    assert dict(r.headers) == expected


@pytest.fixture
def client(tmp_path):
    settings = ServiceSettings(
        storage=tmp_path / "sessions", api_keys=[KEY], ask_timeout_s=5.0, max_sessions=2, max_budget=100, max_grid_pixels=64, retry_after_s=7
    )
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        yield c


def test_each_domain_error_is_answered_as_it_always_was(client, monkeypatch):
    create = "/api/v1/sessions"
    _pinned(client.get(f"{create}/nope"), 404, "Not Found", "unknown-session", "no session 'nope'")
    _pinned(client.post(create, json=session_body(EP, budget=200), headers=AUTH), 422, "Unprocessable Content", "invalid-request", "budget: at most 100 positions")
    far = "tcp://10.0.0.1:5000"
    _pinned(
        client.post(create, json=session_body(far), headers=AUTH), 422, "Unprocessable Content", "invalid-request",
        f"detector_endpoint: {far} is not an allowed detector (settings detectors, detector_allow)",
    )
    r = client.post(create, json=session_body(EP, fov_nm=[0.0, 0.0, 500.0, 500.0]), headers=AUTH)
    assert r.status_code == 422 and r.json()["type"] == PROBLEM_TYPE + "invalid-request" and r.json()["detail"].startswith("fov_nm: the reconstruction grid")

    a = client.post(create, json=session_body(EP), headers=AUTH).json()["session_id"]
    b = client.post(create, json=session_body(EP), headers=AUTH).json()["session_id"]
    _pinned(client.post(create, json=session_body(EP), headers=AUTH), 409, "Conflict", "too-many-sessions", "2 sessions are active already (max_sessions)")
    _pinned(client.get(f"{create}/{a}/reconstruction"), 409, "Conflict", "wrong-state", f"session {a} has no reconstruction yet")

    ask = wait_until(lambda: (x := client.post(f"{create}/{a}/ask", headers=AUTH)).status_code == 200 and x, what="batch 0").json()
    n = len(ask["positions_nm"])
    tell = f"{create}/{a}/tell"
    _pinned(client.post(tell, json={"batch_id": 5, "series": 3}, headers=AUTH), 409, "Conflict", "wrong-state", "batch 5 has not been issued (ask first)")
    _pinned(
        client.post(tell, json={"batch_id": 0, "series": 3, "measured_positions_nm": [[0, 0]]}, headers=AUTH), 422, "Unprocessable Content", "invalid-request",
        f"measured_positions_nm has 1 rows, the batch has {n} positions",
    )
    assert client.post(tell, json={"batch_id": 0, "series": 3}, headers=AUTH).status_code == 202
    _pinned(client.post(tell, json={"batch_id": 0, "series": 4}, headers=AUTH), 409, "Conflict", "wrong-state", "batch 0 is told (told with series 3)")

    wait_until(lambda: client.post(f"{create}/{b}/ask", headers=AUTH).status_code == 200, what="batch 0 of b")
    _pinned(
        client.post(f"{create}/{b}/tell", json={"batch_id": 0, "series": 3}, headers=AUTH), 409, "Conflict", "series-taken",
        f"series 3 of {EP} is already bound to another batch",
    )
    assert client.delete(f"{create}/{b}", headers=AUTH).status_code == 200
    _pinned(client.post(f"{create}/{b}/ask", headers=AUTH), 409, "Conflict", "wrong-state", f"session {b} is stopped")
    _pinned(client.post(f"{create}/{b}/tell", json={"batch_id": 0, "series": 9}, headers=AUTH), 409, "Conflict", "wrong-state", f"session {b} is stopped")

    def full(*_args, **_kw):
        raise StoreError("x.h5: cannot create session file (No space left on device)")

    monkeypatch.setattr(SessionStore, "create", full)
    _pinned(client.post(create, json=session_body(EP), headers=AUTH), 507, "Insufficient Storage", "storage-unavailable", "x.h5: cannot create session file (No space left on device)")
    client.app.state.service.manager.accepting = False
    _pinned(
        client.post(create, json=session_body(EP), headers=AUTH), 503, "Service Unavailable", "service-unavailable",
        "the service is shutting down and takes no new sessions", retry_after="7",
    )  # Retry-After is settings.retry_after_s (7 here), as for ask's 503


def test_the_manager_refuses_with_domain_errors_that_carry_no_http(tmp_path):
    from service.manager import SessionManager
    from service.metrics import ServiceMetrics
    from service.models import SessionCreate
    from service.problems import Problem

    m = SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY], max_budget=10, retry_after_s=3), ServiceMetrics())
    body = SessionCreate(**session_body(EP, budget=20, chunk=5)).model_dump(mode="json")
    with pytest.raises(SessionError) as unknown:
        m.get("nope")
    with pytest.raises(SessionError) as too_big:
        m.create(body)
    m.accepting = False
    with pytest.raises(SessionError) as closing:
        m.create(body)
    assert [e.value.kind for e in (unknown, too_big, closing)] == [ErrorKind.UNKNOWN_SESSION, ErrorKind.INVALID_REQUEST, ErrorKind.SHUTTING_DOWN]
    assert closing.value.retry_after_s == 3 and not any(isinstance(e.value, Problem) for e in (unknown, too_big, closing))
    m.close()
