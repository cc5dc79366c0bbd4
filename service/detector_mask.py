"""A session's invalid detector pixels, learnt from the stream: the detector's pixel mask and pixels that read the largest count.

A DECTRIS detector with ``pixel_mask_applied`` marks its masked pixels (gaps, dead,
noisy) in every frame with the pixel type's largest count (65535 for 16 bit); a pixel
that saturates reads the same. Neither is a measurement. The service keeps the frames
exactly as sent and records which pixels are invalid, as flags per pixel:

- ``FROM_HEADER`` (1): nonzero in the pixel mask of a series header of detail ``all``
  (``basic`` headers carry no mask);
- ``MARKED`` (2): read the largest count of the frame's own pixel type in a stored frame.

The session file keeps the flags as ``detector_mask`` (K, K) uint8 (``service.store``);
the reconstructions leave flagged pixels out of the loss (``recon.detector_mask``).
"""

from __future__ import annotations

import numpy as np

from recon.invalid_pixels import marker_value

FROM_HEADER = 1
"""flag: masked in the detector's pixel mask (series header of detail ``all``)."""
MARKED = 2
"""flag: read the pixel type's largest count (masked with ``pixel_mask_applied``, or saturated) in a stored frame."""


_MARKERS: dict[np.dtype, int | None] = {}
"""marker_value by pixel type (np.iinfo costs about as much as a frame's max)."""


def fitted(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``image`` ready to be stored as ``dtype`` (a session's pixel type): a wider unsigned frame, admitted only with counts that fit
    (marks aside), has what exceeds ``dtype`` clipped to its largest value (the wider type's mark becomes ``dtype``'s); else as it is."""
    if image.dtype.itemsize <= dtype.itemsize:
        return image
    return np.minimum(image, np.iinfo(dtype).max)


def measured_peak(image: np.ndarray) -> int:
    """The largest count of ``image`` that is a measurement: pixels at the pixel type's largest value are marks, not counts (0 if all are)."""
    marker = marker_value(image.dtype)
    counts = image if marker is None else image[image != marker]
    return int(counts.max()) if counts.size else 0


def largest_per_pixel(images: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """(K, K) the largest count of each pixel over the (K, K) ``images`` of one type (a list, or one (n, K, K) array): the reduction
    ``DetectorMask.observe`` tests for marks (one image: itself)."""
    return images[0] if len(images) == 1 else np.max(images if isinstance(images, np.ndarray) else np.stack(images), axis=0)


class DetectorMask:
    """The (K, K) invalid-pixel flags of one session (``FROM_HEADER`` | ``MARKED``); not thread-safe (the manager's lock)."""

    def __init__(self, k: int, flags: np.ndarray | None = None) -> None:
        self.flags = np.zeros((k, k), np.uint8) if flags is None else np.asarray(flags, np.uint8).copy()
        if self.flags.shape != (k, k):
            raise ValueError(f"detector_mask must have shape ({k}, {k}), got {self.flags.shape}")
        self._marked = (self.flags & MARKED) != 0
        """(K, K) bool, the pixels flagged ``MARKED`` (what ``observe`` tests a frame against)."""

    @property
    def invalid(self) -> np.ndarray | None:
        """(K, K) bool, True where a pixel is invalid (a new array); None when every pixel is valid."""
        bad = self.flags != 0
        return bad if bad.any() else None

    @property
    def count(self) -> int:
        """How many pixels are invalid."""
        return int(np.count_nonzero(self.flags))

    def _add(self, where: np.ndarray, flag: int) -> bool:
        new = where & (self.flags & flag == 0)
        if not new.any():
            return False
        self.flags[new] |= flag
        return True

    def from_header(self, pixel_mask: np.ndarray) -> bool:
        """Flag the pixels nonzero in the detector's (y, x) ``pixel_mask``; True if any is new. A mask of another shape (another
        detector size; its frames are refused) is ignored."""
        mask = np.asarray(pixel_mask)
        return mask.shape == self.flags.shape and self._add(mask != 0, FROM_HEADER)

    def observe(self, images: list[np.ndarray], stack: np.ndarray | None = None, marked: list[int | None] | None = None) -> bool:
        """Flag pixels that read their pixel type's largest count in any of the (K, K) ``images`` (as received; ``stack``: the same
        images as one (n, K, K) array, if they are one; ``marked``: per image, how many of its pixels read that count, where it is
        known (``Frame.marked``; None: not known)); True if any is new.

        On the ingest path (the manager's lock held): the frames of one pixel type are stacked
        and reduced to their per-pixel maximum (a pixel reads the largest count in some frame
        exactly when that maximum is it), then compared once: ~2-4 us a 64 x 64 frame, against
        ~9 for a comparison per frame. Frames known to have no such pixel are left out: when
        none is left (the common case, counted by the compiled receive loop) nothing is reduced.
        """
        if marked is not None:
            keep = [m != 0 for m in marked]  # a count not known (None) is looked at
            if not any(keep):
                return False
            if not all(keep):
                images, stack = [image for image, k in zip(images, keep, strict=True) if k], None
        if stack is not None and stack.shape[1:] == self.flags.shape:  # the images as one array already: no stacking
            by_type = {stack.dtype: stack}
        elif len(images) == 1:  # the per-frame ingest path
            by_type = {images[0].dtype: list(images)} if images[0].shape == self.flags.shape else {}
        else:
            by_type: dict[np.dtype, list[np.ndarray]] = {}
            for image in images:
                if image.shape == self.flags.shape:
                    by_type.setdefault(image.dtype, []).append(image)
        changed = False
        for dtype, same in by_type.items():
            marker = _MARKERS.get(dtype) or _MARKERS.setdefault(dtype, marker_value(dtype))
            if marker is None:
                continue
            hits = largest_per_pixel(same) == marker
            if np.greater(hits, self._marked).any():  # a mark where none was known
                self.flags[hits] |= MARKED
                self._marked |= hits
                changed = True
        return changed
