"""The session file's ``patterns`` stored bitshuffle-LZ4 compressed, written from the detector's own blobs where possible.

A DECTRIS detector sends each frame as a bitshuffle-LZ4 blob: a 12-byte header
(uncompressed bytes, 8-byte big-endian; block bytes, 4-byte big-endian), then blocks
of 8192 bytes of pixels, each a 4-byte big-endian length and its LZ4 data. An HDF5
chunk of the bitshuffle filter (HDF5 filter 32008, LZ4) is the same layout. When a
frame is whole blocks (its bytes a multiple of 8192: 64x64 uint16, 128x128, 256x256 of
any type), the blocks of consecutive frames one after the other are the blocks of
those frames as one chunk; so a chunk of ``rows`` frames is written as its frames came
(an HDF5 direct chunk write: one call, no decompression, no compression), and the
file holds what the detector sent, about 5x smaller than the decoded counts.

What cannot go that way goes through HDF5's filter (it compresses, and merges with
what a chunk held): frames without a usable blob (other encodings, other pixel types,
frames that are not whole blocks, frames buffered before their tell), and partial writes
of a chunk whose earlier rows this writer does not hold. A chunk written directly
before it is full (a batch ends inside it) keeps its frames' blobs here until it is:
the rows not yet received are written as zero frames, which is what an unwritten row
reads as (the fill value 0), and the chunk is written again, whole, when more of its
rows arrive. Reading the file needs the filter: ``recon.hdf5_filters`` registers it
for h5py (other readers: hdf5plugin, or bitshuffle's own plugin).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

import h5py
import numpy as np

from detector_stream.codec import BLOCK_BYTES, encode_frames
from recon.hdf5_filters import BSLZ4_FILTER, BSLZ4_OPTIONS
from service.row_writer import no_cache_dapl, patterns_dcpl

HEADER = struct.Struct(">QI")
"""bitshuffle chunk header: uncompressed bytes, block bytes."""
BLOCK_FIELDS = (b"\x00\x00\x00\x00", HEADER.pack(0, BLOCK_BYTES)[8:])
"""a blob's block-size field that says 8192 bytes (0 is the DCU default: 8192)."""
Blob = bytes | memoryview
"""A frame's bitshuffle-LZ4 blob as the detector sent it (``Frame.blob``)."""
COMPRESSION_NOTE = "bitshuffle-LZ4 (HDF5 filter 32008): h5py readers import bitshuffle.h5 or hdf5plugin first"


def create_patterns(f: h5py.File, k: int, dtype: np.dtype, rows: int, compressed: bool) -> h5py.Dataset:
    """The growable ``patterns`` dataset (0, k, k) of ``dtype``, chunks of ``rows`` frames, bitshuffle-LZ4 compressed if ``compressed``.

    Uncompressed: chunks allocated as it grows, no fill written, opened with the chunk cache off (``service.row_writer``)."""
    if not compressed:
        return f.create_dataset(
            "patterns", (0, k, k), maxshape=(None, k, k), dtype=dtype, chunks=(rows, k, k), dcpl=patterns_dcpl(), dapl=no_cache_dapl()
        )
    ds = f.create_dataset(
        "patterns", (0, k, k), maxshape=(None, k, k), dtype=dtype, chunks=(rows, k, k), compression=BSLZ4_FILTER, compression_opts=BSLZ4_OPTIONS
    )
    ds.attrs["compression"] = COMPRESSION_NOTE
    return ds


def is_bslz4(ds: h5py.Dataset) -> bool:
    """True if ``ds`` is compressed with the bitshuffle filter in LZ4 mode (session files before it were not compressed)."""
    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _, values, _ = plist.get_filter(i)
        if code == BSLZ4_FILTER and len(values) >= 5 and values[4] == BSLZ4_OPTIONS[1]:
            return True
    return False


@dataclass
class ChunkPlan:
    """One write of queued frames: whole chunks to write as they are, and the frames that go through HDF5's filter."""

    direct: list[tuple[int, list[Blob]]] = field(default_factory=list)
    """(first row, the chunk's bytes in pieces, header first: joined as each is written, so that one chunk at a time is whole)."""
    filtered: list[int] = field(default_factory=list)
    """slots written through HDF5 (its filter compresses them)."""
    held: dict[int, dict[int, bytes]] = field(default_factory=dict)
    """per chunk written before it was full: the blobs of all its rows written so far (kept for its next write)."""
    let_go: set[int] = field(default_factory=set)
    """chunks this writer no longer holds (full now, or partly written through HDF5)."""


