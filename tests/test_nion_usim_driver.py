"""Nion drives an adaptive session (issue 20): nionswift-usim headless, the service as a process, to done.

Opt-in by installation: skipped unless the Nion packages are installed (``pip install -e '.[nion]'``);
the main CI venv does not have them. Run with
``python -m pytest -q -s tests/test_nion_usim_driver.py`` (``-s`` prints the time per chunk in Nion's API).
"""

from __future__ import annotations

import subprocess
import sys
import time

import h5py
import httpx
import numpy as np
import pytest

pytest.importorskip("nion.usim_device", reason="nionswift-usim is not installed (pip install -e '.[nion]')")
pytest.importorskip("nion.instrumentation.camera_base", reason="nionswift-instrumentation is not installed")

import recon.hdf5_filters  # noqa: F401  (session files' patterns are bitshuffle-LZ4: a reader registers the filter)
from nion_ptychoscan.counts import to_counts
from nion_ptychoscan.driver import AdaptiveSessionDriver, DriverConfig
from nion_ptychoscan.geometry import ScanField
from nion_ptychoscan.usim_stack import NionHardware, UsimStack
from ptychoscan.net import free_port
from tests.subprocess_env import REPO, repo_env

KEY = "nion-test-key"


class CameraTap:
    """The Nion camera hardware source, with every frame it hands out recorded with the probe position Nion reports then."""

    def __init__(self, camera, stem_controller) -> None:
        self.camera, self.stem = camera, stem_controller
        self.taken: list[tuple[np.ndarray, tuple[float, float]]] = []

    def grab_next_to_start(self, **kw):
        xdatas = self.camera.grab_next_to_start(**kw)
        pos = self.stem.probe_position
        self.taken.append((np.array(xdatas[0].data), (pos.x, pos.y)))
        return xdatas

    def __getattr__(self, name):
        return getattr(self.camera, name)


@pytest.fixture
def service(tmp_path):
    """(base URL, storage dir) of ``tests/service_server.py`` (the tests' recording reconstruction) in its own process."""
    storage = tmp_path / "sessions"
    storage.mkdir()
    port = free_port()
    log = open(tmp_path / "service.log", "w")
    proc = subprocess.Popen([sys.executable, "tests/service_server.py", str(storage), str(port), KEY], cwd=REPO, env=repo_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "service.log").read_text()[-2000:])
            try:
                httpx.get(f"{url}/readyz", timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url, storage
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_nion_usim_drives_a_session_to_done_and_every_frame_is_filed_at_its_reported_position(service):
    url, storage = service
    config = DriverConfig(service=url, api_key=KEY, fov_nm=(0.0, 0.0, 1.0, 1.0), budget=12, chunk=5, strategy="adaptive",
                          detector_pixels=64, exposure_ms=1.0, camera_binning=8, ask_timeout_s=10.0, total_timeout_s=300.0)
    with UsimStack() as hardware:
        tap = CameraTap(hardware.camera, hardware.stem_controller)
        result = AdaptiveSessionDriver(config, NionHardware(hardware.stem_controller, hardware.scan, tap), keep_frames=True, say=print).run()
        size = hardware.stem_controller.scan_context.fov_size_nm
        field = ScanField(config.fov_nm, (size.height, size.width))
    status = httpx.get(f"{url}/api/v1/sessions/{result.session_id}", headers={"Authorization": f"Apikey {KEY}"}).json()
    assert status["state"] == "done", status
    assert [len(c.positions_nm) for c in result.chunks] == [5, 5, 2] and status["frames_received"] == 12
    for c in result.chunks:
        print(f"chunk {c.batch_id}: {len(c.positions_nm)} positions, {c.nion_seconds:.3f} s in Nion's API "
              f"({c.nion_seconds / len(c.positions_nm) * 1000:.1f} ms per position), chunk {c.total_seconds:.3f} s")
        np.testing.assert_allclose(c.reported_nm, c.positions_nm, atol=1e-9)  # Nion parked the probe where it was asked
    with h5py.File(storage / f"{result.session_id}.h5", "r") as f:
        assert f["received"][()].all()
        patterns, positions = f["patterns"][()], f["positions_nm"][()]
        slot_series, slot_frame = f["slot_series"][()], f["slot_frame"][()]
    assert patterns.dtype == np.uint32 and patterns.shape == (12, 64, 64)
    slot = 0
    for c in result.chunks:  # slots are the batches' positions in order; each holds its series' frame of the same index
        for i in range(len(c.positions_nm)):
            assert slot_series[slot] == c.series and slot_frame[slot] == i
            np.testing.assert_array_equal(patterns[slot], c.counts[i])
            np.testing.assert_allclose(positions[slot], c.reported_nm[i], atol=1e-9)
            slot += 1
    assert len({c.series for c in result.chunks}) == 3
    assert patterns.reshape(12, -1).sum(1).min() > 0
    # every frame the usim camera handed out is in the session file, in the slot at the position Nion reported for it
    assert len(tap.taken) == 12
    for slot, (frame, fraction) in enumerate(tap.taken):
        np.testing.assert_array_equal(patterns[slot], to_counts(frame, 64, "uint32"))
        np.testing.assert_allclose(positions[slot], field.to_nm([fraction])[0], atol=1e-9)
