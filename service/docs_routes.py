"""The API's documentation pages, ``/docs`` and ``/redoc``, served from the service itself.

FastAPI's own pages load Swagger UI and ReDoc (scripts, styles, fonts) from a CDN: blank
on a microscope PC without internet. Here both paths serve one self-contained page
(``service/static/api.html``: HTML, inline CSS and vanilla JS, nothing from the network)
that reads ``/openapi.json`` and lists every operation, its security, parameters and
responses, and every schema. Create the app with ``docs_url=None, redoc_url=None``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse

PAGE = Path(__file__).resolve().with_name("static") / "api.html"
DOC_PATHS = ("/docs", "/redoc")


def install_api_docs(app: FastAPI) -> None:
    """Serve ``PAGE`` at ``DOC_PATHS`` (left out of the OpenAPI document)."""

    async def api_page():
        return FileResponse(PAGE, media_type="text/html", headers={"Cache-Control": "no-cache"})

    for path in DOC_PATHS:
        app.add_api_route(path, api_page, methods=["GET"], include_in_schema=False)
