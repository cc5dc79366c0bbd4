"""REST of the simulated microscope: the SIMPLON subset (docs/DESIGN.md section 5), the scan controller and faults.

SIMPLON (what DECTRIS clients call): ``GET /detector/api/version/``,
``GET|PUT /detector/api/1.8.0/config/{key}`` (GET returns ``{"value", "value_type",
"access_mode", ...}``, PUT takes ``{"value": v}``), ``PUT
/detector/api/1.8.0/command/{arm,trigger,disarm,cancel,abort,initialize}`` (arm
returns ``{"sequence id": N}``), ``GET /detector/api/1.8.0/status/state``,
``GET|PUT /stream/api/1.8.0/config/{mode,header_detail,image_appendix}``; the rest
LiberTEM-live and DEigerClient call (pixel mask, keys listings, filewriter, monitor, ...):
``sim_microscope.simplon_extra``.

Scan controller (Nion stand-in), positions in nm: ``PUT /scan/api/1/positions``
``{"positions_nm": [[x, y], ...]}``, ``PUT /scan/api/1/park`` ``{"position_nm": [x, y]}``,
``GET|PUT /scan/api/1/settle_time`` ``{"value": s}``, ``GET /scan/api/1/probe``,
``GET /scan/api/1/readback`` (where the beam was sent for each frame of the last series: with scan errors it landed elsewhere),
``PUT /scan/api/1/command/start`` (one external trigger per remaining frame, for
``exte``/``exts``). Faults: ``GET|PUT /sim/api/1/faults`` (``FaultPlan``).
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse

from sim_microscope.detector import DetectorError, FaultPlan, SimDetector
from sim_microscope.detector_config import config_description
from sim_microscope.simplon_extra import add_simplon_extras

API = "1.8.0"


def _value(body: Any) -> Any:
    if isinstance(body, dict) and "value" in body:
        return body["value"]
    raise DetectorError('body must be {"value": ...}', 400)


def create_app(detector: SimDetector) -> FastAPI:
    """The FastAPI app serving ``detector`` and its scan controller."""
    app = FastAPI(title="ptychoscan simulated DECTRIS detector + scan controller", version=API)
    scan = detector.scan

    @app.exception_handler(DetectorError)
    async def _detector_error(_: Request, err: DetectorError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    add_simplon_extras(app, detector)  # before the generic routes: config/keys, pixel_mask, filewriter, monitor, ...

    @app.get(f"/detector/api/{API}/config/{{key}}")
    def get_config(key: str) -> dict:
        if key not in detector.config:
            raise DetectorError(f"unknown config key {key!r}", 404)
        return config_description(key, detector.config[key])

    @app.put(f"/detector/api/{API}/config/{{key}}")
    def put_config(key: str, body: Annotated[Any, Body()] = None) -> list[str]:
        detector.set_config(key, _value(body))
        return [key]

    @app.get(f"/detector/api/{API}/status/{{key}}")
    def status(key: str) -> dict:
        if key != "state":
            raise DetectorError(f"unknown status key {key!r}", 404)
        return {"value": detector.state, "value_type": "string", "access_mode": "r"}

    @app.put(f"/detector/api/{API}/command/{{command}}")
    def command(command: str, body: Annotated[Any, Body()] = None) -> dict:
        if command == "arm":
            return {"sequence id": detector.arm()}
        if command == "trigger":
            frames = detector.trigger()
            return {"sequence id": detector.sequence_id, "frames": frames}  # a DCU answers arm and trigger with the sequence id
        if command in ("disarm", "cancel", "abort", "initialize"):
            getattr(detector, command)()
            return {"sequence id": detector.sequence_id}
        raise DetectorError(f"unknown command {command!r}", 404)

    @app.get(f"/stream/api/{API}/config/{{key}}")
    def get_stream_config(key: str) -> dict:
        if key not in detector.stream_config:
            raise DetectorError(f"unknown stream config key {key!r}", 404)
        desc = {"value": detector.stream_config[key], "value_type": "string", "access_mode": "rw"}
        if key != "image_appendix":
            desc["allowed_values"] = ["enabled", "disabled"] if key == "mode" else ["all", "basic", "none"]
        return desc

    @app.put(f"/stream/api/{API}/config/{{key}}")
    def put_stream_config(key: str, body: Annotated[Any, Body()] = None) -> list[str]:
        detector.set_stream_config(key, _value(body))
        return [key]

    @app.get(f"/stream/api/{API}/status/state")
    def stream_state() -> dict:
        return {"value": "ready" if detector.stream_config["mode"] == "enabled" else "disabled", "value_type": "string"}

    @app.put("/scan/api/1/positions")
    def set_positions(body: Annotated[dict, Body()]) -> dict:
        return {"count": scan.set_positions(body.get("positions_nm"))}

    @app.put("/scan/api/1/park")
    def park(body: Annotated[dict, Body()]) -> dict:
        position = body.get("position_nm")
        if not isinstance(position, list | tuple) or len(position) != 2:
            raise DetectorError('body must be {"position_nm": [x, y]} in nm', 400)
        scan.park(position)
        return {"position_nm": list(scan.probe_nm)}

    @app.get("/scan/api/1/settle_time")
    def get_settle() -> dict:
        return {"value": scan.settle_time_s, "value_type": "float", "unit": "s"}

    @app.put("/scan/api/1/settle_time")
    def put_settle(body: Annotated[Any, Body()] = None) -> dict:
        scan.set_settle_time(_value(body))
        return {"value": scan.settle_time_s}

    @app.get("/scan/api/1/probe")
    def probe() -> dict:
        n = None if scan.positions_nm is None else len(scan.positions_nm)
        return {"position_nm": list(scan.probe_nm), "positions": n, "parked": n is None, "settle_time_s": scan.settle_time_s}

    @app.get("/scan/api/1/readback")
    def readback() -> dict:
        """Position readback of the last acquired series: where the beam was sent for each frame (nm; scan errors unknown to it)."""
        if scan.readback is None:
            raise DetectorError("no series has been acquired yet", 404)
        series, positions = scan.readback
        return {"series": series, "positions_nm": np.asarray(positions).tolist()}

    @app.put("/scan/api/1/command/start")
    def start() -> dict:
        """Fire external triggers until the armed series is complete (exte: one frame each, exts: nimages)."""
        frames = 0
        if detector.state != "ready":
            raise DetectorError(f"cannot start a scan while the detector is {detector.state}; arm it first")
        while detector.state == "ready":
            frames += detector.trigger(external=True)
        return {"frames": frames}

    @app.get("/sim/api/1/stream")
    def stream_endpoint() -> dict:
        """Where this stand-in's PUSH socket listens (``tcp://host:port``); a real DCU streams on port 9999 of its own host."""
        return {"endpoint": detector.endpoint}

    @app.get("/sim/api/1/faults")
    def get_faults() -> dict:
        return detector.faults.model_dump()

    @app.put("/sim/api/1/faults")
    def put_faults(plan: FaultPlan) -> dict:
        detector.set_faults(plan)
        return plan.model_dump()

    return app


class ServerThread:
    """Run an ASGI app with uvicorn in a thread (port 0: a free port, read back from ``port``)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self.host = host
        self._thread = threading.Thread(target=self.server.run, name="sim-rest", daemon=True)

    def start(self, timeout: float = 10.0) -> ServerThread:
        import time

        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("REST server did not start")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
