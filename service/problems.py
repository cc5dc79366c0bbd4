"""RFC 9457 problem-details errors: one exception type, handlers that render every error (validation included) as problem JSON.

The session layer raises ``service.errors.SessionError`` (no HTTP in it); ``HTTP_OF_ERROR``
here is the one place its kinds become HTTP statuses and problem types.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ErrorKind, SessionError
from service.responses import PROBLEM_TYPE, FieldError, ProblemDetails

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


PROBLEM_MEDIA_TYPE = "application/problem+json"


__all__ = ["PROBLEM_TYPE", "FieldError", "Problem", "ProblemDetails", "install_problem_handlers", "problem_response", "problem_responses"]


def problem_responses(*statuses: int, **descriptions: str) -> dict[int, dict]:
    """OpenAPI ``responses`` entries for ``statuses``: each a problem+json body (``descriptions['s503']`` etc. override the title)."""
    return {
        status: {
            "description": descriptions.get(f"s{status}", TITLES.get(status, "error")),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        for status in statuses
    }


def document_problems(app: FastAPI) -> None:
    """Make the app's OpenAPI document say what its errors are: ProblemDetails, never FastAPI's HTTPValidationError.

    FastAPI documents a 422 ``{"detail": [...]}`` as application/json for any route it
    is not told otherwise about; the handlers here send problem+json with a string
    detail, so a client or a schema-driven test believing the document was misled.
    """
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = generate()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            problem = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem.pop("$defs", {}))  # FieldError, referenced from ProblemDetails.errors
            schemas["ProblemDetails"] = problem
            text = str(spec["paths"])
            for name in ("HTTPValidationError", "ValidationError"):
                if f"#/components/schemas/{name}" not in text:
                    schemas.pop(name, None)
        return app.openapi_schema

    app.openapi = openapi


class Problem(Exception):
    """An error with an HTTP status and a one-line detail; rendered as application/problem+json."""

    def __init__(self, status: int, detail: str, *, kind: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind or TITLES.get(status, "error").lower().replace(" ", "-")
        self.headers = headers or {}


HTTP_OF_ERROR: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.UNKNOWN_SESSION: (404, "unknown-session"),
    ErrorKind.WRONG_STATE: (409, "wrong-state"),
    ErrorKind.SERIES_TAKEN: (409, "series-taken"),
    ErrorKind.TOO_MANY_SESSIONS: (409, "too-many-sessions"),
    ErrorKind.INVALID_REQUEST: (422, "invalid-request"),
    ErrorKind.STORAGE_UNAVAILABLE: (507, "storage-unavailable"),
    ErrorKind.SHUTTING_DOWN: (503, "service-unavailable"),
}
"""domain error kind -> (HTTP status, problem type after ``PROBLEM_TYPE``); shutting-down keeps the generic type it always had."""


def session_problem(err: SessionError) -> Problem:
    """The HTTP problem a domain error is answered with (``HTTP_OF_ERROR``; Retry-After from ``retry_after_s``)."""
    status, kind = HTTP_OF_ERROR[err.kind]
    headers = None if err.retry_after_s is None else {"Retry-After": str(err.retry_after_s)}
    return Problem(status, err.message, kind=kind, headers=headers)


def problem_response(
    status: int, detail: str, kind: str | None = None, headers: dict[str, str] | None = None, errors: list[dict] | None = None
) -> JSONResponse:
    """The problem+json answer (``ProblemDetails``); ``errors``: the fields a request was refused for (validation 422 only)."""
    body = {
        "type": PROBLEM_TYPE + (kind or TITLES.get(status, "error").lower().replace(" ", "-")),
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _loc(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def field_errors(errors: list[dict]) -> list[dict]:
    """pydantic's validation errors as ``FieldError`` dicts (loc dot-joined, message, type); input values are not echoed."""
    return [FieldError(loc=_loc(e.get("loc", ())), msg=str(e.get("msg", "invalid")), type=str(e.get("type", "value_error"))).model_dump() for e in errors]


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error a problem-details body (FastAPI's own 422 shape included)."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem):
        return problem_response(exc.status, exc.detail, exc.kind, exc.headers)

    @app.exception_handler(SessionError)
    async def _refused(_: Request, exc: SessionError):
        problem = session_problem(exc)
        return problem_response(problem.status, problem.detail, problem.kind, problem.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        detail = f"{_loc(first.get('loc', ()))}: {first.get('msg', 'invalid')}{more}"
        return problem_response(422, detail, "invalid-request", errors=field_errors(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI's 400 for a JSON body it could not decode (not UTF-8): malformed JSON is 422 everywhere else
            return problem_response(422, f"body: not valid JSON ({type(exc.__cause__).__name__})", "invalid-request")
        return problem_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        return problem_response(500, f"internal error: {type(exc).__name__}", "internal-error")
