"""The REST API's operations as data: what to send (``Call``) and how to read the answer, shared by ``Client`` and ``AsyncClient``.

Each function builds one request; ``parse`` turns the answer into the model it
documents or raises ``ApiError``. No I/O here, so the sync and async clients cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel

from ptychoscan.client.errors import ApiError
from service.models import AskResponse, SessionCreate, TellRequest, TellResponse
from service.responses import BatchAbandoned, Health, Readiness, Reconstruction, SessionList, SessionPositions, SessionStatus

API = "/api/v1"


@dataclass(frozen=True)
class Call:
    """One request: method, path, query, JSON body, extra headers; ``model``: what a success body is (None: raw bytes/text)."""

    method: str
    path: str
    model: type[BaseModel] | None
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    ok_statuses: tuple[int, ...] = ()
    """statuses >= 400 that are answers, not errors (``/readyz``'s 503)."""


def parse(call: Call, response: httpx.Response) -> Any:
    """The answer as ``call.model`` (or the response itself when ``call.model`` is None); ApiError for an error status."""
    if response.status_code >= 400 and response.status_code not in call.ok_statuses:
        raise ApiError.of(response)
    if call.model is None:
        return response
    return call.model.model_validate(response.json())


def health() -> Call:
    return Call("GET", "/healthz", Health)


def readiness() -> Call:
    return Call("GET", "/readyz", Readiness, ok_statuses=(503,))


def metrics() -> Call:
    return Call("GET", "/metrics", None)


def create_session(body: SessionCreate | dict) -> Call:
    """``body`` is checked here as the service checks it (a bad one raises pydantic's ValidationError before sending)."""
    spec = body if isinstance(body, SessionCreate) else SessionCreate.model_validate(body)
    return Call("POST", f"{API}/sessions", SessionStatus, json=spec.model_dump(mode="json"))


def list_sessions() -> Call:
    return Call("GET", f"{API}/sessions", SessionList)


def get_session(session_id: str) -> Call:
    return Call("GET", f"{API}/sessions/{session_id}", SessionStatus)


def delete_session(session_id: str) -> Call:
    return Call("DELETE", f"{API}/sessions/{session_id}", SessionStatus)


def ask(session_id: str, timeout_s: float | None) -> Call:
    """One long-poll of at most ``timeout_s`` s (None: the service's ask_timeout_s)."""
    params = {} if timeout_s is None else {"timeout_s": timeout_s}
    return Call("POST", f"{API}/sessions/{session_id}/ask", AskResponse, params=params)


def tell(session_id: str, batch_id: int, series: int, measured_positions_nm: list | None = None) -> Call:
    body = TellRequest(batch_id=batch_id, series=series, measured_positions_nm=measured_positions_nm)
    return Call("POST", f"{API}/sessions/{session_id}/tell", TellResponse, json=body.model_dump(mode="json", exclude_none=True))


def abandon(session_id: str, batch_id: int) -> Call:
    return Call("DELETE", f"{API}/sessions/{session_id}/batches/{batch_id}", BatchAbandoned)


def reconstruction(session_id: str, kind: str = "latest") -> Call:
    """``kind``: latest (converged once a done session has it, else live), live or converged."""
    return Call("GET", f"{API}/sessions/{session_id}/reconstruction", Reconstruction, params={"kind": kind}, headers={"Accept": "application/json"})


def reconstruction_raw(session_id: str, media_type: str, kind: str = "latest") -> Call:
    """The reconstruction as ``image/png`` or ``application/x-npy`` (the response: ``.content`` and X-* headers)."""
    return Call("GET", f"{API}/sessions/{session_id}/reconstruction", None, params={"kind": kind}, headers={"Accept": media_type})


def positions(session_id: str) -> Call:
    return Call("GET", f"{API}/sessions/{session_id}/positions", SessionPositions)


def session_file(session_id: str) -> Call:
    return Call("GET", f"{API}/sessions/{session_id}/file", None)


def checked_wait(wait_s: float) -> float:
    """An ask's total wait, s: positive (``math.inf``: no limit); ValueError otherwise."""
    if not wait_s > 0:  # also NaN
        raise ValueError(f"an ask's total wait must be > 0 s (math.inf: no limit), got {wait_s!r}")
    return float(wait_s)


def is_not_ready(err: ApiError) -> bool:
    """An ask's long-poll ran out (503 not-ready): ask again after Retry-After."""
    return err.status == 503 and err.kind == "not-ready"


def waiting_for(status: SessionStatus) -> str:
    """What a session that keeps answering ask with 503 waits for, one phrase (for ``AskTimeout``)."""
    batch = status.current_batch
    if status.state == "acquiring" and batch is not None and batch.status == "told":
        have = batch.size - batch.frames_missing
        return (f"batch {batch.batch_id} (told as series {batch.series}) has {have} of {batch.size} frames; is the detector streaming "
                f"to {status.params.get('detector_endpoint')}, where the session reads?")
    return f"session {status.state}, {status.batches_reconstructed} chunk(s) reconstructed"


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {} if not api_key else {"Authorization": f"Apikey {api_key}"}
