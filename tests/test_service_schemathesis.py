"""schemathesis against the REST API, in-process (ASGI): no 5xx, and every response is what the OpenAPI document says.

Stateless: every operation, positive and negative examples generated from the schema.
Stateful: schemathesis' state machine follows the document's links (create -> get, ask,
reconstruction, delete; ask -> tell), with hooks that make ``POST /sessions`` bodies
valid (a loopback detector the settings allow, a grid and a frame stack that fit) so
the per-session operations run against live sessions, not only 404s.

Checks on every response: no 5xx (the one exception is ask's documented long-poll
503 ``not-ready`` with Retry-After), the status code and the content type are
documented, and the body validates against the documented schema. Bounded (seeded, a
few examples per operation) to run in CI in well under a minute on a 2-core machine.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from service_testing import AUTH, KEY, RecordingBackend, wait_until

from service.app import create_app
from service.compute import BeamKey
from service.settings import ServiceSettings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.python import asgi  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
SESSIONS = "/api/v1/sessions"
ASK = f"{SESSIONS}/{{session_id}}/ask"
EXAMPLES = 12
"""examples per operation and generation mode (stateless)."""
FAST = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": list(HealthCheck)}


def header(response, name: str) -> str:
    """A response header's first value ('' if absent); schemathesis keeps each header as a list."""
    values = response.headers.get(name.lower()) or response.headers.get(name) or [""]
    return values[0]


class Api:
    """The service app behind schemathesis' in-process ASGI client; counts what it was asked and what it answered."""

    def __init__(self, tmp_path) -> None:
        # ask's default long-poll short (a live session waits for frames nobody sends); few sessions, so max_sessions' 409 is reached
        self.settings = ServiceSettings(storage=tmp_path / "sessions", api_keys=[KEY], ask_timeout_s=0.2, max_sessions=6)
        self.app = create_app(self.settings, backend=RecordingBackend(keep_jobs=False))
        self.schema = schemathesis.openapi.from_asgi("/openapi.json", self.app)  # starts the app's lifespan
        self.client = asgi.get_client(self.app).__enter__()
        self.client.headers.update(AUTH)
        wait_until(lambda: self.client.get("/readyz").status_code == 200, timeout=30.0, what="readyz")  # planners warm
        self.calls: dict[tuple[str, int], int] = {}
        self.not_ready = 0

    def check(self, case, response) -> None:
        """No 5xx but ask's long-poll 503; then the documented status, content type and body."""
        self.calls[(case.operation.label, response.status_code)] = self.calls.get((case.operation.label, response.status_code), 0) + 1
        if response.status_code >= 500:
            body = response.json() if "json" in header(response, "content-type") else {}
            designed = (
                response.status_code == 503
                and case.operation.path == ASK
                and header(response, "retry-after")
                and str(body.get("type", "")).endswith("/not-ready")
            )
            assert designed, f"{response.status_code} from {case.operation.label}: {response.text[:500]}\n{case.as_curl_command()}"
            self.not_ready += 1
        case.validate_response(response, checks=CHECKS)

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        asgi.shutdown_lifespans()  # stops the service: the chunk in flight, files flushed and closed


@pytest.fixture
def api(tmp_path):
    a = Api(tmp_path)
    yield a
    a.close()


def test_stateless_every_operation(api):
    t0 = time.perf_counter()
    operations = [result.ok() for result in api.schema.get_all_operations()]
    assert len(operations) == 13  # healthz, readyz, metrics, 10 under /api/v1 (positions, file and abandon counted)
    examples = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, **FAST)
            def run(case):
                nonlocal examples
                examples += 1
                api.check(case, case.call(session=api.client))

            try:
                run()
            except Unsatisfiable:  # negative: an operation with no parameters and no body has nothing to get wrong
                assert mode == GenerationMode.NEGATIVE
    statuses = sorted({status for _, status in api.calls})
    print(f"stateless: {len(operations)} operations, {examples} examples, {time.perf_counter() - t0:.1f} s, statuses {statuses}")
    assert examples >= 100
    assert {200, 404, 422} <= set(statuses)  # 201 needs a detector the settings allow: the stateful run's hooks


def _within(x: float, limit: float) -> float:
    return max(-limit, min(limit, x))


def _side(x: float, limit: float) -> float:
    """A positive width or height at most ``limit`` (the JSON schema of fov_nm cannot say 'positive'; the model checks it)."""
    return min(abs(x), limit) if abs(x) > 1e-3 else limit


