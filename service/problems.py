"""RFC 9457 problem-details errors: one exception type, handlers that render every error (validation included) as problem JSON."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_TYPE = "https://ptychoscan.invalid/problems/"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}


class Problem(Exception):
    """An error with an HTTP status and a one-line detail; rendered as application/problem+json."""

    def __init__(self, status: int, detail: str, *, kind: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or TITLES.get(status, "error").lower().replace(" ", "-")
        self.headers = headers or {}


def problem_response(status: int, detail: str, kind: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {
        "type": PROBLEM_TYPE + (kind or TITLES.get(status, "error").lower().replace(" ", "-")),
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type="application/problem+json")


def _loc(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error a problem-details body (FastAPI's own 422 shape included)."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem):
        return problem_response(exc.status, exc.detail, exc.kind, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return problem_response(422, f"{_loc(first.get('loc', ()))}: {first.get('msg', 'invalid')}{more}", "invalid-request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return problem_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        return problem_response(500, f"internal error: {type(exc).__name__}", "internal-error")
