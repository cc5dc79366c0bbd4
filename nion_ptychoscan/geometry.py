"""The session's field of view (nm) on Nion's scan context (fractional scan coordinates).

Nion's STEM controller places a parked probe in fractional coordinates of the scan
context: ``FloatPoint(y, x)`` with (0, 0) the top-left corner and (1, 1) the bottom-right
of a field ``scan_context.fov_size_nm`` (height, width in nm) wide, centred on
``scan_context.center_nm`` and rotated by ``rotation_rad`` (the usim ronchigram shifts
the beam by ``(fraction - 0.5) * fov_size_nm``). The driver maps the session's field
centre to the scan centre, fraction (0.5, 0.5), with the scan's own nm scale, so a session
position (x, y) nm is ``0.5 + (x - cx) / fov_width`` and ``0.5 + (y - cy) / fov_height``.
The session's frame is therefore the scan frame (x right, y down, rotated with the scan).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class FieldError(ValueError):
    """A position does not fit in the Nion scan field; one line naming it."""


@dataclass(frozen=True)
class ScanField:
    """A session field of view (x0, y0, width, height) in nm, mapped onto a scan of ``fov_size_nm`` (height, width) nm."""

    fov_nm: tuple[float, float, float, float]
    scan_size_nm: tuple[float, float]
    """(height, width) of Nion's scan context, nm (``scan_context.fov_size_nm``)."""

    @property
    def center_nm(self) -> tuple[float, float]:
        """(x, y) centre of the session's field, nm: where fraction (0.5, 0.5) lands."""
        x0, y0, w, h = self.fov_nm
        return x0 + w / 2, y0 + h / 2

    def to_fractions(self, positions_nm) -> np.ndarray:
        """(N, 2) session positions (x, y) nm -> (N, 2) scan fractions (x, y); FieldError outside [0, 1]."""
        p = np.asarray(positions_nm, dtype=np.float64).reshape(-1, 2)
        cx, cy = self.center_nm
        height, width = self.scan_size_nm
        frac = np.column_stack([0.5 + (p[:, 0] - cx) / width, 0.5 + (p[:, 1] - cy) / height])
        bad = ~((frac >= 0.0) & (frac <= 1.0)).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise FieldError(f"position {i} {tuple(p[i])} nm lies outside the Nion scan field ({width:g} x {height:g} nm around {self.center_nm})")
        return frac

    def to_nm(self, fractions) -> np.ndarray:
        """(N, 2) scan fractions (x, y) -> (N, 2) session positions (x, y) nm."""
        f = np.asarray(fractions, dtype=np.float64).reshape(-1, 2)
        cx, cy = self.center_nm
        height, width = self.scan_size_nm
        return np.column_stack([cx + (f[:, 0] - 0.5) * width, cy + (f[:, 1] - 0.5) * height])


def scan_side_nm(fov_nm: tuple[float, float, float, float], margin: float = 0.0) -> float:
    """Nion's ``fov_nm`` (the side of a square scan, nm) that holds the session field with ``margin`` (fraction) to spare."""
    return max(fov_nm[2], fov_nm[3]) * (1.0 + margin)
