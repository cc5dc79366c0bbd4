"""The API contract in the OpenAPI document (issue 17): security scheme, typed responses, problem details for every error,
422s in the documented shape with their field errors, the detector endpoint's format, local /docs and /redoc."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, Pusher, RecordingBackend, frames_for, session_body, wait_until

from service.app import create_app
from service.models import ENDPOINT_PATTERN
from service.responses import Readiness, SessionList, SessionPositions, SessionStatus
from service.settings import ServiceSettings

jsonschema_rs = pytest.importorskip("jsonschema_rs")  # schemathesis' validator (the dev extra)
SESSIONS = "/api/v1/sessions"
PROBLEM_REF = "#/components/schemas/ProblemDetails"


@pytest.fixture
def client(tmp_path):
    settings = ServiceSettings(storage=tmp_path / "sessions", api_keys=[KEY], read_api_keys=["reader"], ask_timeout_s=5.0)
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        yield c


@pytest.fixture
def spec(client):
    return client.get("/openapi.json").json()


def operations(spec):
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            yield path, method, op


def validate(body, spec, schema) -> None:
    """``body`` is valid under ``schema`` of the document (its $refs into components resolved)."""
    jsonschema_rs.validator_for({**schema, "components": spec["components"]}).validate(body)


def test_security_scheme_is_the_header_the_gate_checks_and_applies_to_api_operations(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header", "name": "Authorization"}
    assert schemes["Bearer"]["scheme"] == "bearer"
    for path, method, op in operations(spec):
        if not path.startswith("/api/v1/"):
            assert "security" not in op, (method, path)
            continue
        scope = "read" if method == "get" else "control"
        assert {"ApiKey": [scope]} in op["security"] and {"Bearer": [scope]} in op["security"], (method, path)
        open_read = scope == "read" and not path.endswith("/file")  # open_reads: reads need no key, but for the raw data
        assert ({} in op["security"]) == open_read, (method, path)
        assert {"401", "403"} <= set(op["responses"]), (method, path)


def test_no_untyped_success_response_and_every_error_is_a_problem(spec):
    """Regression: sessions, status, reconstruction, /readyz, positions answered untyped objects ({} schema)."""
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            for media_type, content in response.get("content", {}).items():
                if int(status) >= 400 and not (path == "/readyz" and status == "503"):
                    assert media_type == "application/problem+json" and content["schema"] == {"$ref": PROBLEM_REF}, (method, path, status)
                elif media_type == "application/json":
                    assert content.get("schema", {}).get("$ref", "").startswith("#/components/schemas/"), (method, path, status)
    names = spec["components"]["schemas"]
    assert "HTTPValidationError" not in names and "ValidationError" not in names
    assert spec["components"]["schemas"]["ProblemDetails"]["properties"]["errors"]["anyOf"][0]["items"] == {"$ref": "#/components/schemas/FieldError"}


def test_a_validation_422_matches_its_documented_schema_and_lists_the_field_errors(client, spec):
    """Regression (issue 17): a 422 crashed generated clients; it must validate against the documented ProblemDetails."""
    r = client.post(SESSIONS, json={"detector_endpoint": "udp://x", "fov_nm": [0, 0, -1, 1], "budget": 0}, headers=AUTH)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    schema = spec["paths"][SESSIONS]["post"]["responses"]["422"]["content"]["application/problem+json"]["schema"]
    validate(r.json(), spec, schema)
    body = r.json()
    assert body["type"].endswith("/invalid-request")
    assert {e["loc"] for e in body["errors"]} == {"detector_endpoint", "fov_nm", "budget"}
    assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])
    ask = client.post(f"{SESSIONS}/nope/ask", params={"timeout_s": -1}, headers=AUTH)
    assert ask.status_code == 422 and ask.json()["errors"][0]["loc"] == "query.timeout_s"
    validate(ask.json(), spec, schema)


def test_domain_problems_have_no_errors_field(client):
    r = client.get(f"{SESSIONS}/nope")
    assert r.status_code == 404 and "errors" not in r.json()


def test_detector_endpoint_format_is_in_the_schema(spec):
    prop = spec["components"]["schemas"]["SessionCreate"]["properties"]["detector_endpoint"]
    assert prop["pattern"] == ENDPOINT_PATTERN and "tcp://host:port" in prop["description"] and prop["examples"]
    pattern = re.compile(ENDPOINT_PATTERN)
    for good in ("tcp://127.0.0.1:9999", "tcp://[::1]:31001", "tcp://detector.local:5555", "ipc:///tmp/d"):
        assert pattern.fullmatch(good), good
    for bad in ("127.0.0.1:9999", "tcp://host", "http://host:80", "tcp://a b:1", "ipc://"):
        assert not pattern.fullmatch(bad), bad


def test_typed_bodies_match_what_the_service_sends(client, spec):
    """The models describe the bodies (no key silently missing); JSON schema of the document and pydantic agree."""
    pusher = Pusher()
    try:
        created = client.post(SESSIONS, json=session_body(pusher.endpoint), headers=AUTH)
        assert created.status_code == 201
        sid = created.json()["session_id"]
        ask = wait_until(lambda: (x := client.post(f"{SESSIONS}/{sid}/ask", headers=AUTH)).status_code == 200 and x, what="batch 0").json()
        assert client.post(f"{SESSIONS}/{sid}/tell", json={"batch_id": 0, "series": 1}, headers=AUTH).status_code == 202
        pusher.series(1, frames_for(1, len(ask["positions_nm"])))
        wait_until(lambda: client.get(f"{SESSIONS}/{sid}").json()["reconstruction"] is not None, what="a reconstruction")
        for path, model, operation in (
            (f"{SESSIONS}/{sid}", SessionStatus, ("/api/v1/sessions/{session_id}", "get")),
            (SESSIONS, SessionList, ("/api/v1/sessions", "get")),
            (f"{SESSIONS}/{sid}/positions", SessionPositions, ("/api/v1/sessions/{session_id}/positions", "get")),
            ("/readyz", Readiness, ("/readyz", "get")),
            (f"{SESSIONS}/{sid}/reconstruction", None, ("/api/v1/sessions/{session_id}/reconstruction", "get")),
        ):
            body = client.get(path).json()
            schema = spec["paths"][operation[0]][operation[1]]["responses"]["200"]["content"]["application/json"]["schema"]
            validate(body, spec, schema)
            if model is not None:
                parsed = model.model_validate(body)
                assert not parsed.model_extra, (path, parsed.model_extra)  # every key the service sends is described
        stopped = client.delete(f"{SESSIONS}/{sid}", headers=AUTH).json()
        assert not SessionStatus.model_validate(stopped).model_extra
    finally:
        pusher.close()


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_are_served_without_a_cdn(client, path):
    """Regression (issue 17): /docs loaded Swagger UI from a CDN, blank on an offline microscope PC."""
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in r.text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text), "the page loads something from the network"
    assert "cdn" not in r.text.lower()
