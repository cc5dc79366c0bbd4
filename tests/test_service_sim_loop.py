"""The detector branch's control loop (contracts C client) and simulated detector against the real service."""

from __future__ import annotations

import h5py
import httpx
import numpy as np
import pytest
from service_testing import KEY, RecordingBackend, UvicornThread

from service.app import create_app
from service.settings import ServiceSettings
from sim_microscope.control_loop import ScanLoopConfig, run_scan


@pytest.mark.parametrize("strategy,planner", [("adaptive", "gru-policy"), ("structure-guided", "structure-guided")])
def test_sim_scan_loop_runs_a_session_to_done(tmp_path, sim_detector, strategy, planner):
    detector, scope_url, _ = sim_detector
    backend = RecordingBackend()
    app = create_app(ServiceSettings(storage=tmp_path, api_keys=[KEY], ask_timeout_s=10.0), backend=backend)
    with UvicornThread(app) as server:
        config = ScanLoopConfig(
            service=server.url,
            microscope=scope_url,
            api_key=KEY,
            detector_endpoint=detector.endpoint.replace("0.0.0.0", "127.0.0.1"),
            fov_nm=(0.0, 0.0, 1.0, 1.0),
            budget=12,
            chunk=5,
            strategy=strategy,
            frame_time_s=0.0,
            ask_timeout_s=10.0,
            total_timeout_s=60.0,
        )
        result = run_scan(config, progress=False)
        assert result["batches"] == 3 and result["frames"] == 12
        status = httpx.get(f"{server.url}/api/v1/sessions/{result['session_id']}").json()
    assert status["state"] == "done" and status["frames_received"] == 12
    assert status["strategy"]["used"] == planner and status["strategy"]["fallback"] is None
    assert backend.calls == 3
    with h5py.File(tmp_path / f"{result['session_id']}.h5", "r") as f:
        assert f["received"][()].all() and f["patterns"].shape == (12, 64, 64)
        assert f["patterns"].dtype == np.uint16  # the detector's bit_depth_image, read over SIMPLON by the control loop
        assert np.asarray(f["patterns"][()]).reshape(12, -1).sum(1).min() > 0
        assert list(np.unique(f["slot_series"][()])) == sorted(result["series"])
    from recon.dataset import read_dataset

    assert read_dataset(tmp_path / f"{result['session_id']}.h5").patterns.dtype == np.uint16  # a uint16 session file is a valid dataset
