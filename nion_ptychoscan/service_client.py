"""The ptychoscan service's public REST API (``/api/v1``) as the Nion driver uses it: create, ask, tell, status, reconstruction.

``ask`` honours 503 + Retry-After while the service reconstructs or waits for frames,
and gives up (ServiceError) after ``max_idle_asks`` such answers in a row during which no
frame of the told batch arrived: the frames are going somewhere the session does not read.
Times in s, positions in nm.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import httpx
import numpy as np


class ServiceError(RuntimeError):
    """The service refused a call or could not be reached; one line naming the call and the reason."""


def checked(response: httpx.Response, what: str) -> dict:
    """The JSON body of a 2xx answer ({} if empty); ServiceError with the problem's detail otherwise."""
    if response.status_code >= 400:
        try:
            body = response.json()
            reason = body.get("detail") or body.get("title") or response.text
        except ValueError:
            reason = response.text
        first = str(reason).splitlines()[0] if reason else ""
        raise ServiceError(f"{what} failed: HTTP {response.status_code}: {first}")
    return response.json() if response.content else {}


class ServiceClient:
    """One service (``base_url``, API key); ``ask_timeout_s`` is the long-poll per ask."""

    def __init__(self, base_url: str, api_key: str, *, ask_timeout_s: float = 30.0) -> None:
        self.ask_timeout_s = ask_timeout_s
        self._http = httpx.Client(base_url=base_url, headers={"Authorization": f"Apikey {api_key}"}, timeout=ask_timeout_s + 30)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, what: str, **kw) -> httpx.Response:
        try:
            return self._http.request(method, path, **kw)
        except httpx.TransportError as err:
            raise ServiceError(f"{what}: cannot reach {self._http.base_url}: {type(err).__name__}") from None

    def create_session(self, body: dict) -> str:
        """POST /sessions (``SessionCreate`` fields); the new session's id."""
        return checked(self._call("POST", "/api/v1/sessions", "create session", json=body), "create session")["session_id"]

    def status(self, session_id: str) -> dict:
        return checked(self._call("GET", f"/api/v1/sessions/{session_id}", "session status"), "session status")

    def tell(self, session_id: str, batch_id: int, series: int, measured_positions_nm: list) -> dict:
        body = {"batch_id": batch_id, "series": series, "measured_positions_nm": measured_positions_nm}
        return checked(self._call("POST", f"/api/v1/sessions/{session_id}/tell", "tell", json=body), "tell")

    def delete(self, session_id: str) -> None:
        """End the session early (DELETE); a session already gone is not an error."""
        r = self._call("DELETE", f"/api/v1/sessions/{session_id}", "delete session")
        if r.status_code != 404:
            checked(r, "delete session")

    def reconstruction(self, session_id: str) -> tuple[np.ndarray, tuple[float, float], float] | None:
        """(phase (rad) [y, x], grid origin (x, y) nm, pixel nm) of the latest chunk, or None while there is none."""
        r = self._call("GET", f"/api/v1/sessions/{session_id}/reconstruction", "reconstruction", headers={"Accept": "application/x-npy"})
        if r.status_code in (404, 409):
            return None
        checked(r, "reconstruction")
        origin = tuple(float(v) for v in r.headers.get("X-Origin-Nm", "0,0").split(","))
        return np.load(io.BytesIO(r.content)), (origin[0], origin[1]), float(r.headers.get("X-Pixel-Nm", "nan"))

    def ask(self, session_id: str, *, deadline: float, max_idle_asks: int = 3, say: Callable[[str], None] = lambda line: None) -> dict:
        """The next batch (``batch_id``, ``positions_nm``, ``done``), waiting out 503s until ``deadline`` (monotonic s)."""
        idle, seen = 0, None
        while True:
            r = self._call("POST", f"/api/v1/sessions/{session_id}/ask", "ask", params={"timeout_s": self.ask_timeout_s})
            if r.status_code != 503:
                return checked(r, "ask")
            status = self.status(session_id)
            batch = status.get("current_batch") or {}
            waiting = status.get("state") == "acquiring" and batch.get("status") == "told"
            frames = status.get("frames_received")
            idle = idle + 1 if waiting and (seen is None or frames == seen) else 0
            seen = frames
            say(f"ask: 503, session {status.get('state')}, batch {batch.get('batch_id')} {batch.get('status')}, {frames} frames received")
            if idle >= max_idle_asks:
                raise ServiceError(f"no frame of batch {batch.get('batch_id')} reached the service after {idle} asks: "
                                   f"it reads {status.get('params', {}).get('detector_endpoint')}")
            wait = float(r.headers.get("Retry-After", "1") or 1)
            if time.monotonic() + wait > deadline:
                raise ServiceError("ask: the service is still busy at the driver's deadline")
            time.sleep(min(wait, 5.0))
