"""Building the multipart messages of a stream v1 series (what a DCU sends), and reading their JSON parts.

A series is a global header message (``dheader-1.0`` then, unless ``header_detail``
is ``none``, the detector config JSON; ``all`` adds flatfield, pixel mask and
count-rate parts, JSON + blob each), one four-part message per image (``dimage-1.0``,
``dimage_d-1.0``, the blob, ``dconfig-1.0``; an optional appendix may follow) and a
one-part ``dseries_end-1.0``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from detector_stream.codec import ENCODINGS, encode_frame
from detector_stream.errors import CodecError

HEADER_DETAILS = ("none", "basic", "all")
APPENDIX_PARTS = ("dflatfield-1.0", "dpixelmask-1.0", "dcountrate_table-1.0")
"""htypes of the header-detail ``all`` parts: a JSON part, then its blob."""


def _json(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _blob_part(htype: str, array: np.ndarray) -> list[bytes]:
    array = np.ascontiguousarray(array)
    header = {"htype": htype, "shape": [int(array.shape[-1]), int(array.shape[0])], "type": array.dtype.name}
    return [_json(header), array.astype(array.dtype.newbyteorder("<")).tobytes()]


def series_start_parts(series: int, config: dict, header_detail: str = "basic", pixel_mask: np.ndarray | None = None) -> list[bytes]:
    """Global header message of a series: dheader, config (unless ``none``), and for ``all`` flatfield, mask (``pixel_mask``, (y, x);
    zeros if None), count rate."""
    if header_detail not in HEADER_DETAILS:
        raise CodecError(f"header_detail must be one of {HEADER_DETAILS}, got {header_detail!r}")
    parts = [_json({"htype": "dheader-1.0", "series": int(series), "header_detail": header_detail})]
    if header_detail == "none":
        return parts
    parts.append(_json(config))
    if header_detail == "all":
        nx = int(config.get("x_pixels_in_detector", 1))
        ny = int(config.get("y_pixels_in_detector", 1))
        parts += _blob_part("dflatfield-1.0", np.ones((ny, nx), np.float32))
        mask = np.zeros((ny, nx), np.uint32) if pixel_mask is None else np.asarray(pixel_mask, np.uint32)
        parts += _blob_part("dpixelmask-1.0", mask)
        parts += _blob_part("dcountrate_table-1.0", np.linspace(0, 1, 2 * 64, dtype=np.float32).reshape(2, 64))
    return parts


def read_pixel_mask(head: dict, blob: bytes) -> np.ndarray:
    """The (y, x) pixel mask of a ``dpixelmask-1.0`` part (JSON ``head`` with ``shape`` [x, y] and ``type``, raw little-endian
    ``blob``); CodecError for anything else."""
    try:
        nx, ny = (int(v) for v in head["shape"])
        dtype = np.dtype(str(head.get("type", "uint32"))).newbyteorder("<")
    except (KeyError, TypeError, ValueError) as err:
        raise CodecError(f"pixel mask part: bad shape or type ({err})") from None
    if dtype.kind not in "ui" or nx <= 0 or ny <= 0 or len(blob) != nx * ny * dtype.itemsize:
        raise CodecError(f"pixel mask part: {len(blob)} bytes do not hold a {ny}x{nx} {dtype.name} mask")
    return np.frombuffer(blob, dtype).reshape(ny, nx).astype(np.uint32)


def image_parts(
    series: int,
    frame: int,
    image: np.ndarray,
    encoding: str,
    start_ns: int,
    stop_ns: int,
    real_ns: int,
    appendix: bytes | None = None,
    *,
    blob: bytes | None = None,
    digest: str | None = None,
) -> list[bytes]:
    """The four (five with an appendix) parts of one image; ``blob`` may carry an already encoded image, ``digest`` its md5
    (hex; computed here when None)."""
    image = np.asarray(image)
    if blob is None:
        blob = encode_frame(image, encoding)
    # Formatted directly (ints and fixed strings only): json.dumps costs more than the rest of a frame.
    if encoding not in ENCODINGS:
        raise CodecError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    parts = [
        b'{"htype":"dimage-1.0","series":%d,"frame":%d,"hash":"%s"}' % (series, frame, (digest or hashlib.md5(blob).hexdigest()).encode()),
        b'{"htype":"dimage_d-1.0","shape":[%d,%d],"type":"%s","encoding":"%s","size":%d}'
        % (image.shape[1], image.shape[0], image.dtype.name.encode(), encoding.encode(), len(blob)),
        blob,
        b'{"htype":"dconfig-1.0","start_time":%d,"stop_time":%d,"real_time":%d}' % (start_ns, stop_ns, real_ns),
    ]
    if appendix is not None:
        parts.append(appendix)
    return parts


def series_end_parts(series: int) -> list[bytes]:
    """The one-part end-of-series message."""
    return [_json({"htype": "dseries_end-1.0", "series": int(series)})]


def expected_frames(config: dict) -> int | None:
    """Frames in a series from its config: ntrigger for exte/inte, nimages*ntrigger for exts/ints; None if unknown."""
    try:
        ntrigger = int(config["ntrigger"])
        mode = str(config.get("trigger_mode", "ints"))
        return ntrigger if mode in ("exte", "inte") else int(config["nimages"]) * ntrigger
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


_JSON = json.JSONDecoder()


def load_json_object(part: bytes) -> dict | None:
    """A JSON object part, or None for anything else (json.loads on bytes sniffs the encoding each call; stream v1 is UTF-8)."""
    if part[:1] != b"{":
        return None
    try:
        obj = _JSON.decode(part.decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None
