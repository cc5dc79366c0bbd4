"""``AsyncClient``: ``Client``'s operations over an asyncio httpx client (same calls, same models, same ``ApiError``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ptychoscan.client import calls
from ptychoscan.client.errors import ApiError, AskTimeout
from ptychoscan.client.sync import DEFAULT_ASK_WAIT_S, DEFAULT_RETRY_AFTER_S
from service.models import AskResponse, SessionCreate, TellResponse
from service.responses import BatchAbandoned, Health, Readiness, Reconstruction, SessionPositions, SessionStatus


class AsyncClient:
    """An asyncio client of one service; see ``Client`` (``async with AsyncClient(url, key) as c: await c.ask(sid)``)."""

    def __init__(
        self, base_url: str, api_key: str | None = None, *, timeout_s: float = 30.0, ask_wait_s: float = DEFAULT_ASK_WAIT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.ask_wait_s = calls.checked_wait(ask_wait_s)
        self.http = httpx.AsyncClient(base_url=base_url, headers=calls.auth_headers(api_key), timeout=timeout_s, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def send(self, call: calls.Call, timeout_s: float | None = None) -> Any:
        response = await self.http.request(
            call.method, call.path, params=call.params or None, json=call.json, headers=call.headers or None, timeout=timeout_s or self.timeout_s
        )
        return calls.parse(call, response)

    async def health(self) -> Health:
        return await self.send(calls.health())

    async def readiness(self) -> Readiness:
        return await self.send(calls.readiness())

    async def metrics(self) -> str:
        return (await self.send(calls.metrics())).text

    async def create_session(self, body: SessionCreate | dict) -> SessionStatus:
        return await self.send(calls.create_session(body))

    async def sessions(self) -> list[SessionStatus]:
        return (await self.send(calls.list_sessions())).sessions

    async def session(self, session_id: str) -> SessionStatus:
        return await self.send(calls.get_session(session_id))

    async def delete_session(self, session_id: str) -> SessionStatus:
        return await self.send(calls.delete_session(session_id))

    async def ask(self, session_id: str, *, poll_s: float | None = None, wait_s: float | None = None,
            on_not_ready: Callable[[ApiError, int], None] | None = None) -> AskResponse:
        """The next batch (or done), long-polling as ``Client.ask`` does (Retry-After honoured between polls; ``AskTimeout``
        after ``wait_s`` s in all, None: the client's ``ask_wait_s``; ``on_not_ready(error, polls)`` after each 503, as there)."""
        wait = self.ask_wait_s if wait_s is None else calls.checked_wait(wait_s)
        t0, polls = time.monotonic(), 0
        while True:
            try:
                polls += 1
                return await self.send(calls.ask(session_id, poll_s), timeout_s=(poll_s or 300.0) + self.timeout_s)
            except ApiError as err:
                if not calls.is_not_ready(err):
                    raise
                if on_not_ready is not None:
                    on_not_ready(err, polls)  # the caller's own check between polls; it may raise to stop asking
                pause = err.retry_after_s if err.retry_after_s is not None else DEFAULT_RETRY_AFTER_S
                if time.monotonic() + pause > t0 + wait:
                    raise AskTimeout(err, session_id, time.monotonic() - t0, polls, await self._waiting_for(session_id)) from None
                await asyncio.sleep(pause)

    async def _waiting_for(self, session_id: str) -> str | None:
        try:
            return calls.waiting_for(await self.session(session_id))
        except (ApiError, httpx.HTTPError, ValueError):
            return None

    async def tell(self, session_id: str, batch_id: int, series: int, measured_positions_nm: list | None = None) -> TellResponse:
        return await self.send(calls.tell(session_id, batch_id, series, measured_positions_nm))

    async def abandon(self, session_id: str, batch_id: int) -> BatchAbandoned:
        return await self.send(calls.abandon(session_id, batch_id))

    async def reconstruction(self, session_id: str, kind: str = "latest") -> Reconstruction:
        return await self.send(calls.reconstruction(session_id, kind))

    async def reconstruction_bytes(self, session_id: str, media_type: str = "image/png", kind: str = "latest") -> bytes:
        return (await self.send(calls.reconstruction_raw(session_id, media_type, kind))).content

    async def positions(self, session_id: str) -> SessionPositions:
        return await self.send(calls.positions(session_id))

    async def download_file(self, session_id: str, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes((await self.send(calls.session_file(session_id))).content)
        return path
