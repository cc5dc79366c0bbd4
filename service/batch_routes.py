"""The batch routes: ``DELETE /api/v1/sessions/{id}/batches/{batch_id}`` abandons a batch (``service.abandon``)."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from fastapi import Path as PathParam

from service.abandon import abandon_batch
from service.contract import ok
from service.manager import SessionManager
from service.problems import problem_responses
from service.responses import BatchAbandoned

API = "/api/v1"
AUTH_ERRORS = (401, 403)
ABANDON_OPERATION = "abandon_batch_api_v1_sessions__session_id__batches__batch_id__delete"
"""its operationId (FastAPI's generated form, as the other operations'), for OpenAPI links."""


def install_batch_routes(app: FastAPI, manager: SessionManager) -> None:
    """Add the batch routes to ``app``."""

    @app.delete(
        f"{API}/sessions/{{session_id}}/batches/{{batch_id}}",
        tags=["ask/tell"],
        operation_id=ABANDON_OPERATION,
        responses={
            200: ok(BatchAbandoned, "the batch's positions still missing a frame are issued again (the next ask returns them)"),
            **problem_responses(
                *AUTH_ERRORS, 404, 409, 422, 507, s409="the session ended, or the batch is not issued yet or has every frame already"
            ),
        },
    )
    async def abandon_batch_route(session_id: str, batch_id: int = PathParam(..., ge=0, le=2**31 - 1, description="the batch to abandon")):
        """Abandon an issued or told batch, e.g. when the scan was cut short or the beam left the positions.

        Its positions still missing a frame are issued again; the series it was told with
        is cut off: a later frame of it is refused (counted ``unexpected``), so a frame is
        never stored at a position a new series is bound to. Frames already stored stay.
        Tell the batch again with a new series. An issued batch is left as it is.
        """
        return await asyncio.to_thread(abandon_batch, manager, session_id, batch_id)
