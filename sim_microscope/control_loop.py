"""Control-software stand-in: the loop a microscope PC runs against the ptychoscan service.

Only the service's public REST API (``/api/v1``, contracts C) and the microscope's REST
(SIMPLON detector + scan controller, ``sim_microscope.simplon_api``) are used: create a
session, ask for positions, load them into the scan controller, arm the detector for
that many frames (``ints``, nimages = N), trigger, tell the service which detector
series holds the batch (with the scan system's position readback as the measured
positions), and repeat until the service says done.

Without an explicit detector endpoint the loop takes the one the service was started
with (its only configured detector, from ``/readyz``), else the one the simulated
microscope says it streams on, else ``DEFAULT_DETECTOR_ENDPOINT``. While ``ask`` answers
503 it prints what the session waits for, and it gives up (``ScanLoopError``) after
``max_idle_asks`` such answers in a row during which no frame of the told batch arrived
and nothing was reconstructed: the frames are going somewhere the session does not read.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field, field_validator
from tqdm.auto import tqdm

DETECTOR_API = "/detector/api/1.8.0"
DEFAULT_DETECTOR_ENDPOINT = "tcp://127.0.0.1:9999"
"""A DECTRIS DCU streams on port 9999; ``ptychoscan sim-detector`` listens there by default."""


class ScanLoopError(RuntimeError):
    """The service or the microscope refused a step; one line naming the call and the reason."""


class ScanLoopConfig(BaseModel):
    """One adaptive acquisition. Lengths in nm, angles in mrad, energy in eV, times in s."""

    service: str = Field(..., description="service base URL, e.g. http://127.0.0.1:8000")
    microscope: str = Field(..., description="simulated microscope REST base URL, e.g. http://127.0.0.1:8080")
    api_key: str = Field(..., min_length=1)
    detector_endpoint: str | None = Field(
        None,
        description="where the service connects to the detector stream; None: the service's only configured detector, "
        "else the simulated microscope's stream, else DEFAULT_DETECTOR_ENDPOINT",
    )
    fov_nm: tuple[float, float, float, float] = (0.0, 0.0, 2.0, 2.0)
    budget: int = Field(250, ge=1)
    chunk: int = Field(50, ge=1)
    strategy: str = "adaptive"
    energy_ev: float = 60_000.0
    convergence_mrad: float = 33.0
    detector_pixels: int = 64
    detector_pixel_mrad: float = 1.68
    defocus_nm: float = 0.0
    probe: Literal["nominal", "retrieve"] = Field("nominal", description="the session's probe: the nominal beam's, or retrieved by the service")
    position_correction: bool = Field(False, description="the service's converged end-of-session reconstruction refines the positions")
    frame_time_s: float = Field(0.001, ge=0)
    settle_time_s: float = Field(0.0, ge=0)
    ask_timeout_s: float = Field(30.0, gt=0, description="long-poll per ask")
    total_timeout_s: float = Field(3600.0, gt=0, description="give up after this long")
    max_idle_asks: int = Field(
        3, ge=1, description="give up after this many 503s from ask in a row with no frame of the told batch arriving and nothing reconstructed"
    )

    @field_validator("service", "microscope")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname:
            raise ValueError(f"must be an http(s) URL like http://127.0.0.1:8000, got {v!r}")
        return v


def _check(response: httpx.Response, what: str) -> dict:
    if response.status_code >= 400:
        try:
            body = response.json()
            reason = body.get("detail") or body.get("title") or body.get("error") or response.text
        except ValueError:
            reason = response.text
        raise ScanLoopError(f"{what} failed: HTTP {response.status_code}: {str(reason).splitlines()[0] if reason else ''}")
    return response.json() if response.content else {}


def run_scan(config: ScanLoopConfig, *, progress: bool = True, say: Callable[[str], None] | None = None) -> dict:
    """Run the loop to the end; returns ``{"session_id", "batches", "frames", "series", "detector_endpoint"}``.

    ``say``: where one-line notes go (the endpoint chosen, what a 503 waits for); default:
    stderr when ``progress``, nowhere otherwise. Raises ScanLoopError (one line) when a
    call is refused, a server cannot be reached or the session gets no frames.
    """
    if say is None:
        say = (lambda line: tqdm.write(line, file=sys.stderr)) if progress else (lambda line: None)
    try:
        return _run(config, progress, say)
    except httpx.TransportError as err:
        url = err.request.url if err.request is not None else "?"
        raise ScanLoopError(f"cannot reach {url.scheme}://{url.host}:{url.port}: {type(err).__name__}") from None


def detector_endpoint_for(service: httpx.Client, scope: httpx.Client) -> tuple[str, str]:
    """(endpoint, where it came from) when none was given: the service's only configured detector, else the microscope's stream.

    A service configured with several detectors cannot say which one this microscope is:
    ScanLoopError asks for an explicit endpoint.
    """
    r = service.get("/readyz")  # 503 (not ready yet) has the same body
    if r.status_code in (200, 503):
        try:
            ingest = r.json()["detail"]["ingest"]
        except (ValueError, KeyError, TypeError):
            ingest = {}
        configured = sorted(ep for ep, st in ingest.items() if isinstance(st, dict) and st.get("required"))
        if len(configured) == 1:
            return configured[0], "the service's configured detector"
        if len(configured) > 1:
            raise ScanLoopError(f"the service reads {len(configured)} detectors ({', '.join(configured)}): name this microscope's with --detector-endpoint")
    r = scope.get("/sim/api/1/stream")
    if r.status_code == 200:
        endpoint = str(r.json().get("endpoint", ""))
        host = urlsplit(str(scope.base_url)).hostname or "127.0.0.1"
        for wildcard in ("0.0.0.0", "*"):
            endpoint = endpoint.replace(f"//{wildcard}:", f"//{host}:")
        if endpoint:
            return endpoint, "the microscope's stream"
    return DEFAULT_DETECTOR_ENDPOINT, "the default"


def _run(config: ScanLoopConfig, progress: bool, say: Callable[[str], None]) -> dict:
    auth = {"Authorization": f"Apikey {config.api_key}"}
    deadline = time.monotonic() + config.total_timeout_s
    with (
        httpx.Client(base_url=config.service, headers=auth, timeout=config.ask_timeout_s + 30) as service,
        httpx.Client(base_url=config.microscope, timeout=config.ask_timeout_s + 60) as scope,
    ):
        endpoint, origin = (config.detector_endpoint, "given") if config.detector_endpoint else detector_endpoint_for(service, scope)
        say(f"detector stream: {endpoint} ({origin})")
        body = {
            "detector_endpoint": endpoint,
            "fov_nm": list(config.fov_nm),
            "budget": config.budget,
            "chunk": config.chunk,
            "strategy": config.strategy,
            "energy_ev": config.energy_ev,
            "convergence_mrad": config.convergence_mrad,
            "detector_pixels": config.detector_pixels,
            "detector_pixel_mrad": config.detector_pixel_mrad,
            "defocus_nm": config.defocus_nm,
            "probe": config.probe,
            "position_correction": config.position_correction,
            # the session file stores counts in the detector's own pixel type, as SIMPLON reports it
            "detector_bit_depth": int(_check(scope.get(f"{DETECTOR_API}/config/bit_depth_image"), "GET bit_depth_image")["value"]),
        }
        session = _check(service.post("/api/v1/sessions", json=body), "create session")["session_id"]
        _put(scope, "/scan/api/1/settle_time", config.settle_time_s)
        for key, value in {"trigger_mode": "ints", "ntrigger": 1, "frame_time": config.frame_time_s}.items():
            _put(scope, f"{DETECTOR_API}/config/{key}", value)
        batches, frames, series_ids = 0, 0, []
        bar = tqdm(total=config.budget, desc="positions", unit="pos", disable=not progress)
        try:
            while True:
                batch = _ask(service, session, config, deadline, say)
                if batch.get("done"):
                    break
                positions = batch["positions_nm"]
                if not positions:
                    raise ScanLoopError(f"ask returned batch {batch.get('batch_id')} with no positions and done=false")
                _check(scope.put("/scan/api/1/positions", json={"positions_nm": positions}), "set probe positions")
                _put(scope, f"{DETECTOR_API}/config/nimages", len(positions))
                series = _check(scope.put(f"{DETECTOR_API}/command/arm"), "arm detector")["sequence id"]
                _check(scope.put(f"{DETECTOR_API}/command/trigger"), "trigger detector")
                _check(scope.put(f"{DETECTOR_API}/command/disarm"), "disarm detector")
                tell = {"batch_id": batch["batch_id"], "series": series, "measured_positions_nm": _readback(scope, series, positions)}
                _check(service.post(f"/api/v1/sessions/{session}/tell", json=tell), "tell")
                batches, frames = batches + 1, frames + len(positions)
                series_ids.append(series)
                bar.update(len(positions))
        finally:
            bar.close()
    return {"session_id": session, "batches": batches, "frames": frames, "series": series_ids, "detector_endpoint": endpoint}


def _readback(scope: httpx.Client, series: int, requested: list) -> list:
    """The scan system's position readback for ``series`` (nm), or the requested positions if it has none."""
    r = scope.get("/scan/api/1/readback")
    if r.status_code == 200:
        body = r.json()
        if body.get("series") == series and len(body.get("positions_nm", [])) == len(requested):
            return body["positions_nm"]
    return requested


