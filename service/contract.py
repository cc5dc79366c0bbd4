"""The API contract's parts FastAPI does not write by itself: the API-key security scheme and typed success responses.

``document_security`` adds the scheme the gate (``service.gate``) actually checks, the
``Authorization`` header carrying ``Apikey <key>`` (or ``Bearer <key>``), and applies it,
with the scope it needs, to every operation under ``/api/v1``: reads need ``read``
(or nothing while ``open_reads``), everything else ``control``. With no keys configured
auth is off and the operations carry no security requirement.
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from service.gate import API_PREFIX, READ_METHODS, Scope, open_read
from service.settings import ServiceSettings

SECURITY_SCHEMES = {
    "ApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "the header's value is 'Apikey <key>'. Keys in the settings' api_keys may read and control; keys in read_api_keys only read.",
    },
    "Bearer": {"type": "http", "scheme": "bearer", "description": "the same keys as ApiKey, sent as 'Authorization: Bearer <key>'."},
}
"""both are the one header the gate reads; a client picks either."""


def ok(model: type[BaseModel], description: str, **extra) -> dict:
    """An OpenAPI ``responses`` entry for a JSON success body described by ``model`` (the route still returns its dict as is)."""
    return {"model": model, "description": description, **extra}


def security_for(method: str, settings: ServiceSettings, path: str = "") -> list[dict] | None:
    """The security requirement of an operation under /api/v1 (None: no key needed, auth off)."""
    if not (settings.api_keys or settings.read_api_keys):
        return None
    scope = Scope.READ if method.upper() in READ_METHODS else Scope.CONTROL
    requirement = [{name: [str(scope)]} for name in SECURITY_SCHEMES]
    if open_read(method.upper(), path, settings.open_reads):
        requirement.append({})  # reads need no key
    return requirement


def document_security(app: FastAPI, settings: ServiceSettings) -> None:
    """Put the security schemes into ``app``'s OpenAPI document and a requirement on each operation under /api/v1."""
    generate = app.openapi

    def openapi() -> dict:
        spec = generate()
        components = spec.setdefault("components", {})
        if "securitySchemes" not in components:
            components["securitySchemes"] = SECURITY_SCHEMES
            for path, operations in spec.get("paths", {}).items():
                if not path.startswith(API_PREFIX + "/"):
                    continue
                for method, operation in operations.items():
                    if (requirement := security_for(method, settings, path)) is not None:
                        operation["security"] = requirement
        return spec

    app.openapi = openapi
