"""A minimal 8-bit greyscale PNG encoder (zlib only), and the view of a reconstruction it is used for."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def grey_png(image: np.ndarray) -> bytes:
    """PNG bytes of a 2-D array [y, x], scaled linearly from its min (black) to its max (white)."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"grey_png needs a non-empty 2-D array, got shape {a.shape}")
    a = np.nan_to_num(a)
    lo, hi = float(a.min()), float(a.max())
    scaled = np.zeros(a.shape, np.uint8) if hi <= lo else np.round((a - lo) / (hi - lo) * 255).astype(np.uint8)
    h, w = scaled.shape
    raw = b"".join(b"\x00" + scaled[row].tobytes() for row in range(h))
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


FIELD_MARGIN_NM = 0.1
"""the PNG view shows the field of view and this much around it, nm."""
MIN_SIDE_PX = 384
"""the PNG view is enlarged (each pixel repeated) until its shorter side has at least this many pixels."""


def field_view(potential: np.ndarray, origin_nm: tuple[float, float], pixel_nm: float, fov_nm) -> tuple[np.ndarray, tuple[float, float], float]:
    """The part of a reconstruction (rad, [y, x] on a grid with ``origin_nm`` (x, y) and ``pixel_nm``) over ``fov_nm`` (x0, y0,
    width, height) plus ``FIELD_MARGIN_NM``, clipped to its 1st and 99th percentiles and enlarged by a whole factor to at least
    ``MIN_SIDE_PX``: the grid's padding (unmeasured, ~60 % of it) and a few outlier pixels made the lattice invisible in the
    full-grid PNG. Returns the image, its origin (nm) and its pixel (nm)."""
    a = np.nan_to_num(np.asarray(potential, dtype=np.float64))
    x0, y0, w, h = (float(v) for v in fov_nm)
    c0 = max(int(np.floor((x0 - FIELD_MARGIN_NM - origin_nm[0]) / pixel_nm + 1e-9)), 0)
    r0 = max(int(np.floor((y0 - FIELD_MARGIN_NM - origin_nm[1]) / pixel_nm + 1e-9)), 0)
    c1 = min(int(np.ceil((x0 + w + FIELD_MARGIN_NM - origin_nm[0]) / pixel_nm)) + 1, a.shape[1])
    r1 = min(int(np.ceil((y0 + h + FIELD_MARGIN_NM - origin_nm[1]) / pixel_nm)) + 1, a.shape[0])
    crop = a[r0:r1, c0:c1] if r1 > r0 and c1 > c0 else a
    if crop is a:
        r0 = c0 = 0
    lo, hi = np.percentile(crop, [1.0, 99.0])
    crop = np.clip(crop, lo, hi)
    factor = max(1, -(-MIN_SIDE_PX // min(crop.shape)))
    view = np.repeat(np.repeat(crop, factor, axis=0), factor, axis=1)
    return view, (origin_nm[0] + c0 * pixel_nm, origin_nm[1] + r0 * pixel_nm), pixel_nm / factor
