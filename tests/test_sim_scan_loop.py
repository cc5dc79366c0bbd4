"""The control-software stand-in against a tiny fake service that follows contracts C and reads the detector stream."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from detector_stream.events import Frame, SeriesEnd, StreamError
from detector_stream.receiver import StreamReceiver
from recon.dataset import Dataset4D, write_dataset
from sim_microscope.control_loop import ScanLoopConfig, ScanLoopError, run_scan
from sim_microscope.detector import SimDetector
from sim_microscope.frame_source import DatasetReplay
from sim_microscope.simplon_api import ServerThread, create_app

KEY = "secret-key"


class FakeService:
    """Sessions that hand out raster points in chunks and record which series holds each batch."""

    def __init__(self, raster: np.ndarray):
        self.raster = raster
        self.sessions: dict[str, dict] = {}
        self.frames: dict[int, dict[int, np.ndarray]] = {}
        self.errors: list[str] = []
        self.receivers: list[StreamReceiver] = []
        self.lock = threading.Lock()
        self.app = self._app()

    def on_event(self, endpoint, event):
        with self.lock:
            if isinstance(event, Frame):
                self.frames.setdefault(event.series, {})[event.frame] = event.image
            elif isinstance(event, StreamError):
                self.errors.append(event.reason)
            elif isinstance(event, SeriesEnd):
                self.frames.setdefault(event.series, {})

    def _app(self) -> FastAPI:
        app = FastAPI()

        def problem(status, detail):
            return JSONResponse({"type": "about:blank", "title": "error", "status": status, "detail": detail}, status_code=status)

        @app.post("/api/v1/sessions")
        async def create(request: Request, authorization: str | None = Header(None)):
            if authorization != f"Apikey {KEY}":
                return problem(401, "missing or wrong API key")
            body = await request.json()
            sid = f"s{len(self.sessions)}"
            receiver = StreamReceiver([body["detector_endpoint"]], self.on_event)
            receiver.start()
            self.receivers.append(receiver)
            order = np.random.default_rng(0).permutation(len(self.raster))[: body["budget"]]
            self.sessions[sid] = {"body": body, "order": order, "next": 0, "batches": {}, "told": {}, "asks": 0}
            return JSONResponse({"session_id": sid, "state": "created"}, status_code=201)

        @app.post("/api/v1/sessions/{sid}/ask")
        def ask(sid: str, timeout_s: float = 30.0):
            s = self.sessions[sid]
            s["asks"] += 1
            if s["asks"] == 2:  # pretend to reconstruct once
                return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": "0"})
            if s["next"] >= len(s["order"]):
                return {"batch_id": None, "positions_nm": [], "done": True}
            idx = s["order"][s["next"] : s["next"] + s["body"]["chunk"]]
            batch_id = len(s["batches"])
            s["batches"][batch_id] = idx
            s["next"] += len(idx)
            return {"batch_id": batch_id, "positions_nm": self.raster[idx].tolist(), "done": False}

        @app.post("/api/v1/sessions/{sid}/tell")
        async def tell(sid: str, request: Request):
            body = await request.json()
            self.sessions[sid]["told"][body["batch_id"]] = body
            return {"accepted": True}

        return app

    def close(self):
        for r in self.receivers:
            r.stop()


@pytest.fixture
def microscope_and_service(tmp_path):
    ys, xs = np.meshgrid(np.arange(6) * 0.1, np.arange(6) * 0.1, indexing="ij")
    raster = np.column_stack([xs.ravel(), ys.ravel()])
    patterns = (np.arange(36, dtype=np.uint16)[:, None, None] * 100 + np.zeros((1, 8, 8), np.uint16)).astype(np.uint16)
    path = write_dataset(tmp_path / "raster.h5", Dataset4D(patterns, raster, 60e3, 33.0, 1.68, grid_shape=(6, 6)))
    detector = SimDetector(DatasetReplay(str(path)), port=0)
    scope = ServerThread(create_app(detector)).start()
    fake = FakeService(raster)
    service = ServerThread(fake.app).start()
    try:
        yield detector, scope, fake, service
    finally:
        service.stop()
        fake.close()
        scope.stop()
        detector.close()


def test_loop_drives_service_and_detector_to_done(microscope_and_service):
    detector, scope, fake, service = microscope_and_service
    config = ScanLoopConfig(
        service=service.url, microscope=scope.url, api_key=KEY, detector_endpoint=detector.endpoint,
        budget=20, chunk=8, frame_time_s=0.0, fov_nm=(0, 0, 0.5, 0.5), ask_timeout_s=5, total_timeout_s=60,
    )
    summary = run_scan(config, progress=False)
    assert summary["batches"] == 3 and summary["frames"] == 20
    session = fake.sessions[summary["session_id"]]
    assert session["body"]["detector_endpoint"] == detector.endpoint and session["body"]["chunk"] == 8
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with fake.lock:
            if all(len(fake.frames.get(t["series"], {})) == len(session["batches"][b]) for b, t in session["told"].items()):
                break
        time.sleep(0.02)
    assert fake.errors == []
    for batch_id, told in session["told"].items():
        idx = session["batches"][batch_id]
        frames = fake.frames[told["series"]]
        # frame i of the told series was taken at batch position i (replayed raster pattern idx[i])
        assert [int(frames[i][0, 0]) for i in range(len(idx))] == [int(j) * 100 for j in idx]
        assert np.allclose(told["measured_positions_nm"], fake.raster[idx])


def test_wrong_api_key_is_a_clear_error(microscope_and_service):
    detector, scope, _, service = microscope_and_service
    config = ScanLoopConfig(service=service.url, microscope=scope.url, api_key="wrong", detector_endpoint=detector.endpoint)
    with pytest.raises(ScanLoopError, match="create session failed: HTTP 401: missing or wrong API key"):
        run_scan(config, progress=False)


def test_unreachable_microscope_fails_fast(microscope_and_service):
    detector, _, _, service = microscope_and_service
    config = ScanLoopConfig(
        service=service.url, microscope="http://127.0.0.1:9", api_key=KEY, detector_endpoint=detector.endpoint
    )
    with pytest.raises(ScanLoopError, match=r"cannot reach http://127.0.0.1:9: ConnectError"):
        run_scan(config, progress=False)
