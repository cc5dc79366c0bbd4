"""The rest of the SIMPLON surface LiberTEM-live's controller and DECTRIS's DEigerClient call (routes registered before the generic ones).

- ``GET|PUT /detector/api/1.8.0/config/pixel_mask``: the mask in DECTRIS's encoded-array
  form, ``{"__darray__": [1, 0, 0], "type": "<u4", "shape": [rows, columns],
  "filters": ["base64"], "data": <base64 of the C-order bytes>}``; PUT takes the same form
  (or a nested list). The mask is stored, never applied to frames.
- keys listings: ``GET /{detector,stream,filewriter,monitor}/api/1.8.0/{config,status}/keys``
  (and a bare ``config/``), ``GET /stream/api/version/`` and the others' versions.
- ``GET /detector/api/1.8.0/status/humidity`` (%), ``.../status/temperature`` (°C),
  ``PUT .../command/status_update``, ``GET /stream/api/1.8.0/status/dropped`` (0: the
  stand-in's PUSH blocks rather than drop).
- filewriter and monitor: ``GET|PUT .../config/mode`` (``enabled`` | ``disabled``; nothing
  is written or monitored either way) and ``.../status/state``.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI

from sim_microscope.detector import DetectorError, SimDetector

API = "1.8.0"
MODES = ["enabled", "disabled"]
DETECTOR_STATUS = {"humidity": (2.0, "float", "%"), "temperature": (24.0, "float", "degC")}


def encode_darray(array: np.ndarray) -> dict:
    """DECTRIS's JSON form of an array (base64 of the C-order bytes; ``type`` a numpy dtype string, ``shape`` in C order)."""
    a = np.ascontiguousarray(array)
    return {"__darray__": [1, 0, 0], "type": a.dtype.str, "shape": list(a.shape), "filters": ["base64"], "data": base64.b64encode(a.tobytes()).decode()}


def decode_darray(value: Any, shape: tuple[int, int]) -> np.ndarray:
    """A pixel mask of ``shape`` from the encoded-array form or a nested list; DetectorError (400) if it is neither or the shape differs."""
    try:
        if isinstance(value, dict) and "__darray__" in value:
            if value.get("filters", ["base64"]) != ["base64"]:
                raise DetectorError(f"pixel_mask: only the base64 filter is supported, got {value.get('filters')}", 400)
            a = np.frombuffer(base64.b64decode(value["data"]), dtype=np.dtype(value["type"])).reshape(value["shape"])
        else:
            a = np.asarray(value, dtype=np.uint32)
    except (KeyError, TypeError, ValueError) as err:
        raise DetectorError(f"pixel_mask must be an encoded array (__darray__) or a list of rows: {err}", 400) from None
    if a.shape != shape:
        raise DetectorError(f"pixel_mask must have shape {list(shape)}, got {list(a.shape)}", 400)
    return a.astype(np.uint32)


def add_simplon_extras(app: FastAPI, detector: SimDetector) -> None:
    """Register the routes above on ``app`` (call before the generic ``config/{key}`` routes, which would match first)."""
    shape = (int(detector.config["y_pixels_in_detector"]), int(detector.config["x_pixels_in_detector"]))
    state = {"pixel_mask": np.zeros(shape, np.uint32), "filewriter": "disabled", "monitor": "disabled"}

    def value_of(body: Any) -> Any:
        if isinstance(body, dict) and "value" in body:
            return body["value"]
        raise DetectorError('body must be {"value": ...}', 400)

    for module in ("detector", "stream", "filewriter", "monitor"):
        app.get(f"/{module}/api/version/")(lambda: {"value": API, "value_type": "string"})

    @app.get(f"/detector/api/{API}/config/keys")
    @app.get(f"/detector/api/{API}/config/")
    def detector_config_keys() -> list[str]:
        return sorted([*detector.config, "pixel_mask"])

    @app.get(f"/detector/api/{API}/status/keys")
    def detector_status_keys() -> list[str]:
        return ["state", *DETECTOR_STATUS]

    @app.get(f"/detector/api/{API}/config/pixel_mask")
    def get_pixel_mask() -> dict:
        return {"value": encode_darray(state["pixel_mask"]), "value_type": "uint", "access_mode": "rw"}

    @app.put(f"/detector/api/{API}/config/pixel_mask")
    def put_pixel_mask(body: Annotated[Any, Body()] = None) -> list[str]:
        if detector.state not in ("idle", "na"):
            raise DetectorError(f"cannot change pixel_mask while the detector is {detector.state}; disarm first")
        state["pixel_mask"] = decode_darray(value_of(body), shape)
        return ["pixel_mask"]

    for key, (value, kind, unit) in DETECTOR_STATUS.items():
        app.get(f"/detector/api/{API}/status/{key}")(lambda value=value, kind=kind, unit=unit: {"value": value, "value_type": kind, "unit": unit})

    @app.put(f"/detector/api/{API}/command/status_update")
    def status_update() -> dict:
        return {"sequence id": detector.sequence_id}

    @app.get(f"/stream/api/{API}/config/keys")
    def stream_config_keys() -> list[str]:
        return sorted(detector.stream_config)

    @app.get(f"/stream/api/{API}/status/keys")
    def stream_status_keys() -> list[str]:
        return ["state", "dropped"]

    @app.get(f"/stream/api/{API}/status/dropped")
    def stream_dropped() -> dict:
        return {"value": 0, "value_type": "uint", "access_mode": "r"}

    for module in ("filewriter", "monitor"):
        add_mode_module(app, module, state)


def add_mode_module(app: FastAPI, module: str, state: dict) -> None:
    """``config/mode`` (enabled | disabled), ``config/keys``, ``status/state`` and ``status/keys`` of the filewriter or monitor (inert)."""
    base = f"/{module}/api/{API}"

    @app.get(f"{base}/config/keys")
    def config_keys() -> list[str]:
        return ["mode"]

    @app.get(f"{base}/config/mode")
    def get_mode() -> dict:
        return {"value": state[module], "value_type": "string", "access_mode": "rw", "allowed_values": MODES}

    @app.put(f"{base}/config/mode")
    def put_mode(body: Annotated[Any, Body()] = None) -> list[str]:
        value = body.get("value") if isinstance(body, dict) else None
        if value not in MODES:
            raise DetectorError(f"{module} mode must be one of {MODES}, got {value!r}", 400)
        state[module] = value
        return ["mode"]

    @app.get(f"{base}/status/keys")
    def status_keys() -> list[str]:
        return ["state"]

    @app.get(f"{base}/status/state")
    def status_state() -> dict:
        return {"value": "ready" if state[module] == "enabled" else "disabled", "value_type": "string", "access_mode": "r"}