def _put(client: httpx.Client, path: str, value) -> None:
    _check(client.put(path, json={"value": value}), f"PUT {path}")


def _ask(service: httpx.Client, session: str, config: ScanLoopConfig, deadline: float, say: Callable[[str], None]) -> dict:
    """Ask for the next batch, honouring 503 + Retry-After while the service reconstructs.

    Every 503 prints what the session waits for. ``config.max_idle_asks`` 503s in a row
    while the told batch gets no frame (and nothing is reconstructed) raise ScanLoopError.
    """
    idle, seen, t0 = 0, None, time.monotonic()
    while True:
        r = service.post(f"/api/v1/sessions/{session}/ask", params={"timeout_s": config.ask_timeout_s})
        if r.status_code != 503:
            return _check(r, "ask")
        got = service.get(f"/api/v1/sessions/{session}")
        status = got.json() if got.status_code == 200 else {}  # a service without session status: wait on Retry-After alone
        batch = status.get("current_batch") or {}
        waiting_for_frames = status.get("state") == "acquiring" and batch.get("status") == "told"
        frames = status.get("frames_received")
        idle = idle + 1 if waiting_for_frames and (seen is None or frames == seen) else 0
        seen = frames
        if waiting_for_frames:
            have = batch.get("size", 0) - batch.get("frames_missing", 0)
            say(f"waiting for frames: batch {batch.get('batch_id')} (series {batch.get('series')}) has {have} of {batch.get('size')}; "
                f"ask answered 503 ({idle} of {config.max_idle_asks} without a frame)")
        else:
            say(f"waiting for the service: session {status.get('state')}, {status.get('batches_reconstructed')} chunk(s) reconstructed")
        if idle >= config.max_idle_asks:
            endpoint = status.get("params", {}).get("detector_endpoint")
            raise ScanLoopError(
                f"no frame of batch {batch.get('batch_id')} (series {batch.get('series')}) reached the service in {time.monotonic() - t0:.0f} s "
                f"({idle} answers of 503 from ask): the session reads the detector stream at {endpoint}; "
                "if the microscope streams elsewhere, pass its endpoint with --detector-endpoint"
            )
        wait = float(r.headers.get("Retry-After", "1") or 1)
        if time.monotonic() + wait > deadline:
            raise ScanLoopError(f"ask: service still busy after {config.total_timeout_s:.0f} s")
        time.sleep(min(wait, 5.0))
