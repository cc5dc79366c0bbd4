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
import struct
from dataclasses import dataclass, field

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
_APPENDIX_PARTS = ("dflatfield-1.0", "dpixelmask-1.0", "dcountrate_table-1.0")


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


def _bs_payload(blob: bytes, shape: tuple[int, int], dt: np.dtype, encoding: str) -> tuple[memoryview, int]:
    """Check the 12-byte bitshuffle header; returns the block stream and the block size in elements."""
    if len(blob) < _BS_HEADER.size:
        raise CodecError(f"bitshuffle blob of {len(blob)} bytes is shorter than its 12-byte header")
    total, block_bytes = _BS_HEADER.unpack_from(blob, 0)
    expected = int(shape[0]) * int(shape[1]) * dt.itemsize
    if total not in (0, expected):
        raise CodecError(f"bitshuffle header says {total} bytes uncompressed, shape {shape} {dt.name} needs {expected}")
    if block_bytes == 0:
        block_bytes = BLOCK_BYTES  # a zeroed header (some senders): the DCU default
    if block_bytes % dt.itemsize or block_bytes // dt.itemsize % 8:
        raise CodecError(f"bitshuffle block size {block_bytes} bytes is not a multiple of 8 {dt.name} elements")
    _bs_block_elements(encoding, dt)
    return memoryview(blob)[_BS_HEADER.size :], block_bytes // dt.itemsize


def decode_frame(blob: bytes, shape: tuple[int, int], dtype: str, encoding: str) -> np.ndarray:
    """Decode one stream v1 blob to a (y, x) array of ``dtype``; raises CodecError on malformed input."""
    dt = _check_dtype(dtype)
    _check_encoding(encoding)
    shape = (int(shape[0]), int(shape[1]))
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