class PatternChunks:
    """Which queued frames can be written as the detector sent them, and the chunks they make (``plan``, then ``commit`` once written)."""

    def __init__(self, rows: int, frame_shape: tuple[int, int], dtype: np.dtype, known_rows: int, compressed: bool) -> None:
        """``rows``: frames per chunk; ``known_rows``: rows the file had when opened (their chunks are not this writer's);
        ``compressed``: the dataset is bitshuffle-LZ4 (False: a file written before, every frame goes through HDF5)."""
        self.rows = int(rows)
        self.dtype = np.dtype(dtype)
        self.frame_shape = tuple(frame_shape)
        self.frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self.enabled = compressed and self.frame_bytes > 0 and self.frame_bytes % BLOCK_BYTES == 0 and self.dtype.byteorder in "=<|"
        """False: every frame goes through HDF5 (an uncompressed file, or frames that are not whole 8192-byte blocks)."""
        self._settled_below = -(-int(known_rows) // self.rows)
        """chunks below this one existed when the file was opened: only a write of all their rows goes directly."""
        self._settled: set[int] = set()
        """chunks whose rows this writer does not hold (full, or partly written through HDF5): likewise."""
        self._held: dict[int, dict[int, bytes]] = {}
        self._zero: bytes | None = None

    def usable(self, queued: list[tuple[np.ndarray, Blob | None]]) -> bool:
        """True if every (image, blob) of ``queued`` can go to the file as its blob: the file's pixel type and shape, 8192-byte blocks.

        The blob is trusted to decode to its image: the decoders give a frame its blob only
        once its size, md5 and bitshuffle framing passed and it decoded to exactly the image.
        """
        dtype, shape = self.dtype, self.frame_shape
        return self.enabled and all(
            blob is not None and image.dtype == dtype and image.shape == shape and blob[8:12] in BLOCK_FIELDS for image, blob in queued
        )

    def _zero_blob(self) -> bytes:
        if self._zero is None:
            encoding = f"bs{8 * self.dtype.itemsize}-lz4<"
            self._zero = bytes(encode_frames(np.zeros((1, *self.frame_shape), self.dtype), encoding)[0])
        return self._zero

    def plan(self, queued: dict[int, tuple[np.ndarray, Blob | None]]) -> ChunkPlan:
        """Split queued frames (slot -> (image, the blob it was decoded from or None)) into a plan."""
        plan, rows, slots = ChunkPlan(), self.rows, sorted(queued)
        if not self.enabled:  # an uncompressed file (the default), or frames that are not whole blocks: no chunk goes as it came
            plan.filtered = slots
            return plan
        start, skip = 0, HEADER.size
        while start < len(slots):
            chunk = slots[start] // rows
            stop = bisect.bisect_left(slots, (chunk + 1) * rows, start)
            members, start = slots[start:stop], stop
            entries = [queued[s] for s in members]
            mine = chunk >= self._settled_below and chunk not in self._settled
            if not (len(members) == rows or mine) or not self.usable(entries):
                plan.filtered += members
                plan.let_go.add(chunk)
                continue
            first = chunk * rows
            if len(members) == rows:  # the usual case: a whole chunk of this write's frames
                body = [memoryview(blob)[skip:] for _, blob in entries]
                plan.let_go.add(chunk)
            else:
                blobs = {**self._held.get(chunk, {}), **{s: blob for s, (_, blob) in zip(members, entries, strict=True)}}
                zero = self._zero_blob() if len(blobs) < rows else b""
                body = [memoryview(blobs.get(slot, zero))[skip:] for slot in range(first, first + rows)]
                if len(blobs) == rows:
                    plan.let_go.add(chunk)
                else:  # copied: a blob may be a view of a whole drain's buffer, which must not stay pinned while the chunk waits
                    plan.held[chunk] = {s: b if isinstance(b, bytes) else bytes(b) for s, b in blobs.items()}
            plan.direct.append((first, [HEADER.pack(rows * self.frame_bytes, BLOCK_BYTES), *body]))
        return plan

    def commit(self, plan: ChunkPlan) -> None:
        """``plan`` is in the file: hold what it holds, let go of what it lets go."""
        self._held.update(plan.held)
        for chunk in plan.let_go:
            self._held.pop(chunk, None)
            self._settled.add(chunk)

    @property
    def held_frames(self) -> int:
        """Blobs kept for chunks written before they were full."""
        return sum(len(rows) for rows in self._held.values())


def write_chunks(ds: h5py.Dataset, direct: list[tuple[int, list[Blob]]]) -> None:
    """Write whole compressed chunks (given in pieces) at their first rows (HDF5 direct chunk write; the filter applied: mask 0)."""
    tail = (0,) * (len(ds.id.shape) - 1)
    for first, pieces in direct:
        ds.id.write_direct_chunk((first, *tail), b"".join(pieces), 0)
