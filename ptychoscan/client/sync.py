"""``Client``: the service's REST API over a blocking httpx client, every answer a model of ``service.models``/``service.responses``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ptychoscan.client import calls
from ptychoscan.client.errors import ApiError, AskTimeout
from service.models import AskResponse, SessionCreate, TellResponse
from service.responses import BatchAbandoned, Health, Readiness, Reconstruction, SessionPositions, SessionStatus

DEFAULT_RETRY_AFTER_S = 1.0
"""wait between asks when a 503 not-ready carries no Retry-After, s."""
DEFAULT_ASK_WAIT_S = 600.0
"""how long ``ask`` keeps polling a session that answers 503 not-ready before it raises ``AskTimeout``, s."""


class Client:
    """A client of one service at ``base_url`` (e.g. http://127.0.0.1:8000), with ``api_key`` sent as 'Authorization: Apikey <key>'.

    ``timeout_s``: per request, s, on top of an ask's long-poll. ``ask_wait_s``: how long one
    ``ask`` may keep getting 503 not-ready in all, s (``math.inf``: for ever). Errors raise
    ``ApiError`` with the problem details. Use as a context manager, or call ``close``.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 30.0, ask_wait_s: float = DEFAULT_ASK_WAIT_S,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.timeout_s = timeout_s
        self.ask_wait_s = calls.checked_wait(ask_wait_s)
        self.http = httpx.Client(base_url=base_url, headers=calls.auth_headers(api_key), timeout=timeout_s, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(self, call: calls.Call, timeout_s: float | None = None) -> Any:
        """Make ``call``; its parsed answer (ApiError on an error status)."""
        response = self.http.request(
            call.method, call.path, params=call.params or None, json=call.json, headers=call.headers or None, timeout=timeout_s or self.timeout_s
        )
        return calls.parse(call, response)

    # --- operations -------------------------------------------------------------------

    def health(self) -> Health:
        return self.send(calls.health())

    def readiness(self) -> Readiness:
        """``/readyz`` (its 503 is an answer: ``ready`` false)."""
        return self.send(calls.readiness())

    def metrics(self) -> str:
        return self.send(calls.metrics()).text

    def create_session(self, body: SessionCreate | dict) -> SessionStatus:
        return self.send(calls.create_session(body))

    def sessions(self) -> list[SessionStatus]:
        return self.send(calls.list_sessions()).sessions

    def session(self, session_id: str) -> SessionStatus:
        return self.send(calls.get_session(session_id))

    def delete_session(self, session_id: str) -> SessionStatus:
        """Stop the session (a finished one stays as it is)."""
        return self.send(calls.delete_session(session_id))

    def ask(self, session_id: str, *, poll_s: float | None = None, wait_s: float | None = None,
            on_not_ready: Callable[[ApiError, int], None] | None = None) -> AskResponse:
        """The next batch (or done), long-polling: each ask waits up to ``poll_s`` s (None: the service's default); on 503
        not-ready it asks again after Retry-After, until ``wait_s`` s have passed in all (None: the client's ``ask_wait_s``),
        then raises ``AskTimeout`` (an ApiError, and a TimeoutError) saying what the session waits for. ``on_not_ready(error,
        polls)`` is called after each such 503 (``polls``: asks so far), before the wait; an exception it raises ends the ask.
        """
        wait = self.ask_wait_s if wait_s is None else calls.checked_wait(wait_s)
        t0, polls = time.monotonic(), 0
        while True:
            try:
                polls += 1
                return self.send(calls.ask(session_id, poll_s), timeout_s=(poll_s or 300.0) + self.timeout_s)
            except ApiError as err:
                if not calls.is_not_ready(err):
                    raise
                if on_not_ready is not None:
                    on_not_ready(err, polls)  # the caller's own check between polls; it may raise to stop asking
                pause = err.retry_after_s if err.retry_after_s is not None else DEFAULT_RETRY_AFTER_S
                if time.monotonic() + pause > t0 + wait:
                    raise AskTimeout(err, session_id, time.monotonic() - t0, polls, self._waiting_for(session_id)) from None
                time.sleep(pause)

    def _waiting_for(self, session_id: str) -> str | None:
        try:
            return calls.waiting_for(self.session(session_id))
        except (ApiError, httpx.HTTPError, ValueError):
            return None  # the error is about the ask; what the session waits for is only a hint

    def tell(self, session_id: str, batch_id: int, series: int, measured_positions_nm: list | None = None) -> TellResponse:
        return self.send(calls.tell(session_id, batch_id, series, measured_positions_nm))

    def abandon(self, session_id: str, batch_id: int) -> BatchAbandoned:
        """Give up on an issued or told batch: its positions still missing a frame are issued again."""
        return self.send(calls.abandon(session_id, batch_id))

    def reconstruction(self, session_id: str, kind: str = "latest") -> Reconstruction:
        """``kind``: latest (the converged reconstruction once a done session has it, else the live one), live or converged."""
        return self.send(calls.reconstruction(session_id, kind))

    def reconstruction_bytes(self, session_id: str, media_type: str = "image/png", kind: str = "latest") -> bytes:
        """The reconstruction as PNG (``image/png``) or .npy (``application/x-npy``) bytes."""
        return self.send(calls.reconstruction_raw(session_id, media_type, kind)).content

    def positions(self, session_id: str) -> SessionPositions:
        return self.send(calls.positions(session_id))

    def download_file(self, session_id: str, path: str | Path) -> Path:
        """Save a finished session's HDF5 file to ``path``."""
        path = Path(path)
        path.write_bytes(self.send(calls.session_file(session_id)).content)
        return path
