"""Stream v1 frame encodings: one (y, x) image <-> one blob; pure functions, no sockets.

``bs8-lz4<``/``bs16-lz4<``/``bs32-lz4<``: bitshuffle + LZ4 in 8192-byte blocks after a
12-byte header (``detector_stream.bslz4``); ``lz4<``: one raw LZ4 block, no size
prefix; ``<``: raw little-endian. Pixel types uint8, uint16, uint32.

Decoding never hands unchecked input to C code: the shape is bounded (the output is
allocated from it) and every bitshuffle block is bounds-checked first. ``decode_batch``
decodes many frames in one bitshuffle call where it can, and a malformed blob costs
only its own frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import bitshuffle
import lz4.block
import numpy as np

from detector_stream.bslz4 import (
    BLOCK_BYTES,
    ITEMSIZE,
    CheckedBlob,
    check_blob,
    check_itemsize,
    pack_header,
    split_frames,
    whole_block_bodies,
)
from detector_stream.errors import CodecError

ENCODINGS = ("bs8-lz4<", "bs16-lz4<", "bs32-lz4<", "lz4<", "<")
DTYPES = ("uint8", "uint16", "uint32")
MAX_FRAME_PIXELS = 1 << 26
"""Largest frame accepted (67 M pixels, 3.7x an EIGER2 X 16M): the decoded array is allocated from the shape."""

LZ4_MAX_RATIO = 255
"""LZ4 turns at most about 255 bytes into one (a long match costs a byte per 255): a blob claiming more is a lie."""

_DTYPE_BY_NAME = {name: np.dtype(name) for name in DTYPES}


def check_dtype(dtype) -> np.dtype:
    """The numpy dtype of a stream pixel type (a name or anything numpy takes); CodecError if not uint8/16/32."""
    if isinstance(dtype, str) and dtype in _DTYPE_BY_NAME:  # the stream's "type" field, once per frame: skip numpy's parsing
        return _DTYPE_BY_NAME[dtype]
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as err:
        raise CodecError(f"unsupported pixel type {dtype!r}; expected one of {DTYPES}") from err
    if dt.name not in DTYPES:
        raise CodecError(f"unsupported pixel type {dt.name!r}; expected one of {DTYPES}")
    return dt


def check_encoding(encoding: str) -> str:
    """``encoding`` if it is one of ``ENCODINGS``; CodecError otherwise."""
    if encoding not in ENCODINGS:
        raise CodecError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")
    return encoding


def check_shape(shape) -> tuple[int, int]:
    """``(y, x)`` as ints, each >= 1 and at most MAX_FRAME_PIXELS pixels: the output is allocated from it before decoding."""
    try:
        y, x = (int(v) for v in shape)
    except (TypeError, ValueError, OverflowError) as err:
        raise CodecError(f"frame shape must be two integers, got {shape!r} ({err})") from None
    if y < 1 or x < 1 or y * x > MAX_FRAME_PIXELS:
        raise CodecError(f"frame shape {(y, x)} is outside 1..{MAX_FRAME_PIXELS} pixels")
    return y, x


def encode_frame(image: np.ndarray, encoding: str) -> bytes:
    """Encode one (y, x) uint8/uint16/uint32 image as a stream v1 blob in ``encoding``."""
    image = np.asarray(image)
    dt = check_dtype(image.dtype)
    check_encoding(encoding)
    if image.ndim != 2:
        raise CodecError(f"image must be 2-D (y, x), got shape {image.shape}")
    data = np.ascontiguousarray(image, dtype=dt.newbyteorder("<"))
    if encoding == "<":
        return data.tobytes()
    if encoding == "lz4<":
        return lz4.block.compress(data.tobytes(), store_size=False)
    check_itemsize(encoding, dt)
    body = bitshuffle.compress_lz4(data.ravel(), BLOCK_BYTES // dt.itemsize)
    return pack_header(data.nbytes) + body.tobytes()


def encode_frames(images: np.ndarray, encoding: str) -> list[bytes]:
    """Encode a stack (N, y, x) of images; one bitshuffle call when each frame is whole 8192-byte blocks."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise CodecError(f"images must be 3-D (N, y, x), got shape {images.shape}")
    dt = check_dtype(images.dtype)
    check_encoding(encoding)
    frame_bytes = images[0].nbytes if len(images) else 0
    if encoding not in ITEMSIZE or len(images) < 2 or frame_bytes % BLOCK_BYTES:
        return [encode_frame(im, encoding) for im in images]
    check_itemsize(encoding, dt)
    stack = np.ascontiguousarray(images, dtype=dt.newbyteorder("<")).ravel()
    body = bitshuffle.compress_lz4(stack, BLOCK_BYTES // dt.itemsize).tobytes()
    return split_frames(body, len(images), frame_bytes)


def decode_frame(blob: bytes, shape: tuple[int, int], dtype: str, encoding: str) -> np.ndarray:
    """Decode one stream v1 blob to a (y, x) array of ``dtype``; raises CodecError on malformed input."""
    dt = check_dtype(dtype)
    check_encoding(encoding)
    shape = check_shape(shape)
    nbytes = shape[0] * shape[1] * dt.itemsize
    le = dt.newbyteorder("<")
    try:
        if encoding == "<":
            if len(blob) != nbytes:
                raise CodecError(f"raw frame has {len(blob)} bytes, shape {shape} {dt.name} needs {nbytes}")
            return np.frombuffer(blob, dtype=le).reshape(shape).astype(dt)
        if encoding == "lz4<":
            if nbytes > LZ4_MAX_RATIO * (len(blob) + 1):  # refused before lz4 allocates the output
                raise CodecError(f"lz4 frame of {len(blob)} bytes cannot hold the {nbytes} bytes of shape {shape} {dt.name}")
            raw = lz4.block.decompress(blob, uncompressed_size=nbytes)
            if len(raw) != nbytes:
                raise CodecError(f"lz4 frame decompressed to {len(raw)} bytes, expected {nbytes}")
            return np.frombuffer(raw, dtype=le).reshape(shape).astype(dt)
        checked = check_blob(blob, shape[0] * shape[1], dt, encoding)
        out = bitshuffle.decompress_lz4(np.frombuffer(checked.body, dtype=np.uint8), shape, le, checked.block)
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

    Every bitshuffle blob's header and blocks are checked first (``bslz4.check_blob``);
    the good ones that are whole 8192-byte blocks decode in one bitshuffle call, and
    should that call fail (LZ4 data that is bad inside a well-framed block) they decode
    one by one, so that only the bad frame is lost. A bad shape, type or encoding raises
    CodecError: it is the whole group's.
    """
    dt = check_dtype(dtype)
    check_encoding(encoding)
    shape = check_shape(shape)
    errors: dict[int, CodecError] = {}
    if encoding not in ITEMSIZE:
        images = np.zeros((len(blobs), *shape), dt)
        for i, blob in enumerate(blobs):
            try:
                images[i] = decode_frame(blob, shape, dtype, encoding)
            except CodecError as err:
                errors[i] = err
        return DecodedBatch(images, errors)
    le = dt.newbyteorder("<")
    checked = {}
    quick = whole_block_bodies(blobs, shape[0] * shape[1] * dt.itemsize) if ITEMSIZE[encoding] == dt.itemsize else [None] * len(blobs)
    for i, blob in enumerate(blobs):
        if quick[i] is not None:
            checked[i] = CheckedBlob(quick[i], BLOCK_BYTES // dt.itemsize)
            continue
        try:
            checked[i] = check_blob(blob, shape[0] * shape[1], dt, encoding)
        except CodecError as err:
            errors[i] = err
    whole = [i for i, c in checked.items() if c.block * dt.itemsize == BLOCK_BYTES]
    decoded = None
    if len(whole) >= 2 and (shape[0] * shape[1] * dt.itemsize) % BLOCK_BYTES == 0:
        joined = np.frombuffer(b"".join(checked[i].body for i in whole), dtype=np.uint8)
        try:
            decoded = bitshuffle.decompress_lz4(joined, (len(whole), *shape), le, BLOCK_BYTES // dt.itemsize)
        except Exception:  # bad LZ4 data inside a well-framed block: one by one below, to find which
            decoded = None
    if decoded is not None and len(whole) == len(blobs):
        return DecodedBatch(decoded.astype(dt, copy=False), errors)
    images = np.zeros((len(blobs), *shape), dt)
    if decoded is not None:
        images[whole] = decoded
        for i in whole:
            del checked[i]
    for i, c in checked.items():
        try:
            images[i] = bitshuffle.decompress_lz4(np.frombuffer(c.body, dtype=np.uint8), shape, le, c.block)
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
