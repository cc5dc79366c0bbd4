"""The API's front door (ASGI middleware): API key and scope checked from the headers, then the body read up to a size limit.

FastAPI parses a request's body before it runs a route's dependencies, so a key checked
in a dependency let anyone without a key make the service read and parse any body
(50 MB: +300 MB of memory, /healthz stalled). Here the key is checked before a byte of
the body is read, and a body over ``max_request_bytes`` is refused with 413 without
being kept.

Scopes: a key in ``api_keys`` may read and control (create, ask, tell, delete); a key
in ``read_api_keys`` may only read (GET/HEAD under ``/api/v1``). Reads need no key
while ``open_reads`` is true, but for a session's raw data (``/file``). With no keys
configured at all, auth is off.
"""

from __future__ import annotations

import hmac
from enum import StrEnum

from service.problems import problem_response
from service.settings import ServiceSettings

API_PREFIX = "/api/v1"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
KEYED_READ_SUFFIXES = ("/file",)
"""reads that need a read key even while ``open_reads``: a session's raw 4D data (status and images stay open)."""


def open_read(method: str, path: str, open_reads: bool) -> bool:
    """True if ``method`` on ``path`` may go without a key (``open_reads``, and not a raw-data download)."""
    return open_reads and method in READ_METHODS and not path.rstrip("/").endswith(KEYED_READ_SUFFIXES)


class Scope(StrEnum):
    READ = "read"
    CONTROL = "control"


class KeyRing:
    """The configured API keys and what each may do."""

    def __init__(self, control: list[str], read: list[str], open_reads: bool) -> None:
        self._keys = [(k.encode(), {Scope.READ, Scope.CONTROL}) for k in control] + [(k.encode(), {Scope.READ}) for k in read]
        self.open_reads = open_reads

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def scopes(self, token: str) -> set[Scope]:
        """The scopes of ``token`` (empty if it is not a key); compares against every key in constant time."""
        token_b = token.encode()
        found: set[Scope] = set()
        for key, scopes in self._keys:
            if hmac.compare_digest(token_b, key):
                found = scopes
        return found

    def check(self, method: str, path: str, authorization: str) -> tuple[int, str] | None:
        """None if the request may go on, else (401 or 403, why)."""
        if not self.enabled or (not path.startswith(API_PREFIX + "/") and path != API_PREFIX):
            return None
        needed = Scope.READ if method in READ_METHODS else Scope.CONTROL
        if open_read(method, path, self.open_reads):
            return None
        scheme, _, token = authorization.partition(" ")
        if not authorization or scheme.lower() not in ("apikey", "bearer") or not token.strip():
            return 401, "missing API key: send 'Authorization: Apikey <key>' or 'Bearer <key>'"
        scopes = self.scopes(token.strip())
        if not scopes:
            return 403, "API key not accepted"
        if needed not in scopes:
            return 403, f"this API key has no '{needed}' scope"
        return None


class _TooLarge(Exception):
    pass


class ApiGate:
    """ASGI middleware: auth from the headers first, then the body, at most ``max_request_bytes`` (413 beyond)."""

    def __init__(self, app, settings: ServiceSettings) -> None:
        self.app = app
        self.keys = KeyRing(settings.api_keys, settings.read_api_keys, settings.open_reads)
        self.max_bytes = settings.max_request_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refused = self.keys.check(scope["method"], scope["path"], headers.get("authorization", ""))
        if refused is not None:
            status, detail = refused
            extra = {"WWW-Authenticate": "Apikey"} if status == 401 else None
            await problem_response(status, detail, headers=extra)(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        try:
            body = await self._read_body(receive)
        except _TooLarge:
            await self._too_large(scope, receive, send)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, when the client goes

        await self.app(scope, replay, send)

    async def _read_body(self, receive) -> bytes:
        chunks, n = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            n += len(chunk)
            if n > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, scope, receive, send) -> None:
        response = problem_response(413, f"request body over {self.max_bytes} bytes (max_request_bytes)", headers={"Connection": "close"})
        await response(scope, receive, send)
