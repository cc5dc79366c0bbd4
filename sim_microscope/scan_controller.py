"""The simulated microscope's scan controller: where the probe is sent and where it lands.

A position list (nm) or a parked probe, a beam settle time, and optional scan errors
(``sim_microscope.scan_errors.ScanErrors``). The simulated detector asks it, at each
trigger, for both: frames are simulated where the beam landed, the position readback
reports where it was sent.
"""

from __future__ import annotations

import threading

import numpy as np

from sim_microscope.scan_errors import ScanErrors


class DetectorError(Exception):
    """A command is not allowed now (HTTP 409) or a value is invalid (HTTP 400); one-line message."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class ScanController:
    """Nion-like scan controller stand-in: a probe position list (nm) or a parked probe, and a beam settle time.

    With ``errors`` (``ScanErrors``: jitter, drift, a linear distortion about ``centre_nm``)
    the beam lands off the commanded positions, as real scan coils place it: frames are
    simulated where the beam really is, while the position readback reports the commanded
    positions (the microscope does not know its own errors). Each list or park draws its
    own jitter once, so a position re-triggered stays where it landed.
    """

    def __init__(self, settle_time_s: float = 0.0, errors: ScanErrors | None = None, centre_nm: tuple[float, float] = (0.0, 0.0)) -> None:
        self._lock = threading.Lock()
        self.positions_nm: np.ndarray | None = None
        self.true_nm: np.ndarray | None = None
        """where the beam really is for each listed position (nm); the commanded ones without errors."""
        self.park_nm = (0.0, 0.0)
        self.true_park_nm = (0.0, 0.0)
        self.probe_nm = (0.0, 0.0)
        self.settle_time_s = settle_time_s
        self.errors = None if errors is None or errors.is_zero else errors
        self.centre_nm = centre_nm
        self.placed = 0
        """positions placed so far (the drift's clock)."""
        self.readback: tuple[int, np.ndarray] | None = None
        """(series, (N, 2) nm): where the beam really was for each frame of the last prepared series."""

    def set_positions(self, positions_nm) -> int:
        p = np.asarray(positions_nm, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
            raise DetectorError(f"positions_nm must be a non-empty list of [x, y] pairs, got shape {p.shape}", 400)
        if not np.isfinite(p).all():
            raise DetectorError("positions_nm contains NaN or infinite values", 400)
        with self._lock:
            self.positions_nm = p
            self.true_nm = self._land(p)
        return len(p)

    def _land(self, commanded: np.ndarray) -> np.ndarray:
        """Where the beam lands for ``commanded`` (N, 2) nm (lock held)."""
        if self.errors is None:
            return commanded
        true = self.errors.true_positions(commanded, self.centre_nm, self.placed)
        self.placed += len(commanded)
        return true

    def park(self, position_nm) -> None:
        x, y = (float(v) for v in position_nm)
        if not (np.isfinite(x) and np.isfinite(y)):
            raise DetectorError("park position must be finite", 400)
        with self._lock:
            self.positions_nm = self.true_nm = None
            self.park_nm = self.probe_nm = (x, y)
            self.true_park_nm = tuple(float(v) for v in self._land(np.array([[x, y]]))[0])

    def set_settle_time(self, seconds: float) -> None:
        if not (0 <= float(seconds) <= 10):
            raise DetectorError(f"settle time must be within 0..10 s, got {seconds}", 400)
        self.settle_time_s = float(seconds)

    def positions_for(self, frames: np.ndarray) -> np.ndarray:
        """(N, 2) where the beam lands for frames, nm: frame i at position i; past the list the probe stays at the last one."""
        with self._lock:
            return self._positions(frames, False)

    def landed_and_sent(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(where the beam lands, where it was sent) for ``frames``, read in one step: a list or park arriving from another
        thread cannot fall between the two (frames from one list, readback from the other)."""
        with self._lock:
            return self._positions(frames, False), self._positions(frames, True)

    def _positions(self, frames: np.ndarray, commanded: bool) -> np.ndarray:
        if self.positions_nm is None:
            return np.tile(np.asarray(self.park_nm if commanded else self.true_park_nm, dtype=np.float64), (len(frames), 1))
        listed = self.positions_nm if commanded else self.true_nm
        return listed[np.minimum(frames, len(listed) - 1)]
