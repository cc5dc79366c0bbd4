"""Which detector pixels of integer patterns are not measurements: those that read the pixel type's largest count (numpy only).

A DECTRIS detector with ``pixel_mask_applied`` marks its masked pixels (gaps, dead,
noisy) in every frame with the pixel type's largest count (65535 for 16 bit), and a
pixel that saturates reads the same value; peers (LiberTEM, py4DSTEM) treat both as
invalid. Float patterns (intensities) mark nothing.
"""

from __future__ import annotations

import numpy as np

DETECTOR_MASK = "detector_mask"
"""the (K, K) uint8 dataset of a session or dataset file that records its invalid detector pixels (nonzero: invalid)."""


def marker_value(dtype: np.dtype) -> int | None:
    """The count an integer pixel type uses to mark a masked or saturated pixel (its largest value); None for float patterns."""
    dtype = np.dtype(dtype)
    return int(np.iinfo(dtype).max) if dtype.kind == "u" else None


def marked_pixels(patterns: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(K, K) bool: pixels that read the pixel type's largest count in any of the (N, K, K) integer ``patterns``.

    Float patterns (intensities, not counts) mark nothing. Read ``chunk`` frames at a time
    (an h5py dataset works too).
    """
    k = patterns.shape[-1]
    out = np.zeros((patterns.shape[-2], k), bool)
    marker = marker_value(patterns.dtype)
    if marker is None:
        return out
    for start in range(0, patterns.shape[0], chunk):
        block = np.asarray(patterns[start : start + chunk])
        out |= (block == marker).any(axis=0)
    return out


def invalid_in_file(f, patterns: np.ndarray) -> np.ndarray | None:
    """(K, K) bool invalid pixels of an open HDF5 file ``f`` (h5py; a dataset or a session file) whose (N, K, K) ``patterns``
    (its frames as read, or its h5py dataset: the file's pixel type; none, for the recorded mask alone) the caller has: the
    pixels at the pixel type's largest count (``marked_pixels``: files written before a mask was recorded) OR those nonzero in
    its recorded ``DETECTOR_MASK``. None when there are none; ValueError when the recorded mask is not (K, K)."""
    bad = marked_pixels(patterns)
    if DETECTOR_MASK in f:
        recorded = f[DETECTOR_MASK][()]
        if recorded.shape != bad.shape:
            raise ValueError(f"{DETECTOR_MASK} must have shape {bad.shape}, got {recorded.shape}")
        bad |= recorded != 0
    return bad if bad.any() else None
