"""Control-software stand-in: the loop a microscope PC runs against the ptychoscan service.

Only the service's public REST API (``/api/v1``, contracts C) and the microscope's REST
(SIMPLON detector + scan controller, ``sim_microscope.simplon_api``) are used: create a
session, ask for positions, load them into the scan controller, arm the detector for
that many frames (``ints``, nimages = N), trigger, tell the service which detector
series holds the batch (with the scan system's position readback as the measured
positions), and repeat until the service says done.
"""

from __future__ import annotations

import time

import httpx
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

DETECTOR_API = "/detector/api/1.8.0"


class ScanLoopError(RuntimeError):
    """The service or the microscope refused a step; one line naming the call and the reason."""


class ScanLoopConfig(BaseModel):
    """One adaptive acquisition. Lengths in nm, angles in mrad, energy in eV, times in s."""

    service: str = Field(..., description="service base URL, e.g. http://127.0.0.1:8000")
    microscope: str = Field(..., description="simulated microscope REST base URL, e.g. http://127.0.0.1:8080")
    api_key: str = Field(..., min_length=1)
    detector_endpoint: str = Field("tcp://127.0.0.1:9999", description="where the service connects to the detector stream")
    fov_nm: tuple[float, float, float, float] = (0.0, 0.0, 2.0, 2.0)
    budget: int = Field(250, ge=1)
    chunk: int = Field(50, ge=1)
    strategy: str = "adaptive"
    energy_ev: float = 60_000.0
    convergence_mrad: float = 33.0
    detector_pixels: int = 64
    detector_pixel_mrad: float = 1.68
    defocus_nm: float = 0.0
    frame_time_s: float = Field(0.001, ge=0)
    settle_time_s: float = Field(0.0, ge=0)
    ask_timeout_s: float = Field(30.0, gt=0, description="long-poll per ask")
    total_timeout_s: float = Field(3600.0, gt=0, description="give up after this long")


def _check(response: httpx.Response, what: str) -> dict:
    if response.status_code >= 400:
        try:
            body = response.json()
            reason = body.get("detail") or body.get("title") or body.get("error") or response.text
        except ValueError:
            reason = response.text
        raise ScanLoopError(f"{what} failed: HTTP {response.status_code}: {str(reason).splitlines()[0] if reason else ''}")
    return response.json() if response.content else {}


def run_scan(config: ScanLoopConfig, *, progress: bool = True) -> dict:
    """Run the loop to the end; returns ``{"session_id", "batches", "frames", "series"}``.

    Raises ScanLoopError (one line) when a call is refused or a server cannot be reached.
    """
    try:
        return _run(config, progress)
    except httpx.TransportError as err:
        url = err.request.url if err.request is not None else "?"
        raise ScanLoopError(f"cannot reach {url.scheme}://{url.host}:{url.port}: {type(err).__name__}") from None


def _run(config: ScanLoopConfig, progress: bool) -> dict:
    auth = {"Authorization": f"Apikey {config.api_key}"}
    deadline = time.monotonic() + config.total_timeout_s
    with (
        httpx.Client(base_url=config.service, headers=auth, timeout=config.ask_timeout_s + 30) as service,
        httpx.Client(base_url=config.microscope, timeout=config.ask_timeout_s + 60) as scope,
    ):
        body = {
            "detector_endpoint": config.detector_endpoint,
            "fov_nm": list(config.fov_nm),
            "budget": config.budget,
            "chunk": config.chunk,
            "strategy": config.strategy,
            "energy_ev": config.energy_ev,
            "convergence_mrad": config.convergence_mrad,
            "detector_pixels": config.detector_pixels,
            "detector_pixel_mrad": config.detector_pixel_mrad,
            "defocus_nm": config.defocus_nm,
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
                batch = _ask(service, session, config, deadline)
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
    return {"session_id": session, "batches": batches, "frames": frames, "series": series_ids}


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


def _ask(service: httpx.Client, session: str, config: ScanLoopConfig, deadline: float) -> dict:
    """Ask for the next batch, honouring 503 + Retry-After while the service reconstructs."""
    while True:
        r = service.post(f"/api/v1/sessions/{session}/ask", params={"timeout_s": config.ask_timeout_s})
        if r.status_code != 503:
            return _check(r, "ask")
        wait = float(r.headers.get("Retry-After", "1") or 1)
        if time.monotonic() + wait > deadline:
            raise ScanLoopError(f"ask: service still busy after {config.total_timeout_s:.0f} s")
        time.sleep(min(wait, 5.0))
