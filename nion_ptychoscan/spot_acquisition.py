"""Spot-mode acquisition through Nion's instrumentation API: park the probe at each position, grab one camera frame there.

The scan is stopped (a parked probe is what ``probe_state == "parked"`` means; while
scanning the camera follows the scan instead), its field of view set to hold the session's
field (``scan.set_current_frame_parameters``, which also sets the STEM controller's scan
context), the camera set to ``binning`` and ``exposure_ms`` and left playing. Per position:
``scan.probe_position = FloatPoint(y, x)`` (fractions of the scan context), then
``camera.grab_next_to_start()`` — a frame that starts after the move — then the STEM
controller's ``probe_position`` read back: the position Nion reports for that frame.

usim's scan device has no arbitrary position-list mode (a synchronized acquisition,
``scan.grab_synchronized``, covers a raster or a rectangular subscan), so a position list
is acquired in spot mode, one frame per position.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from nion_ptychoscan.geometry import ScanField, scan_side_nm
from nion_ptychoscan.usim_stack import NionHardware


class AcquisitionError(RuntimeError):
    """Nion returned no frame, or the probe is not where it was sent; one line."""


@dataclass
class SpotFrames:
    """One chunk as Nion acquired it."""

    frames: list[np.ndarray]
    """camera frames as Nion returns them (float32 counts, [y, x])."""
    fractions: np.ndarray
    """(N, 2) probe positions (x, y) Nion reported for each frame, scan fractions."""
    positions_nm: np.ndarray
    """the same in the session's frame, nm."""
    nion_seconds: float
    """wall time spent in Nion's API for the chunk (probe moves, frame grabs, readbacks), s."""


class SpotScanner:
    """Acquires position lists in spot mode on ``hardware`` for the session field ``fov_nm`` (x0, y0, width, height nm)."""

    def __init__(self, hardware: NionHardware, fov_nm: tuple[float, float, float, float], *, exposure_ms: float = 1.0,
                 binning: int = 8, scan_pixels: int = 256, margin: float = 0.0, timeout_s: float = 30.0) -> None:
        self.hw = hardware
        self.fov_nm = tuple(float(v) for v in fov_nm)
        self.exposure_ms = exposure_ms
        self.binning = binning
        self.scan_pixels = scan_pixels
        self.margin = margin
        self.timeout_s = timeout_s
        self.field: ScanField | None = None
        self.pixel_rad = float("nan")
        """camera pixel after Nion's binning, rad (``get_camera_calibrations``; nan if the camera has no angle calibration)."""
        self.frame_shape: tuple[int, int] = (0, 0)
        """(height, width) of the camera's frames at ``binning``."""

    def prepare(self) -> ScanField:
        """Stop the scan, set its field of view and the camera's settings, start the camera; the field mapping it set up."""
        from nion.utils import Geometry

        scan, camera = self.hw.scan, self.hw.camera
        if scan.is_playing:
            scan.stop_playing(sync_timeout=self.timeout_s)
        fp = scan.get_current_frame_parameters()
        fp.fov_nm = scan_side_nm(self.fov_nm, self.margin)
        fp.pixel_size = Geometry.IntSize(self.scan_pixels, self.scan_pixels)
        fp.subscan_pixel_size = None
        fp.subscan_fractional_size = None
        fp.subscan_fractional_center = None
        scan.set_current_frame_parameters(fp)
        size = self.hw.stem_controller.scan_context.fov_size_nm
        self.field = ScanField(self.fov_nm, (float(size.height), float(size.width)))
        cfp = camera.get_current_frame_parameters()
        cfp.binning = self.binning
        cfp.exposure_ms = self.exposure_ms
        camera.set_current_frame_parameters(cfp)
        cal = camera.get_camera_calibrations(cfp)
        self.pixel_rad = float(cal[-1].scale) if cal and cal[-1].units == "rad" else float("nan")
        self.frame_shape = tuple(int(v) for v in camera.get_expected_dimensions(self.binning))
        if not camera.is_playing:
            camera.start_playing()
        return self.field

    def acquire(self, positions_nm) -> SpotFrames:
        """One frame per position (x, y) nm, in order; the frames and the positions Nion reports for them."""
        from nion.utils import Geometry

        if self.field is None:
            self.prepare()
        fractions = self.field.to_fractions(positions_nm)
        frames, reported = [], []
        t0 = time.perf_counter()
        for fx, fy in fractions:
            self.hw.scan.probe_position = Geometry.FloatPoint(y=float(fy), x=float(fx))
            xdatas = self.hw.camera.grab_next_to_start(timeout=self.timeout_s)
            if not xdatas or xdatas[0] is None:
                raise AcquisitionError(f"camera {self.hw.camera.hardware_source_id} returned no frame at fraction ({fx:.4f}, {fy:.4f})")
            pos = self.hw.stem_controller.probe_position
            if pos is None or self.hw.stem_controller.probe_state != "parked":
                raise AcquisitionError(f"probe is {self.hw.stem_controller.probe_state} at {pos}, not parked where it was sent")
            frames.append(np.array(xdatas[0].data, copy=True))  # Nion may reuse the buffer for its next frame
            reported.append((float(pos.x), float(pos.y)))
        seconds = time.perf_counter() - t0
        rep = np.asarray(reported, dtype=np.float64).reshape(-1, 2)
        return SpotFrames(frames, rep, self.field.to_nm(rep), seconds)

    def close(self) -> None:
        """Stop the camera and release the probe (Nion's default position)."""
        if self.hw.camera.is_playing:
            self.hw.camera.stop_playing(sync_timeout=self.timeout_s)
        self.hw.scan.probe_position = None
