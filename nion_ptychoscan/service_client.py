"""The Nion driver's view of the service: ``ptychoscan.client.Client`` plus the driver's policy, errors as one-line ``ServiceError``.

All HTTP goes through ``Client`` (long-polling ``ask`` with Retry-After, typed answers).
What is the driver's own: ``ask`` gives up after ``max_idle_asks`` 503s in a row during
which no frame of the told batch arrived (the frames go where the session does not read),
or at the driver's deadline; a reconstruction not there yet is None; deleting a session
that is gone is not an error. Times in s, positions in nm.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import numpy as np

from ptychoscan.client import ApiError, AskResponse, AskTimeout, Client, SessionStatus


class ServiceError(RuntimeError):
    """The service refused a call or could not be reached; one line naming the call and the reason; ``status``: the HTTP
    status of a refusal (None otherwise)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class IdleBatch:
    """``Client.ask``'s check between 503s: ServiceError after ``max_idle_asks`` of them in a row while the told batch got no frame."""

    def __init__(self, client: Client, session_id: str, max_idle_asks: int, say: Callable[[str], None]) -> None:
        self.client, self.session_id, self.max_idle_asks, self.say = client, session_id, max_idle_asks, say
        self.idle, self.seen = 0, None

    def __call__(self, err: ApiError, polls: int) -> None:
        status = self.client.session(self.session_id)
        batch = status.current_batch
        waiting = status.state == "acquiring" and batch is not None and batch.status == "told"
        frames = status.frames_received
        self.idle = self.idle + 1 if waiting and (self.seen is None or frames == self.seen) else 0
        self.seen = frames
        self.say(f"ask: 503, session {status.state}, batch {batch.batch_id if batch else None} {batch.status if batch else None}, "
                 f"{frames} frames received")
        if self.idle >= self.max_idle_asks:
            raise ServiceError(f"no frame of batch {batch.batch_id} reached the service after {self.idle} asks: "
                               f"it reads {status.params.get('detector_endpoint')}")


class ServiceClient:
    """One service (``base_url``, API key); ``ask_timeout_s`` is the long-poll per ask, s."""

    def __init__(self, base_url: str, api_key: str, *, ask_timeout_s: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        self.ask_timeout_s = ask_timeout_s
        self.client = Client(base_url, api_key, timeout_s=30.0, transport=transport)

    def close(self) -> None:
        self.client.close()

    def _do(self, what: str, operation: Callable, *args, **kw):
        """``operation(*args, **kw)`` with its errors as one ServiceError line naming ``what``."""
        try:
            return operation(*args, **kw)
        except ServiceError:
            raise
        except AskTimeout as err:
            raise ServiceError(f"{what}: {err.args[0]}") from None
        except ApiError as err:
            detail = err.problem.detail if err.problem is not None else err.text
            first = str(detail).splitlines()[0] if detail else ""
            raise ServiceError(f"{what} failed: HTTP {err.status}: {first}", err.status) from None
        except httpx.TransportError as err:
            raise ServiceError(f"{what}: cannot reach {self.client.http.base_url}: {type(err).__name__}") from None

    def create_session(self, body: dict) -> str:
        """A new session (``SessionCreate`` fields); its id."""
        return self._do("create session", self.client.create_session, body).session_id

    def status(self, session_id: str) -> SessionStatus:
        return self._do("session status", self.client.session, session_id)

    def tell(self, session_id: str, batch_id: int, series: int, measured_positions_nm: list) -> None:
        self._do("tell", self.client.tell, session_id, batch_id, series, measured_positions_nm)

    def delete(self, session_id: str) -> None:
        """End the session early; a session already gone is not an error."""
        try:
            self._do("delete session", self.client.delete_session, session_id)
        except ServiceError as err:
            if err.status != 404:
                raise

    def reconstruction(self, session_id: str) -> tuple[np.ndarray, tuple[float, float], float] | None:
        """(phase (rad) [y, x], grid origin (x, y) nm, pixel nm) of the latest reconstruction, or None while there is none."""
        try:
            recon = self._do("reconstruction", self.client.reconstruction, session_id)
        except ServiceError as err:
            if err.status in (404, 409):
                return None
            raise
        return np.asarray(recon.potential, dtype=np.float64), (recon.origin_nm[0], recon.origin_nm[1]), float(recon.pixel_nm)

    def ask(self, session_id: str, *, deadline: float, max_idle_asks: int = 3, say: Callable[[str], None] = lambda line: None) -> AskResponse:
        """The next batch (``batch_id``, ``positions_nm``, ``done``), waiting out 503s until ``deadline`` (monotonic s)."""
        wait = deadline - time.monotonic()
        if wait <= 0:
            raise ServiceError("ask: the driver's deadline has passed")
        idle = IdleBatch(self.client, session_id, max_idle_asks, say)
        return self._do("ask", self.client.ask, session_id, poll_s=self.ask_timeout_s, wait_s=wait, on_not_ready=idle)
