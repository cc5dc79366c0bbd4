"""The bitshuffle-LZ4 framing of ``bs8-lz4<``/``bs16-lz4<``/``bs32-lz4<`` frames, checked before any C code sees it.

A blob is a 12-byte header (u64 big-endian uncompressed size, u32 big-endian block
size in bytes; 0 for either means "the shape's" and "the DCU default of 8192") and
then the body bitshuffle writes: for ``pixels`` elements in blocks of ``block``
elements (a multiple of 8), ``pixels // block`` full blocks, one partial block of the
remainder rounded down to a multiple of 8 (if any), then the last ``pixels % 8``
elements uncompressed. Each block is a u32 big-endian length and that many bytes of
LZ4 data, which decompress to the block's bitshuffled pixels.

bitshuffle's C code trusts every block length and jumps by it to the next block: a
length past the end of the blob makes it read (and, for the raw tail, copy) memory
outside the blob, which can kill the process. ``check_blob`` walks the blocks first.
Inside a block the installed bitshuffle (>= 0.4) calls ``LZ4_decompress_safe`` with
the checked length, which stays within it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from detector_stream.errors import CodecError

BLOCK_BYTES = 8192
"""Bitshuffle block size of the DCU, in bytes."""
MAX_BLOCK_BYTES = 1 << 24
"""Largest bitshuffle block accepted (the DCU uses 8192 bytes; bitshuffle allocates one block per call)."""
ITEMSIZE = {"bs8-lz4<": 1, "bs16-lz4<": 2, "bs32-lz4<": 4}
"""Pixel bytes of each bitshuffle encoding (the ``bsN`` is the pixel size in bits)."""
HEADER = struct.Struct(">QI")
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class CheckedBlob:
    """A bitshuffle blob whose header and blocks passed ``check_blob``."""

    body: memoryview
    """The blocks and raw tail, after the 12-byte header: what bitshuffle decompresses."""
    block: int
    """Block size in pixels."""


def lz4_bound(nbytes: int) -> int:
    """LZ4_compressBound: the most bytes LZ4 can turn ``nbytes`` input bytes into (a larger block length is a lie)."""
    return nbytes + nbytes // 255 + 16


def check_itemsize(encoding: str, dtype: np.dtype) -> None:
    """CodecError unless ``dtype`` has the pixel size of the bitshuffle ``encoding``."""
    if ITEMSIZE[encoding] != dtype.itemsize:
        raise CodecError(f"encoding {encoding} needs {8 * ITEMSIZE[encoding]}-bit pixels, got {dtype.name}")


def pack_header(nbytes: int) -> bytes:
    """The 12-byte header of a frame of ``nbytes`` uncompressed bytes in DCU blocks."""
    return HEADER.pack(nbytes, BLOCK_BYTES)


def check_blocks(blob: bytes | memoryview, start: int, pixels: int, itemsize: int, block: int) -> int:
    """Walk the blocks of one frame from ``start``; returns where they end (before the raw tail), CodecError if they overrun."""
    size = len(blob)
    full, rest = divmod(pixels, block)
    partial = rest - rest % 8
    nblocks = full + (1 if partial else 0)
    pos = start
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
    return pos


def check_blob(blob: bytes, pixels: int, dtype: np.dtype, encoding: str) -> CheckedBlob:
    """Check the header and every block of a frame of ``pixels`` pixels of ``dtype``; CodecError says what is wrong.

    The header's uncompressed size must be 0 or exactly the shape's, its block size 0
    (the DCU default) or a multiple of 8 pixels up to MAX_BLOCK_BYTES, and the blocks
    and raw tail must fill the blob exactly.
    """
    check_itemsize(encoding, dtype)
    if len(blob) < HEADER.size:
        raise CodecError(f"bitshuffle blob of {len(blob)} bytes is shorter than its 12-byte header")
    total, block_bytes = HEADER.unpack_from(blob, 0)
    expected = pixels * dtype.itemsize
    if total not in (0, expected):
        raise CodecError(f"bitshuffle header says {total} bytes uncompressed, {pixels} {dtype.name} pixels need {expected}")
    if block_bytes == 0:
        block_bytes = BLOCK_BYTES  # a zeroed header (some senders): the DCU default
    if block_bytes % (8 * dtype.itemsize) or block_bytes > MAX_BLOCK_BYTES:
        raise CodecError(
            f"bitshuffle block size {block_bytes} bytes is not a multiple of 8 {dtype.name} pixels up to {MAX_BLOCK_BYTES} bytes"
        )
    block = block_bytes // dtype.itemsize
    end = check_blocks(blob, HEADER.size, pixels, dtype.itemsize, block)
    tail = (pixels % 8) * dtype.itemsize
    if len(blob) - end != tail:
        raise CodecError(f"bitshuffle blob has {len(blob) - end} bytes after its blocks, {tail} expected")
    return CheckedBlob(memoryview(blob)[HEADER.size :], block)


def whole_block_bodies(blobs: list[bytes], frame_bytes: int) -> list[memoryview | None]:
    """``check_blob`` for many frames of ``frame_bytes`` bytes (a multiple of BLOCK_BYTES) in DCU blocks, in one loop.

    Each blob gets the body ``check_blob`` would return, or None where it is not a frame in
    8192-byte blocks that passes every check (ask ``check_blob`` for those: it accepts
    other block sizes and names what is wrong). Same checks: header size 0 or exact, block
    size 0 or 8192, each block length within 1..lz4_bound, the blocks filling the blob.
    """
    if frame_bytes % BLOCK_BYTES or frame_bytes <= 0:
        return [None] * len(blobs)
    nblocks, bound = frame_bytes // BLOCK_BYTES, lz4_bound(BLOCK_BYTES)
    header, u32 = HEADER.unpack_from, _U32.unpack_from
    out: list[memoryview | None] = []
    for blob in blobs:
        size = len(blob)
        body = None
        if size >= HEADER.size + 4 * nblocks:
            total, block_bytes = header(blob, 0)
            if total in (0, frame_bytes) and block_bytes in (0, BLOCK_BYTES):
                pos = HEADER.size
                for _ in range(nblocks):
                    if pos + 4 > size:
                        break
                    (length,) = u32(blob, pos)
                    if not 0 < length <= bound:
                        break
                    pos += 4 + length
                else:
                    if pos == size:
                        body = memoryview(blob)[HEADER.size :]
        out.append(body)
    return out


def split_frames(body: bytes, nframes: int, frame_bytes: int) -> list[bytes]:
    """Cut the body of one bitshuffle call over ``nframes`` frames of whole DCU blocks into each frame's blob, header included."""
    header = pack_header(frame_bytes)
    blocks_per_frame = frame_bytes // BLOCK_BYTES
    out, pos = [], 0
    for _ in range(nframes):
        start = pos
        for _ in range(blocks_per_frame):
            (size,) = _U32.unpack_from(body, pos)
            pos += 4 + size
        out.append(header + body[start:pos])
    return out
