"""DECTRIS SIMPLON stream v1 (ZeroMQ) codec: frame encodings, message builders, a stateful decoder.

Pure functions, no sockets (``service.receiver`` owns those). Wire format: DESIGN.md
section 5. A series is a global header message (``dheader-1.0`` then, unless
``header_detail`` is ``none``, the detector config JSON; ``all`` adds flatfield,
pixel mask and count-rate parts, JSON + blob each), one four-part message per image
(``dimage-1.0``, ``dimage_d-1.0``, the blob, ``dconfig-1.0``; an optional appendix
may follow) and a one-part ``dseries_end-1.0``.

Encodings: ``bs8-lz4<``/``bs16-lz4<``/``bs32-lz4<`` (12-byte header: u64 big-endian
uncompressed size + u32 big-endian block size in bytes, then per block a u32
big-endian compressed size and an LZ4 block of bitshuffled data; 8192-byte blocks),
``lz4<`` (one raw LZ4 block, no size prefix) and ``<`` (raw little-endian).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

import bitshuffle
import lz4.block
import numpy as np

ENCODINGS = ("bs8-lz4<", "bs16-lz4<", "bs32-lz4<", "lz4<", "<")
HEADER_DETAILS = ("none", "basic", "all")
DTYPES = ("uint8", "uint16", "uint32")
BLOCK_BYTES = 8192
"""Bitshuffle block size of the DCU, in bytes."""
_BS_ITEMSIZE = {"bs8-lz4<": 1, "bs16-lz4<": 2, "bs32-lz4<": 4}
_BS_HEADER = struct.Struct(">QI")
_U32 = struct.Struct(">I")
MAX_BLOCK_BYTES = 1 << 24
"""Largest bitshuffle block accepted (the DCU uses 8192 bytes; bitshuffle allocates one block per call)."""
MAX_FRAME_PIXELS = 1 << 26
"""Largest frame accepted (67 M pixels, 3.7x an EIGER2 X 16M): the decoded array is allocated from the shape."""
_APPENDIX_PARTS = ("dflatfield-1.0", "dpixelmask-1.0", "dcountrate_table-1.0")


class StreamErrorKind(StrEnum):
    """What went wrong, set where a ``StreamError`` is made (values are the service's error counter names)."""

    MALFORMED = "malformed"
    """Cannot be parsed: not a JSON object (garbage, an empty part, a JSON array), bad header fields, an undecodable blob."""
    TRUNCATED = "truncated"
    """Fewer parts than an image message needs, or a blob shorter or longer than its descriptor's size."""
    CORRUPT = "corrupt"
    """The blob's md5 does not match the image header's hash."""
    DUPLICATED = "duplicated"
    OUT_OF_ORDER = "out_of_order"
    MISSING = "missing"
    """Frames skipped: a later frame index arrived first."""
    UNEXPECTED = "unexpected"
    """A frame index outside the series its config announced."""
    INCOMPLETE_SERIES = "incomplete_series"
    """A series ended (or was cut off by the next one) before all its frames arrived."""
    OTHER = "other"
    """Protocol oddities: an unknown htype or header_detail, a config that never came, frames or an end of a series not open."""


_K = StreamErrorKind


class CodecError(ValueError):
    """A frame blob cannot be encoded or decoded as asked; the message says why."""


_DTYPE_BY_NAME = {name: np.dtype(name) for name in DTYPES}


def _check_dtype(dtype) -> np.dtype:
    if isinstance(dtype, str) and dtype in _DTYPE_BY_NAME:  # the stream's "type" field, once per frame: skip numpy's parsing
        return _DTYPE_BY_NAME[dtype]
    dt = np.dtype(dtype)
    if dt.name not in DTYPES:
        raise CodecError(f"unsupported pixel type {dt.name!r}; expected one of {DTYPES}")
    return dt


def _check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise CodecError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    return encoding


def _bs_block_elements(encoding: str, dtype: np.dtype) -> int:
    """Bitshuffle elements per 8192-byte block. The ``bsN`` of the encoding is the element size in bits."""
    if _BS_ITEMSIZE[encoding] != dtype.itemsize:
        raise CodecError(f"encoding {encoding} needs {8 * _BS_ITEMSIZE[encoding]}-bit pixels, got {dtype.name}")
    return BLOCK_BYTES // dtype.itemsize


def encode_frame(image: np.ndarray, encoding: str) -> bytes:
    """Encode one (y, x) uint8/uint16/uint32 image as a stream v1 blob in ``encoding``."""
    image = np.asarray(image)
    dt = _check_dtype(image.dtype)
    _check_encoding(encoding)
    if image.ndim != 2:
        raise CodecError(f"image must be 2-D (y, x), got shape {image.shape}")
    data = np.ascontiguousarray(image, dtype=dt.newbyteorder("<"))
    if encoding == "<":
        return data.tobytes()
    if encoding == "lz4<":
        return lz4.block.compress(data.tobytes(), store_size=False)
    block = _bs_block_elements(encoding, dt)
    body = bitshuffle.compress_lz4(data.ravel(), block)
    return _BS_HEADER.pack(data.nbytes, BLOCK_BYTES) + body.tobytes()


def encode_frames(images: np.ndarray, encoding: str) -> list[bytes]:
    """Encode a stack (N, y, x) of images; one bitshuffle call when each frame is whole 8192-byte blocks."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise CodecError(f"images must be 3-D (N, y, x), got shape {images.shape}")
    dt = _check_dtype(images.dtype)
    _check_encoding(encoding)
    frame_bytes = images[0].nbytes if len(images) else 0
    if encoding not in _BS_ITEMSIZE or len(images) < 2 or frame_bytes % BLOCK_BYTES:
        return [encode_frame(im, encoding) for im in images]
    block = _bs_block_elements(encoding, dt)
    body = bitshuffle.compress_lz4(np.ascontiguousarray(images, dtype=dt.newbyteorder("<")).ravel(), block).tobytes()
    blocks_per_frame = frame_bytes // BLOCK_BYTES
    header = _BS_HEADER.pack(frame_bytes, BLOCK_BYTES)
    out, pos = [], 0
    for _ in range(len(images)):
        start = pos
        for _ in range(blocks_per_frame):
            (size,) = struct.unpack_from(">I", body, pos)
            pos += 4 + size
        out.append(header + body[start:pos])
    return out


def lz4_bound(nbytes: int) -> int:
    """LZ4_compressBound: the most bytes LZ4 can turn ``nbytes`` input bytes into (a larger block length is a lie)."""
    return nbytes + nbytes // 255 + 16


def _check_shape(shape) -> tuple[int, int]:
    """``(y, x)`` as ints, each >= 1 and at most MAX_FRAME_PIXELS pixels: the output is allocated from it before decoding."""
    try:
        y, x = (int(v) for v in shape)
    except (TypeError, ValueError, OverflowError) as err:
        raise CodecError(f"frame shape must be two integers, got {shape!r} ({err})") from None
    if y < 1 or x < 1 or y * x > MAX_FRAME_PIXELS:
        raise CodecError(f"frame shape {(y, x)} is outside 1..{MAX_FRAME_PIXELS} pixels")
    return y, x


def _check_bs_blocks(blob: bytes, pixels: int, itemsize: int, block: int) -> None:
    """Walk the bitshuffle blocks after the 12-byte header; CodecError unless they exactly fill ``blob``.

    bitshuffle's C code trusts each block's u32 big-endian compressed length and jumps
    by it to the next block: a length past the end of the blob reads (or, for the raw
    tail, copies) memory outside it and can kill the process. The layout for ``pixels``
    elements in blocks of ``block`` elements (a multiple of 8) is: ``pixels // block``
    full blocks, one partial block of the remainder rounded down to a multiple of 8
    (if any), then the last ``pixels % 8`` elements uncompressed. Each block is a u32
    length (1..lz4_bound of its uncompressed bytes) and that many LZ4 bytes.
    """
    size = len(blob)
    full, rest = divmod(pixels, block)
    partial = rest - rest % 8
    nblocks = full + (1 if partial else 0)
    pos = _BS_HEADER.size
    for i in range(nblocks):
        raw = (block if i < full else partial) * itemsize
        if pos + 4 > size:
            raise CodecError(f"bitshuffle blob of {size} bytes stops before block {i} of {nblocks}")
        (length,) = _U32.unpack_from(blob, pos)
        if not 0 < length <= lz4_bound(raw):
            raise CodecError(f"bitshuffle block {i} claims {length} compressed bytes; a {raw}-byte block takes 1..{lz4_bound(raw)}")
        pos += 4 + length
        if pos > size:
            raise CodecError(f"bitshuffle block {i} claims {length} compressed bytes, the blob has {size - pos + length} left")
    tail = (pixels % 8) * itemsize
    if size - pos != tail:
        raise CodecError(f"bitshuffle blob has {size - pos} bytes after its {nblocks} block(s), {tail} expected")


def _bs_payload(blob: bytes, shape: tuple[int, int], dt: np.dtype, encoding: str) -> tuple[memoryview, int]:
    """Check the 12-byte bitshuffle header and every block; returns the block stream and the block size in elements.

    Nothing reaches bitshuffle's C code unchecked: the header's uncompressed size is 0
    or exactly the shape's, the block size is 0 (the DCU default) or a multiple of 8
    pixels up to MAX_BLOCK_BYTES, and the blocks exactly fill the blob (``_check_bs_blocks``).
    """
    _bs_block_elements(encoding, dt)
    if len(blob) < _BS_HEADER.size:
        raise CodecError(f"bitshuffle blob of {len(blob)} bytes is shorter than its 12-byte header")
    total, block_bytes = _BS_HEADER.unpack_from(blob, 0)
    expected = int(shape[0]) * int(shape[1]) * dt.itemsize
    if total not in (0, expected):
        raise CodecError(f"bitshuffle header says {total} bytes uncompressed, shape {shape} {dt.name} needs {expected}")
    if block_bytes == 0:
        block_bytes = BLOCK_BYTES  # a zeroed header (some senders): the DCU default
    if block_bytes % (8 * dt.itemsize) or block_bytes > MAX_BLOCK_BYTES:
        raise CodecError(
            f"bitshuffle block size {block_bytes} bytes is not a multiple of 8 {dt.name} elements up to {MAX_BLOCK_BYTES} bytes"
        )
    block = block_bytes // dt.itemsize
    _check_bs_blocks(blob, expected // dt.itemsize, dt.itemsize, block)
    return memoryview(blob)[_BS_HEADER.size :], block


def decode_frame(blob: bytes, shape: tuple[int, int], dtype: str, encoding: str) -> np.ndarray:
    """Decode one stream v1 blob to a (y, x) array of ``dtype``; raises CodecError on malformed input."""
    dt = _check_dtype(dtype)
    _check_encoding(encoding)
    shape = _check_shape(shape)
    nbytes = shape[0] * shape[1] * dt.itemsize
    le = dt.newbyteorder("<")
    try:
        if encoding == "<":
            if len(blob) != nbytes:
                raise CodecError(f"raw frame has {len(blob)} bytes, shape {shape} {dt.name} needs {nbytes}")
            return np.frombuffer(blob, dtype=le).reshape(shape).astype(dt)
        if encoding == "lz4<":
            raw = lz4.block.decompress(blob, uncompressed_size=nbytes)
            if len(raw) != nbytes:
                raise CodecError(f"lz4 frame decompressed to {len(raw)} bytes, expected {nbytes}")
            return np.frombuffer(raw, dtype=le).reshape(shape).astype(dt)
        payload, block = _bs_payload(blob, shape, dt, encoding)
        out = bitshuffle.decompress_lz4(np.frombuffer(payload, dtype=np.uint8), shape, le, block)
        return out.astype(dt, copy=False)
    except CodecError:
        raise
    except Exception as err:  # lz4/bitshuffle raise assorted types on corrupt data
        raise CodecError(f"cannot decode {encoding} frame of {len(blob)} bytes: {err}") from None


@dataclass
class DecodedBatch:
    """What ``decode_batch`` made of N blobs: every good frame decoded, every bad one's error by its index."""

    images: np.ndarray
    """(N, y, x); the rows of the frames in ``errors`` are zeros."""
    errors: dict[int, CodecError]


def decode_batch(blobs: list[bytes], shape: tuple[int, int], dtype: str, encoding: str) -> DecodedBatch:
    """Decode N blobs of one shape/type/encoding; a malformed blob costs only its own frame.

    Every bitshuffle blob's header and blocks are checked first (``_bs_payload``); the
    good ones that are whole 8192-byte blocks decode in one bitshuffle call, and should
    that call fail (LZ4 data that is bad inside a well-framed block) they decode one by
    one so that only the bad frame is lost. A bad shape, type or encoding raises
    CodecError: it is the whole group's.
    """
    dt = _check_dtype(dtype)
    _check_encoding(encoding)
    shape = _check_shape(shape)
    errors: dict[int, CodecError] = {}
    if encoding not in _BS_ITEMSIZE:
        images = np.zeros((len(blobs), *shape), dt)
        for i, blob in enumerate(blobs):
            try:
                images[i] = decode_frame(blob, shape, dtype, encoding)
            except CodecError as err:
                errors[i] = err
        return DecodedBatch(images, errors)
    le = dt.newbyteorder("<")
    payloads: dict[int, tuple[memoryview, int]] = {}
    for i, blob in enumerate(blobs):
        try:
            payloads[i] = _bs_payload(blob, shape, dt, encoding)
        except CodecError as err:
            errors[i] = err
    whole = [i for i, (_, block) in payloads.items() if block * dt.itemsize == BLOCK_BYTES]
    if len(whole) >= 2 and (shape[0] * shape[1] * dt.itemsize) % BLOCK_BYTES == 0:
        joined = np.frombuffer(b"".join(payloads[i][0] for i in whole), dtype=np.uint8)
        try:
            decoded = bitshuffle.decompress_lz4(joined, (len(whole), *shape), le, BLOCK_BYTES // dt.itemsize)
        except Exception:  # bad LZ4 data inside a well-framed block: one by one below, to find which
            decoded = None
        if decoded is not None:
            if len(whole) == len(blobs):
                return DecodedBatch(decoded.astype(dt, copy=False), errors)
            images = np.zeros((len(blobs), *shape), dt)
            images[whole] = decoded
            for i in whole:
                del payloads[i]
        else:
            images = np.zeros((len(blobs), *shape), dt)
    else:
        images = np.zeros((len(blobs), *shape), dt)
    for i, (payload, block) in payloads.items():
        try:
            images[i] = bitshuffle.decompress_lz4(np.frombuffer(payload, dtype=np.uint8), shape, le, block)
        except Exception as err:
            errors[i] = CodecError(f"cannot decode {encoding} frame of {len(blobs[i])} bytes: {err}")
    return DecodedBatch(images, errors)


def decode_frames(blobs: list[bytes], shape: tuple[int, int], dtype: str, encoding: str) -> np.ndarray:
    """Decode N blobs of one shape/type/encoding to (N, y, x); one bitshuffle call when frames are whole blocks.

    Raises CodecError, naming the first malformed blob, if any is (``decode_batch`` keeps the others).
    """
    batch = decode_batch(blobs, shape, dtype, encoding)
    if batch.errors:
        first = min(batch.errors)
        raise CodecError(f"frame {first} of {len(blobs)}: {batch.errors[first]}")
    return batch.images


def _json(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _blob_part(htype: str, array: np.ndarray) -> list[bytes]:
    array = np.ascontiguousarray(array)
    header = {"htype": htype, "shape": [int(array.shape[-1]), int(array.shape[0])], "type": array.dtype.name}
    return [_json(header), array.astype(array.dtype.newbyteorder("<")).tobytes()]


def series_start_parts(series: int, config: dict, header_detail: str = "basic") -> list[bytes]:
    """Global header message of a series: dheader, config (unless ``none``), and for ``all`` flatfield, mask, count rate."""
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
        parts += _blob_part("dpixelmask-1.0", np.zeros((ny, nx), np.uint32))
        parts += _blob_part("dcountrate_table-1.0", np.linspace(0, 1, 2 * 64, dtype=np.float32).reshape(2, 64))
    return parts


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
) -> list[bytes]:
    """The four (five with an appendix) parts of one image; ``blob`` may carry an already encoded image."""
    image = np.asarray(image)
    if blob is None:
        blob = encode_frame(image, encoding)
    # Formatted directly (ints and fixed strings only): json.dumps costs more than the rest of a frame.
    if encoding not in ENCODINGS:
        raise CodecError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    parts = [
        b'{"htype":"dimage-1.0","series":%d,"frame":%d,"hash":"%s"}' % (series, frame, hashlib.md5(blob).hexdigest().encode()),
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


@dataclass
class SeriesStart:
    series: int
    header_detail: str
    config: dict


@dataclass
class Frame:
    series: int
    frame: int
    image: np.ndarray
    """(y, x) pixel counts."""
    start_time_ns: int | None = None
    stop_time_ns: int | None = None
    real_time_ns: int | None = None
    received_at: float | None = None
    """``time.perf_counter()`` when the receiver took the frame's message off its socket (None: not given)."""


@dataclass
class SeriesEnd:
    series: int


@dataclass
class StreamError:
    reason: str
    series: int | None = None
    frame: int | None = None
    kind: StreamErrorKind = field(default=StreamErrorKind.OTHER, kw_only=True)
    """Set where the error is made; ``reason`` is for people."""


Event = SeriesStart | Frame | SeriesEnd | StreamError


def expected_frames(config: dict) -> int | None:
    """Frames in a series from its config: ntrigger for exte/inte, nimages*ntrigger for exts/ints; None if unknown."""
    try:
        ntrigger = int(config["ntrigger"])
        mode = str(config.get("trigger_mode", "ints"))
        return ntrigger if mode in ("exte", "inte") else int(config["nimages"]) * ntrigger
    except (KeyError, TypeError, ValueError):
        return None


_JSON = json.JSONDecoder()


def _load(part: bytes) -> dict | None:
    """A JSON object part, or None (json.loads on bytes sniffs the encoding each call; stream v1 is UTF-8)."""
    if part[:1] != b"{":
        return None
    try:
        obj = _JSON.decode(part.decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


@dataclass
class _Pending:
    """A frame whose blob awaits (batched) decoding."""

    series: int
    frame: int
    blob: bytes
    shape: tuple[int, int]
    dtype: str
    encoding: str
    times: tuple[int | None, int | None, int | None]
    received_at: float | None = None


@dataclass
class _SeriesState:
    series: int
    total: int | None = None
    next_frame: int = 0
    received: int = 0
    seen: set = field(default_factory=set)


def _int_or_none(value) -> int | None:
    """An int from a JSON number (floats truncated, as before); None for anything else, including inf and NaN."""
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, float) and math.isfinite(value) else None


class StreamDecoder:
    """Turns the multipart messages of one connection into events; stateful, never raises on bad input.

    ``feed`` takes one message; ``feed_many`` takes several and decodes their
    bitshuffle frames in batches (one call for runs of same-shape frames that are
    whole 8192-byte blocks, such as 64x64 uint16). Header-detail ``all`` parts and
    image appendices are skipped; md5 hashes are checked (an empty hash is accepted);
    truncated, corrupt, duplicated, missing and out-of-order frames, a series left
    without ``dseries_end`` and unknown messages become ``StreamError`` events.
    """

    def __init__(self) -> None:
        self._state: _SeriesState | None = None
        self._awaiting_config: tuple[int, str] | None = None
        self._events: list = []
        self._received_at: float | None = None
        self._appendix_blob_expected = False
        self.error_counts: Counter[StreamErrorKind] = Counter()
        """Every ``StreamError`` this decoder has returned, by kind (read it from the thread that feeds)."""

    def feed(self, parts: list[bytes]) -> list[Event]:
        """Events of one zmq multipart message."""
        return self.feed_many([parts])

    def feed_many(self, messages: list[list[bytes]], received_at: list[float] | None = None) -> list[Event]:
        """Events of several messages in order, frames decoded in batches.

        ``received_at`` (one ``time.perf_counter()`` per message) goes to each ``Frame``'s ``received_at``.
        """
        self._events = []
        for n, parts in enumerate(messages):
            self._received_at = received_at[n] if received_at is not None else None
            try:
                self._message([bytes(p) if not isinstance(p, bytes) else p for p in parts])
            except Exception as err:  # belt and braces: a decoder must not raise on input
                self._error(_K.MALFORMED, f"malformed message: {type(err).__name__}: {err}")
        self._flush()
        events, self._events = self._events, []
        return events

    def _counted(self, error: StreamError) -> StreamError:
        self.error_counts[error.kind] += 1
        return error

    def _error(self, kind: StreamErrorKind, reason: str, series: int | None = None, frame: int | None = None) -> None:
        """Return (and count) one problem: nothing malformed is dropped without a ``StreamError``."""
        self._events.append(self._counted(StreamError(reason, series, frame, kind=kind)))

    # --- message kinds -------------------------------------------------------------

    def _message(self, parts: list[bytes]) -> None:
        if not parts:
            self._error(_K.MALFORMED, "malformed message: empty message (no parts)")
            return
        blob_expected, self._appendix_blob_expected = self._appendix_blob_expected, False
        head = _load(parts[0])
        if head is None:
            if blob_expected and len(parts) == 1:
                return  # the blob of a header-detail "all" part whose JSON came as its own message
            self._error(_K.MALFORMED, f"malformed message: first part of {len(parts[0])} bytes is not a JSON object")
            return
        htype = str(head.get("htype", ""))
        if htype.startswith("dheader-"):
            self._header(head, parts)
        elif htype.startswith("dimage-"):
            self._image(head, parts)
        elif htype.startswith("dseries_end-"):
            self._end(head)
        elif htype in _APPENDIX_PARTS:
            self._appendix_blob_expected = len(parts) == 1  # its blob follows as the next message (libertem-dectris sim)
        elif not htype and self._awaiting_config is not None:
            series, detail = self._awaiting_config
            self._awaiting_config = None
            self._start(series, detail, head)
        else:
            self._error(_K.OTHER, f"unknown message htype {htype!r}")

    def _close_open_series(self, why: str) -> None:
        state = self._state
        if state is not None:
            self._flush()
            self._error(_K.INCOMPLETE_SERIES, f"series {state.series} {why} without dseries_end after {state.received} frame(s)", state.series)
            self._state = None

    def _header(self, head: dict, parts: list[bytes]) -> None:
        self._close_open_series("ended")
        series = _int_or_none(head.get("series"))
        if series is None:
            self._error(_K.MALFORMED, "malformed series header: no integer series number")
            return
        detail = str(head.get("header_detail", "basic"))
        if detail not in HEADER_DETAILS:
            self._error(_K.OTHER, f"unknown header_detail {detail!r}", series)
        if detail == "none":
            self._start(series, detail, {})
        elif len(parts) >= 2:
            config = _load(parts[1])
            if config is None:
                self._error(_K.MALFORMED, "series header config part is not JSON", series)
                config = {}
            self._start(series, detail, config)
        else:
            self._awaiting_config = (series, detail)  # config follows as its own message (libertem-dectris sim)

    def _start(self, series: int, detail: str, config: dict) -> None:
        self._state = _SeriesState(series, expected_frames(config))
        self._events.append(SeriesStart(series, detail, config))

    def _image(self, head: dict, parts: list[bytes]) -> None:
        series, frame = _int_or_none(head.get("series")), _int_or_none(head.get("frame"))
        if series is None or frame is None:
            self._error(_K.MALFORMED, "malformed image header: no integer series and frame", series, frame)
            return
        if self._awaiting_config is not None:
            awaited, detail = self._awaiting_config
            self._awaiting_config = None
            self._error(_K.OTHER, "series header config never arrived", awaited)
            self._start(awaited, detail, {})
        if len(parts) < 3:
            self._error(_K.TRUNCATED, f"truncated image message: {len(parts)} part(s), need 3 or more", series, frame)
            return
        desc, blob = _load(parts[1]), parts[2]
        try:
            x, y = (int(v) for v in desc["shape"])
            dtype, encoding = str(desc["type"]), str(desc["encoding"])
            _check_dtype(dtype)
            _check_encoding(encoding)
        except Exception as err:
            self._error(_K.MALFORMED, f"malformed image descriptor: {err}", series, frame)
            return
        size = desc.get("size")
        if isinstance(size, int) and size != len(blob):
            self._error(_K.TRUNCATED, f"truncated frame: blob has {len(blob)} bytes, header says {size}", series, frame)
            return
        digest = str(head.get("hash", ""))
        if digest and hashlib.md5(blob).hexdigest() != digest.lower():
            self._error(_K.CORRUPT, "corrupt frame: md5 of the blob does not match its hash", series, frame)
            return
        state = self._state
        if state is None or state.series != series:
            self._close_open_series("interrupted")
            self._error(_K.OTHER, f"frames of series {series} arrived without its series header", series, frame)
            state = self._state = _SeriesState(series)
        if frame in state.seen:
            self._error(_K.DUPLICATED, f"duplicated frame {frame}", series, frame)
            return
        if frame < 0 or (state.total is not None and frame >= state.total):
            self._error(_K.UNEXPECTED, f"frame index {frame} outside the series of {state.total} frames", series, frame)
            return
        if frame > state.next_frame:
            self._error(_K.MISSING, f"missing frame(s) {state.next_frame}..{frame - 1}", series, state.next_frame)
        elif frame < state.next_frame:
            self._error(_K.OUT_OF_ORDER, f"frame {frame} arrived out of order", series, frame)
        state.next_frame = max(state.next_frame, frame + 1)
        state.seen.add(frame)
        times = (None, None, None)
        if len(parts) >= 4:
            dconf = _load(parts[3])
            if dconf is None:  # the frame itself is fine: kept, without its times
                self._error(_K.MALFORMED, f"malformed image dconfig part: {len(parts[3])} bytes that are not a JSON object", series, frame)
                dconf = {}
            times = tuple(_int_or_none(dconf.get(k)) for k in ("start_time", "stop_time", "real_time"))
        self._events.append(_Pending(series, frame, blob, (y, x), dtype, encoding, times, self._received_at))  # parts[4:]: appendix, skipped

    def _end(self, head: dict) -> None:
        self._flush()
        series = _int_or_none(head.get("series"))
        state = self._state
        if self._awaiting_config is not None:
            self._awaiting_config = None
        if state is None or state.series != series:
            self._error(_K.OTHER, f"dseries_end for series {series}, which is not open", series)
        elif state.total is not None and state.received < state.total:
            self._error(_K.INCOMPLETE_SERIES, f"series ended after {state.received} of {state.total} frames", series)
        self._state = None
        self._events.append(SeriesEnd(series if series is not None else -1))

    # --- batched decoding ----------------------------------------------------------

    def _flush(self) -> None:
        pending = [i for i, e in enumerate(self._events) if isinstance(e, _Pending)]
        groups: dict[tuple, list[int]] = {}
        for i in pending:
            e = self._events[i]
            groups.setdefault((e.shape, e.dtype, e.encoding), []).append(i)
        for (shape, dtype, encoding), idx in groups.items():
            try:
                batch = decode_batch([self._events[i].blob for i in idx], shape, dtype, encoding)
                group_error = None
            except CodecError as err:  # the shape, type or encoding itself: every frame of the group
                batch, group_error = None, err
            for k, i in enumerate(idx):
                p = self._events[i]
                err = group_error if batch is None else batch.errors.get(k)
                if err is not None:
                    self._events[i] = self._counted(StreamError(f"malformed frame: {err}", p.series, p.frame, kind=_K.MALFORMED))
                    continue
                self._events[i] = Frame(p.series, p.frame, batch.images[k], *p.times, received_at=p.received_at)
                if self._state is not None and self._state.series == p.series:
                    self._state.received += 1


__all__ = [
    "BLOCK_BYTES",
    "DTYPES",
    "ENCODINGS",
    "HEADER_DETAILS",
    "MAX_BLOCK_BYTES",
    "MAX_FRAME_PIXELS",
    "CodecError",
    "DecodedBatch",
    "Event",
    "Frame",
    "SeriesEnd",
    "SeriesStart",
    "StreamDecoder",
    "StreamError",
    "StreamErrorKind",
    "decode_batch",
    "decode_frame",
    "decode_frames",
    "encode_frame",
    "encode_frames",
    "expected_frames",
    "image_parts",
    "lz4_bound",
    "series_end_parts",
    "series_start_parts",
]
