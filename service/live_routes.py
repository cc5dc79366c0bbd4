"""The live operator view's routes: the page (``/live``), its static files, the event streams, positions and file download.

The page is static (HTML, vanilla JS, CSS in ``service/static``; nothing from the
network) and holds no data: everything it shows comes from ``/api/v1``, where the API
keys and scopes apply as to any client (the page sends ``Authorization: Apikey <key>``).
The event streams are left out of the OpenAPI document: they do not end while the
service runs, which a schema-driven client cannot know.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from service.events import change_events
from service.feed import ChangeFeed
from service.live import service_view, session_file, session_positions, statuses_by_id
from service.manager import SessionManager
from service.problems import problem_responses
from service.responses import SessionPositions

API = "/api/v1"
STATIC = Path(__file__).resolve().with_name("static")
"""the page's files (package data)."""
AUTH_ERRORS = (401, 403)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""no caching, no buffering in a reverse proxy (nginx): each event reaches the page when it is sent."""
HDF5_MEDIA_TYPE = "application/x-hdf5"


class Hdf5FileResponse(FileResponse):
    """A session file download: documented as HDF5 (binary), not as FastAPI's default JSON."""

    media_type = HDF5_MEDIA_TYPE


def install_live_view(app: FastAPI, manager: SessionManager, feed: ChangeFeed, ingest_status: Callable[[], dict]) -> None:
    """Add the live view's routes to ``app``; ``ingest_status()`` gives the detector streams' status (``Ingest.status``)."""

    @app.get("/live", include_in_schema=False)
    async def live_page():
        return FileResponse(STATIC / "live.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/live/static", StaticFiles(directory=STATIC), name="live-static")

    @app.get(f"{API}/events", include_in_schema=False)
    async def events():
        """Every session's status as it changes, and the service's detector streams (text/event-stream)."""
        stream = change_events(feed, lambda: statuses_by_id(manager), lambda: service_view(manager, ingest_status()))
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get(f"{API}/sessions/{{session_id}}/events", include_in_schema=False)
    async def session_events(session_id: str):
        """Session ``session_id``'s status as it changes (text/event-stream); 404 problem if there is no such session."""
        await asyncio.to_thread(statuses_by_id, manager, session_id)  # unknown: the usual problem, before the stream starts
        stream = change_events(feed, lambda: statuses_by_id(manager, session_id))
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)

    @app.get(
        f"{API}/sessions/{{session_id}}/positions",
        tags=["sessions"],
        responses={200: {"model": SessionPositions, "description": "the positions by slot"}, **problem_responses(*AUTH_ERRORS, 404, 422, 507)},
    )
    async def positions(session_id: str):
        """Every issued position (x, y), nm, by slot: its sub-sequence (batch), whether its frame is in; the field of view, nm."""
        return await asyncio.to_thread(session_positions, manager, session_id)

    @app.get(
        f"{API}/sessions/{{session_id}}/file",
        tags=["sessions"],
        response_class=Hdf5FileResponse,
        responses={
            200: {"description": "the session's HDF5 file (dataset format)", "content": {HDF5_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
            **problem_responses(*AUTH_ERRORS, 404, 409, 422, 507, s409="the session is in progress (its file is being written)"),
        },
    )
    async def session_file_download(session_id: str):
        """The file of a finished (done, stopped, failed) session."""
        path = await asyncio.to_thread(session_file, manager, session_id)
        return Hdf5FileResponse(path, media_type=HDF5_MEDIA_TYPE, filename=path.name)