def _valid_session_hooks(api: Api, endpoints: list[str]) -> None:
    """Schema hooks for the stateful run: a valid session body, ask's long-poll bounded."""

    @api.schema.hook("flatmap_body").apply_to(method="POST", path=SESSIONS)
    def valid_session(context, body):
        if not isinstance(body, dict):
            return st.just(body)
        body = dict(body)

        def num(name: str, default: float) -> float:
            """The body's number ``name``, else ``default`` (a negative example may put a list or a string there)."""
            v = body.get(name, default)
            return v if isinstance(v, int | float) and not isinstance(v, bool) else default

        k = min(int(num("detector_pixels", 16)), 32)
        mrad = min(max(float(num("detector_pixel_mrad", 1.68)), 0.5), 100.0)
        budget = max(1, min(int(num("budget", 12)), 60))
        energy = min(max(float(num("energy_ev", 60e3)), 1e3), 1e6)
        convergence = min(max(float(num("convergence_mrad", 33.0)), 1.0), 200.0)
        defocus = _within(float(num("defocus_nm", 0.0)), 1e5)
        beam = BeamKey(energy, convergence, k, mrad, defocus)
        fit = 0.9 * (api.settings.max_grid_pixels - k) * beam.pixel_nm  # the grid side limit, nm
        fov = body.get("fov_nm")
        x0, y0, w, h = fov if isinstance(fov, list | tuple) and len(fov) == 4 and all(isinstance(v, int | float) for v in fov) else (0.0, 0.0, 1.0, 1.0)
        body.update(
            energy_ev=energy,
            convergence_mrad=convergence,
            defocus_nm=defocus,
            detector_pixels=k,
            detector_pixel_mrad=mrad,
            budget=budget,
            chunk=max(1, min(int(num("chunk", 5)), budget)),
            fov_nm=[_within(x0, 1e6), _within(y0, 1e6), _side(w, min(5.0, fit)), _side(h, min(5.0, fit))],
        )
        return st.sampled_from(endpoints).map(lambda ep: {**body, "detector_endpoint": ep})

    @api.schema.hook("map_query").apply_to(method="POST", path=ASK)
    def short_poll(context, query):
        if query and isinstance(query.get("timeout_s"), int | float):
            query = {**query, "timeout_s": min(query["timeout_s"], 0.2)}
        return query


def test_stateful_links_with_valid_sessions(api, pushers):
    endpoints = [p.endpoint for p in pushers] + [p.endpoint.replace("127.0.0.1", "localhost") for p in pushers]
    assert all(api.settings.detector_allowed(ep) for ep in endpoints)
    _valid_session_hooks(api, endpoints)
    base = api.schema.as_state_machine()

    class Workflow(base):
        def get_call_kwargs(self, case):
            return {"session": api.client}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            api.check(case, response)

        def teardown(self):
            # each scenario starts from no active session (max_sessions), so a replayed scenario meets the same service
            for status in api.client.get(SESSIONS).json()["sessions"]:
                if status["state"] in ("created", "acquiring", "reconstructing"):
                    api.client.delete(f"{SESSIONS}/{status['session_id']}")

    t0 = time.perf_counter()
    Workflow.run(settings=settings(max_examples=25, stateful_step_count=10, phases=[Phase.generate], **FAST))
    created = api.calls.get((f"POST {SESSIONS}", 201), 0)
    live = {label for (label, status) in api.calls if status in (200, 202) and "{session_id}" in label}
    print(f"stateful: {sum(api.calls.values())} calls, {created} sessions created, {api.not_ready} ask 503 not-ready, {time.perf_counter() - t0:.1f} s, {sorted(api.calls.items())}")
    assert created >= 3, api.calls  # the hooks make create succeed
    assert {f"GET {SESSIONS}/{{session_id}}", f"POST {ASK}"} <= live  # links took real session ids to the per-session operations


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", SESSIONS, {"body": {"detector_endpoint": "tcp://127.0.0.1:1", "fov_nm": [0, 0, -1, 1]}}, 422),
        ("GET", f"{SESSIONS}/{{session_id}}", {"path_parameters": {"session_id": "nope"}}, 404),
        ("POST", ASK, {"path_parameters": {"session_id": "nope"}}, 404),
        ("POST", f"{SESSIONS}/{{session_id}}/tell", {"path_parameters": {"session_id": "nope"}, "body": {"batch_id": 0, "series": 1}}, 404),
        ("GET", f"{SESSIONS}/{{session_id}}/reconstruction", {"path_parameters": {"session_id": "nope"}}, 404),
        ("GET", "/metrics", {}, 200),
    ],
)
def test_errors_and_metrics_are_documented(api, method, path, kwargs, status):
    """Regression: the document promised FastAPI's 422 ``{"detail": [...]}`` as JSON, no 404/409, and JSON from /metrics;
    the service sends problem+json (a string detail) and Prometheus text."""
    case = api.schema[path][method].Case(**kwargs)
    response = case.call(session=api.client)
    assert response.status_code == status, response.text
    case.validate_response(response, checks=CHECKS)
    if status >= 400:
        assert header(response, "content-type").startswith("application/problem+json")


def test_unauthenticated_is_documented(api):
    """401 and 403 (the API-key gate, before any route) are documented problems too."""
    case = api.schema[SESSIONS]["POST"].Case(body={"detector_endpoint": "tcp://127.0.0.1:1", "fov_nm": [0, 0, 1, 1]})
    for authorization, status in ((None, 401), ("Apikey wrong", 403)):
        headers = {"Authorization": authorization} if authorization else {}
        client = asgi.get_client(api.app)
        response = case.call(session=client, headers=headers)
        assert response.status_code == status
        case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("path", [SESSIONS, f"{SESSIONS}/nope/tell"])
def test_body_not_utf8_is_422(api, path):
    """Regression (found by the stateless run): a JSON body that is not UTF-8 was FastAPI's 400, undocumented;
    malformed JSON is 422 everywhere else."""
    response = api.client.post(path, data=b"&\xff\xfeI", headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"].startswith("body: not valid JSON")
