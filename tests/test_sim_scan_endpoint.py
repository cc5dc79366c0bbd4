"""sim-scan against the real service: it reads the detector the service was started with, and a session that gets no frames stops it with one line."""

from __future__ import annotations

import socket
import time

import pytest
from service_testing import KEY, RecordingBackend, UvicornThread

from service.app import create_app
from service.settings import ServiceSettings
from sim_microscope.control_loop import ScanLoopConfig, ScanLoopError, run_scan


def loop_config(server_url: str, scope_url: str, **kw) -> ScanLoopConfig:
    options = dict(
        service=server_url, microscope=scope_url, api_key=KEY, fov_nm=(0.0, 0.0, 1.0, 1.0), budget=6, chunk=3,
        strategy="sparse-grid", frame_time_s=0.0, ask_timeout_s=5.0, total_timeout_s=30.0,
    )
    return ScanLoopConfig(**{**options, **kw})


def test_sim_scan_takes_the_detector_the_service_was_started_with(tmp_path, sim_detector):
    detector, scope_url, _ = sim_detector
    endpoint = detector.endpoint.replace("0.0.0.0", "127.0.0.1")
    app = create_app(ServiceSettings(storage=tmp_path, api_keys=[KEY], detectors=[endpoint]), backend=RecordingBackend())
    lines: list[str] = []
    with UvicornThread(app) as server:
        result = run_scan(loop_config(server.url, scope_url), progress=False, say=lines.append)
    assert result["frames"] == 6 and result["detector_endpoint"] == endpoint
    assert lines[0] == f"detector stream: {endpoint} (the service's configured detector)"


def test_sim_scan_without_a_service_detector_takes_the_microscopes_stream(tmp_path, sim_detector):
    detector, scope_url, _ = sim_detector
    app = create_app(ServiceSettings(storage=tmp_path, api_keys=[KEY]), backend=RecordingBackend())
    with UvicornThread(app) as server:
        result = run_scan(loop_config(server.url, scope_url, position_correction=True), progress=False, say=lambda line: None)
        params = app.state.service.manager.get(result["session_id"]).status()["params"]
    assert result["frames"] == 6 and result["detector_endpoint"].endswith(f":{detector.port}")
    assert params["position_correction"] is True, "sim-scan asks for it in the session request"


def test_sim_scan_stops_with_one_line_when_no_frame_reaches_the_session(tmp_path, sim_detector):
    detector, scope_url, _ = sim_detector
    # the session reads a stream nobody sends on (the frames go to the service's other socket); the port is held by a plain
    # TCP listener that never speaks ZMTP, so no other test's detector can take it meanwhile (a free_port() could be reused)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    nowhere = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
    # always connected: with the default (in_flight) nothing reads the configured detector, whose trigger then waits for a receiver
    settings = ServiceSettings(
        storage=tmp_path, api_keys=[KEY], detectors=[detector.endpoint.replace("0.0.0.0", "127.0.0.1")], detector_connection="always"
    )
    app = create_app(settings, backend=RecordingBackend())
    lines: list[str] = []
    try:
        with UvicornThread(app) as server:
            t0 = time.monotonic()
            with pytest.raises(ScanLoopError) as err:
                run_scan(loop_config(server.url, scope_url, detector_endpoint=nowhere, ask_timeout_s=0.3, max_idle_asks=2), progress=False,
                         say=lines.append)
            assert time.monotonic() - t0 < 20, (lines, err)
    finally:
        holder.close()
    message = str(err.value)
    assert "\n" not in message and "no frame of batch 0 (series 1) reached the service" in message and nowhere in message
    assert any(line.startswith("waiting for frames: batch 0 (series 1) has 0 of 3") for line in lines)
