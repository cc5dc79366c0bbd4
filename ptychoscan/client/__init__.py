"""A typed Python client of the ptychoscan service's REST API (``/api/v1``, ``/healthz``, ``/readyz``, ``/metrics``).

``Client`` (blocking) and ``AsyncClient`` (asyncio) over httpx share the service's own
pydantic models (``service.models``, ``service.responses``) and raise ``ApiError`` with
the problem details on every error answer. ``ask`` long-polls and honours Retry-After::

    with Client("http://127.0.0.1:8000", api_key="...") as c:
        sid = c.create_session({"detector_endpoint": "tcp://127.0.0.1:9999", "fov_nm": [0, 0, 2, 2]}).session_id
        while not (batch := c.ask(sid)).done:
            series = acquire(batch.positions_nm)  # the microscope's part
            c.tell(sid, batch.batch_id, series)
"""

from ptychoscan.client.aio import AsyncClient
from ptychoscan.client.errors import ApiError, AskTimeout
from ptychoscan.client.sync import Client
from service.models import AskResponse, SessionCreate, TellResponse
from service.responses import ProblemDetails, SessionStatus

__all__ = ["ApiError", "AskResponse", "AskTimeout", "AsyncClient", "Client", "ProblemDetails", "SessionCreate", "SessionStatus", "TellResponse"]
