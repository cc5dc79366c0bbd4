"""A DECTRIS detector that marks masked pixels in its frames (``pixel_mask_applied``), a real service session, and what reaches the reconstructor."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from service_testing import KEY, RecordingBackend, UvicornThread

from service.app import create_app
from service.settings import ServiceSettings
from sim_microscope.control_loop import ScanLoopConfig, run_scan

HOT = (5, 7)
"""(y, x) of the masked pixel (a 'hot' pixel the detector marks with its largest count)."""


def _scan(tmp_path, sim_detector, *, header_detail: str, bit_depth: int = 16):
    detector, scope_url, _ = sim_detector
    mask = np.zeros_like(detector.pixel_mask)
    mask[HOT] = 8  # DECTRIS mask bit 3: noisy pixel
    detector.set_pixel_mask(mask)
    detector.set_config("pixel_mask_applied", True)
    detector.set_config("bit_depth_image", bit_depth)
    detector.set_stream_config("header_detail", header_detail)
    backend = RecordingBackend()
    app = create_app(ServiceSettings(storage=tmp_path, api_keys=[KEY], ask_timeout_s=10.0), backend=backend)
    with UvicornThread(app) as server:
        config = ScanLoopConfig(
            service=server.url, microscope=scope_url, api_key=KEY, detector_endpoint=detector.endpoint.replace("0.0.0.0", "127.0.0.1"),
            fov_nm=(0.0, 0.0, 1.0, 1.0), budget=8, chunk=4, strategy="sparse-grid", frame_time_s=0.0, ask_timeout_s=10.0, total_timeout_s=60.0,
        )
        result = run_scan(config, progress=False)
    assert result["frames"] == 8 and backend.calls == 2
    return backend, tmp_path / f"{result['session_id']}.h5", detector


@pytest.mark.parametrize("header_detail,bit_depth", [("basic", 16), ("all", 16), ("basic", 32)])
def test_a_masked_pixel_reaches_the_reconstruction_only_as_an_excluded_pixel(tmp_path, sim_detector, header_detail, bit_depth):
    backend, path, detector = _scan(tmp_path, sim_detector, header_detail=header_detail, bit_depth=bit_depth)
    top = 2**bit_depth - 1
    job = backend.jobs[-1]
    assert (job.patterns[:, HOT[0], HOT[1]] == top).all()  # the frames as the detector sent them: the mark reaches the job...
    invalid = job.invalid_pixels
    assert invalid is not None and invalid.shape == (64, 64) and invalid[HOT] and invalid.sum() == 1  # ...and is excluded from the loss
    with h5py.File(path, "r") as f:
        stored = f["patterns"][()]
        recorded = f["detector_mask"][()]
    assert stored.dtype == f"uint{bit_depth}"  # the control loop creates the session with the detector's bit_depth_image
    assert np.array_equal(stored[4:], detector.last_images)  # the last series, bit for bit as sent
    assert job.patterns.dtype == stored.dtype and np.array_equal(stored, job.patterns)  # session memory holds what the file does
    assert recorded.shape == (64, 64) and np.flatnonzero(recorded).tolist() == [HOT[0] * 64 + HOT[1]]
    assert recorded[HOT] == (3 if header_detail == "all" else 2)  # 1: in the header's pixel mask, 2: read the largest count
