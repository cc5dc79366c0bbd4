"""The rest of the SIMPLON surface LiberTEM-live's controller and DECTRIS's DEigerClient call (routes registered before the generic ones).

- ``GET|PUT /detector/api/1.8.0/config/pixel_mask``: the mask in DECTRIS's encoded-array
  form, ``{"__darray__": [1, 0, 0], "type": "<u4", "shape": [rows, columns],
  "filters": ["base64"], "data": <base64 of the C-order bytes>}``; PUT takes the same form
  (or a nested list). The mask is stored; it marks frames only with ``pixel_mask_applied`` (below).
- keys listings: ``GET /{detector,stream,filewriter,monitor}/api/1.8.0/{config,status}/keys``
  and ``GET /detector/api/1.8.0/command/keys``; a bare ``GET .../detector/api/1.8.0/config/``
  is the whole configuration (key -> description, as DEigerClient's ``detectorConfig()``
  documents); ``GET /stream/api/version/`` and the others' versions.
- ``GET /detector/api/1.8.0/status/humidity`` (%), ``.../status/temperature`` (°C),
  ``PUT .../command/status_update``, ``GET /stream/api/1.8.0/status/dropped`` (0: the
  stand-in's PUSH blocks rather than drop), ``PUT /stream/api/1.8.0/command/initialize``
  (the stream comes back disabled).
- filewriter and monitor: ``GET|PUT .../config/{key}`` for the keys in ``MODULE_CONFIG``
  (``mode``: ``enabled`` | ``disabled``; the filewriter's ``name_pattern``,
  ``nimages_per_file``, ``image_nr_start``; the monitor's ``buffer_size``), stored and
  described but inert: nothing is written or monitored; ``.../status/state``; ``PUT
  .../command/clear`` (nothing to clear).

With ``pixel_mask_applied`` the detector marks masked pixels in every frame
(``SimDetector.pixel_mask``; ``mask_to_zero`` chooses 0 over the largest count).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI

from sim_microscope.detector import DetectorError, SimDetector
from sim_microscope.detector_config import config_description

API = "1.8.0"
MODES = ["enabled", "disabled"]
COMMANDS = ("arm", "trigger", "disarm", "cancel", "abort", "initialize", "status_update")
MODULE_CONFIG: dict[str, dict[str, tuple[object, str, object]]] = {
    "filewriter": {
        "mode": ("disabled", "string", MODES),
        "name_pattern": ("series_$id", "string", None),
        "nimages_per_file": (1000, "uint", (0, 1_000_000)),
        "image_nr_start": (1, "uint", (0, 1_000_000_000)),
    },
    "monitor": {"mode": ("disabled", "string", MODES), "buffer_size": (1, "uint", (1, 1000))},
}
"""Per module: key -> (default, SIMPLON value_type, allowed values (list) or (min, max) or None for any string)."""
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
    state = {module: {key: spec[0] for key, spec in keys.items()} for module, keys in MODULE_CONFIG.items()}

    def value_of(body: Any) -> Any:
        if isinstance(body, dict) and "value" in body:
            return body["value"]
        raise DetectorError('body must be {"value": ...}', 400)

    for module in ("detector", "stream", "filewriter", "monitor"):
        app.get(f"/{module}/api/version/")(lambda: {"value": API, "value_type": "string"})

    @app.get(f"/detector/api/{API}/config/keys")
    def detector_config_keys() -> list[str]:
        return sorted([*detector.config, "pixel_mask"])

    @app.get(f"/detector/api/{API}/config/")
    def detector_config_all() -> dict:
        whole = {key: config_description(key, value) for key, value in detector.config.items()}
        whole["pixel_mask"] = get_pixel_mask()
        return dict(sorted(whole.items()))

    @app.get(f"/detector/api/{API}/command/keys")
    def detector_command_keys() -> list[str]:
        return list(COMMANDS)

    @app.get(f"/detector/api/{API}/status/keys")
    def detector_status_keys() -> list[str]:
        return ["state", *DETECTOR_STATUS]

    @app.get(f"/detector/api/{API}/config/pixel_mask")
    def get_pixel_mask() -> dict:
        return {"value": encode_darray(detector.pixel_mask), "value_type": "uint", "access_mode": "rw"}

    @app.put(f"/detector/api/{API}/config/pixel_mask")
    def put_pixel_mask(body: Annotated[Any, Body()] = None) -> list[str]:
        detector.set_pixel_mask(decode_darray(value_of(body), shape))
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

    @app.put(f"/stream/api/{API}/command/initialize")
    def stream_initialize() -> str:
        """Restart the stream interface: as DEigerClient documents it, it comes back disabled."""
        detector.set_stream_config("mode", "disabled")
        return ""

    @app.get(f"/stream/api/{API}/status/dropped")
    def stream_dropped() -> dict:
        return {"value": 0, "value_type": "uint", "access_mode": "r"}

    for module in ("filewriter", "monitor"):
        add_mode_module(app, module, state)


def add_mode_module(app: FastAPI, module: str, state: dict) -> None:
    """``config/{key}`` (``MODULE_CONFIG[module]``), ``config/keys``, ``status/state`` and ``status/keys`` of the filewriter or monitor
    (inert); ``state[module]`` holds the values."""
    base = f"/{module}/api/{API}"
    spec = MODULE_CONFIG[module]
    values = state[module]

    @app.get(f"{base}/config/keys")
    def config_keys() -> list[str]:
        return list(spec)

    @app.get(f"{base}/config/{{key}}")
    def get_config(key: str) -> dict:
        if key not in spec:
            raise DetectorError(f"unknown {module} config key {key!r}", 404)
        _, kind, allowed = spec[key]
        desc = {"value": values[key], "value_type": kind, "access_mode": "rw"}
        if isinstance(allowed, list):
            desc["allowed_values"] = allowed
        elif allowed is not None:
            desc["min"], desc["max"] = allowed
        return desc

    @app.put(f"{base}/config/{{key}}")
    def put_config(key: str, body: Annotated[Any, Body()] = None) -> list[str]:
        if key not in spec:
            raise DetectorError(f"unknown {module} config key {key!r}", 404)
        values[key] = checked_module_value(module, key, body.get("value") if isinstance(body, dict) else None)
        return [key]

    @app.get(f"{base}/status/keys")
    def status_keys() -> list[str]:
        return ["state"]

    @app.put(f"{base}/command/clear")
    def clear() -> str:
        """Delete the module's files or buffered images: the stand-in keeps none; a DCU answers with an empty body."""
        return ""

    @app.get(f"{base}/status/state")
    def status_state() -> dict:
        return {"value": "ready" if values["mode"] == "enabled" else "disabled", "value_type": "string", "access_mode": "r"}


def checked_module_value(module: str, key: str, value: Any) -> Any:
    """``value`` for ``module``'s ``key`` if valid for its ``MODULE_CONFIG`` entry; DetectorError (400) with the rule otherwise."""
    _, kind, allowed = MODULE_CONFIG[module][key]
    if isinstance(allowed, list):
        if value not in allowed:
            raise DetectorError(f"{module} {key} must be one of {allowed}, got {value!r}", 400)
        return value
    if kind == "string":
        if not isinstance(value, str) or not value:
            raise DetectorError(f"{module} {key} must be a non-empty string, got {value!r}", 400)
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not (allowed[0] <= value <= allowed[1]):
        raise DetectorError(f"{module} {key} must be an integer within {allowed[0]}..{allowed[1]}, got {value!r}", 400)
    return value