def decode_frames(blobs: list[bytes], shape: tuple[int, int], dtype: str, encoding: str) -> np.ndarray:
    """Decode N blobs of one shape/type/encoding to (N, y, x); one bitshuffle call when frames are whole blocks.

    Raises CodecError if any blob is malformed (decode them one by one to find which).
    """
    dt = _check_dtype(dtype)
    _check_encoding(encoding)
    shape = (int(shape[0]), int(shape[1]))
    nbytes = shape[0] * shape[1] * dt.itemsize
    if encoding not in _BS_ITEMSIZE or len(blobs) < 2 or nbytes % BLOCK_BYTES:
        return np.stack([decode_frame(b, shape, dtype, encoding) for b in blobs]) if blobs else np.empty((0, *shape), dt)
    payloads = []
    for blob in blobs:
        payload, block = _bs_payload(blob, shape, dt, encoding)
        if block * dt.itemsize != BLOCK_BYTES:
            return np.stack([decode_frame(b, shape, dtype, encoding) for b in blobs])
        payloads.append(payload)
    joined = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    try:
        out = bitshuffle.decompress_lz4(joined, (len(blobs), *shape), dt.newbyteorder("<"), BLOCK_BYTES // dt.itemsize)
    except Exception as err:
        raise CodecError(f"cannot decode a batch of {len(blobs)} {encoding} frames: {err}") from None
    return out.astype(dt, copy=False)


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
    return int(value) if isinstance(value, int | float) else None


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
                self._events.append(StreamError(f"malformed message: {err}"))
        self._flush()
        events, self._events = self._events, []
        return events

    # --- message kinds -------------------------------------------------------------

    def _message(self, parts: list[bytes]) -> None:
        if not parts:
            self._events.append(StreamError("empty message"))
            return
        head = _load(parts[0])
        if head is None:
            if self._awaiting_config is None and not (self._state and self._state.next_frame == 0):
                self._events.append(StreamError(f"malformed message: first part of {len(parts[0])} bytes is not JSON"))
            return  # a header-detail "all" blob sent as its own message
        htype = str(head.get("htype", ""))
        if htype.startswith("dheader-"):
            self._header(head, parts)
        elif htype.startswith("dimage-"):
            self._image(head, parts)
        elif htype.startswith("dseries_end-"):
            self._end(head)
        elif htype in _APPENDIX_PARTS:
            return
        elif not htype and self._awaiting_config is not None:
            series, detail = self._awaiting_config
            self._awaiting_config = None
            self._start(series, detail, head)
        else:
            self._events.append(StreamError(f"unknown message htype {htype!r}"))

    def _close_open_series(self, why: str) -> None:
        state = self._state
        if state is not None:
            self._flush()
            self._events.append(
                StreamError(f"series {state.series} {why} without dseries_end after {state.received} frame(s)", state.series)
            )
            self._state = None

    def _header(self, head: dict, parts: list[bytes]) -> None:
        self._close_open_series("ended")
        series = _int_or_none(head.get("series"))
        if series is None:
            self._events.append(StreamError("series header without an integer series number"))
            return
        detail = str(head.get("header_detail", "basic"))
        if detail not in HEADER_DETAILS:
            self._events.append(StreamError(f"unknown header_detail {detail!r}", series))
        if detail == "none":
            self._start(series, detail, {})
        elif len(parts) >= 2:
            config = _load(parts[1])
            if config is None:
                self._events.append(StreamError("series header config part is not JSON", series))
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
            self._events.append(StreamError("image header without integer series and frame", series, frame))
            return
        if self._awaiting_config is not None:
            awaited, detail = self._awaiting_config
            self._awaiting_config = None
            self._events.append(StreamError("series header config never arrived", awaited))
            self._start(awaited, detail, {})
        if len(parts) < 3:
            self._events.append(StreamError(f"truncated image message: {len(parts)} part(s), need 3 or more", series, frame))
            return
        desc, blob = _load(parts[1]), parts[2]
        try:
            x, y = (int(v) for v in desc["shape"])
            dtype, encoding = str(desc["type"]), str(desc["encoding"])
            _check_dtype(dtype)
            _check_encoding(encoding)
        except Exception as err:
            self._events.append(StreamError(f"malformed image descriptor: {err}", series, frame))
            return
        size = desc.get("size")
        if isinstance(size, int) and size != len(blob):
            self._events.append(StreamError(f"truncated frame: blob has {len(blob)} bytes, header says {size}", series, frame))
            return
        digest = str(head.get("hash", ""))
        if digest and hashlib.md5(blob).hexdigest() != digest.lower():
            self._events.append(StreamError("corrupt frame: md5 of the blob does not match its hash", series, frame))
            return
        state = self._state
        if state is None or state.series != series:
            self._close_open_series("interrupted")
            self._events.append(StreamError(f"frames of series {series} arrived without its series header", series, frame))
            state = self._state = _SeriesState(series)
        if frame in state.seen:
            self._events.append(StreamError(f"duplicated frame {frame}", series, frame))
            return
        if frame < 0 or (state.total is not None and frame >= state.total):
            self._events.append(StreamError(f"frame index {frame} outside the series of {state.total} frames", series, frame))
            return
        if frame > state.next_frame:
            self._events.append(StreamError(f"missing frame(s) {state.next_frame}..{frame - 1}", series, state.next_frame))
        elif frame < state.next_frame:
            self._events.append(StreamError(f"frame {frame} arrived out of order", series, frame))
        state.next_frame = max(state.next_frame, frame + 1)
        state.seen.add(frame)
        times = (None, None, None)
        if len(parts) >= 4:
            dconf = _load(parts[3]) or {}
            times = tuple(_int_or_none(dconf.get(k)) for k in ("start_time", "stop_time", "real_time"))
        self._events.append(_Pending(series, frame, blob, (y, x), dtype, encoding, times, self._received_at))  # parts[4:]: appendix, skipped

    def _end(self, head: dict) -> None:
        self._flush()
        series = _int_or_none(head.get("series"))
        state = self._state
        if self._awaiting_config is not None:
            self._awaiting_config = None
        if state is None or state.series != series:
            self._events.append(StreamError(f"dseries_end for series {series}, which is not open", series))
        elif state.total is not None and state.received < state.total:
            self._events.append(StreamError(f"series ended after {state.received} of {state.total} frames", series))
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
                images = decode_frames([self._events[i].blob for i in idx], shape, dtype, encoding)
            except CodecError:
                images = None
            for k, i in enumerate(idx):
                p = self._events[i]
                if images is not None:
                    image = images[k]
                else:
                    try:
                        image = decode_frame(p.blob, shape, dtype, encoding)
                    except CodecError as err:
                        self._events[i] = StreamError(f"malformed frame: {err}", p.series, p.frame)
                        continue
                self._events[i] = Frame(p.series, p.frame, image, *p.times, received_at=p.received_at)
                if self._state is not None and self._state.series == p.series:
                    self._state.received += 1


__all__ = [
    "BLOCK_BYTES",
    "DTYPES",
    "ENCODINGS",
    "HEADER_DETAILS",
    "CodecError",
    "Event",
    "Frame",
    "SeriesEnd",
    "SeriesStart",
    "StreamDecoder",
    "StreamError",
    "decode_frame",
    "decode_frames",
    "encode_frame",
    "encode_frames",
    "expected_frames",
    "image_parts",
    "series_end_parts",
    "series_start_parts",
]
