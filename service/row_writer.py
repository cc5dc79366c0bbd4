"""Rows of a session file's datasets: HDF5 writes of runs of rows, and queued frames written straight into ``patterns``.

``PatternRows.write`` puts a flush's frames into an uncompressed ``patterns`` (the
default) with ``os.pwritev`` at each row's byte offset in the file: the frames' own
buffers are the iovecs (up to ``IOV_MAX`` frames of rows consecutive in the file per
call), the GIL is released during the system call, and nothing is copied. Through h5py a
flush copied every frame into a staging buffer and held the GIL through ``H5Dwrite``
(its chunk cache, its copy): ~9 us per 64x64 frame on the flusher thread, most of it
with the GIL held, which starved the receive and decode threads (issue 19).

Why writing behind HDF5's back is safe here:

- an uncompressed chunk never moves: HDF5 allocates it once and rewrites it in place
  (only filtered chunks, whose size changes, are reallocated), so its file address
  (``get_chunk_info_by_coord``), looked up once, holds for the file's life;
- new files allocate ``patterns``' chunks when the dataset grows (``ALLOC_TIME_EARLY``,
  ``patterns_dcpl``) without writing fill values (``FILL_TIME_NEVER``: writing zeros
  cost ~1.5 ms per chunk): an unwritten row reads 0 because a chunk allocated past the
  file's end is a hole, and ``grow`` writes zeros over any part of a new chunk that lands
  below the file's end (space HDF5 gave back at the end of the file and allocated again);
- HDF5 holds no copy of those chunks: ``open_patterns`` opens ``patterns`` with its chunk
  cache off (0 bytes), so every HDF5 read or write of it goes to the file at once and no
  cached chunk can be written back over rows written here; the store keeps that dataset
  open for the file's life, and every later open of it in this process (h5py shares an
  open dataset's state) has the cache off too (``tests/test_service_row_writer.py`` mixes
  both writes in one chunk);
- what is not plainly a row of the file's pixel type goes through HDF5 as before
  (``write_staged``): a chunk not allocated (files made before, where HDF5 allocates a
  chunk at its first write), a frame of another pixel type (wider frames are clipped),
  byte order or shape, a frame that is not C-contiguous, a file not on the sec2 driver;
- an ``OSError`` of ``os.pwritev`` (a full disk, EIO) propagates as h5py's do: the
  store's guard makes it a ``StoreError`` and the frames go back to its queue.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator

import h5py
import numpy as np

from service.detector_mask import fitted

WRITE_ROWS = 512
"""Frames per HDF5 write of the frames that go through HDF5 (staged in one reused buffer of this many frames)."""
IOV_MAX = 1024
"""Buffers per ``os.pwritev`` call (Linux's IOV_MAX)."""
Queued = dict[int, tuple[np.ndarray, object]]
"""Frames queued for the file by slot: (image, its detector blob or None)."""


def runs(slots: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, rows) for each run of consecutive values in ``slots``: slots[rows] == range(start, stop)."""
    if len(slots) == 0:
        return
    order = np.argsort(slots, kind="stable")
    ordered = slots[order]
    breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
    for rows in np.split(order, breaks):
        yield int(slots[rows[0]]), int(slots[rows[-1]]) + 1, rows


def write_rows(ds: h5py.Dataset, start: int, rows) -> None:
    """ds[start : start + len(rows)] = rows through h5py's low-level API (about 30 us instead of about 100 us per write).

    ``rows`` may be a scalar-broadcast array of the right length.
    """
    rows = np.ascontiguousarray(rows)  # in its own dtype: HDF5 converts to the file's, as h5py's ds[...] = rows does
    file_space = ds.id.get_space()
    file_space.select_hyperslab((start,) + (0,) * (rows.ndim - 1), rows.shape)
    ds.id.write(h5py.h5s.create_simple(rows.shape), file_space, rows)


def patterns_dcpl() -> h5py.h5p.PropDCID:
    """Creation properties of an uncompressed ``patterns``: chunks allocated when the dataset grows, no fill values written."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return dcpl


def no_cache_dapl() -> h5py.h5p.PropDAID:
    """Access properties with HDF5's chunk cache off (0 bytes): its reads and writes of the dataset go to the file at once."""
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    nslots, _, w0 = dapl.get_chunk_cache()
    dapl.set_chunk_cache(nslots, 0, w0)
    return dapl


def _unfiltered(ds: h5py.Dataset) -> bool:
    plist = ds.id.get_create_plist()
    return plist.get_layout() == h5py.h5d.CHUNKED and plist.get_nfilters() == 0


def open_patterns(f: h5py.File) -> h5py.Dataset:
    """``f``'s ``patterns``, with HDF5's chunk cache off if it is uncompressed (the module docstring: keep it open while
    writing). A compressed one keeps the cache: its partial chunks are merged there."""
    if not _unfiltered(f["patterns"]):  # the looked-up dataset is closed again before the open below
        return f["patterns"]
    return h5py.Dataset(h5py.h5d.open(f.id, b"patterns", dapl=no_cache_dapl()))


class PatternRows:
    """Writer of queued frames into ``patterns``: in place with ``os.pwritev`` where it can (module docstring), else through
    HDF5 (``write_staged``). ``ds``: the dataset as ``open_patterns`` opened it; ``f``: its file."""

    def __init__(self, f: h5py.File, ds: h5py.Dataset) -> None:
        self.ds = ds
        chunks = ds.chunks or ()
        self.frame_shape = tuple(ds.shape[1:])
        self.dtype = ds.dtype
        self.rows = int(chunks[0]) if chunks else 0
        self.frame_bytes = int(np.prod(self.frame_shape)) * self.dtype.itemsize
        self.chunk_bytes = self.rows * self.frame_bytes
        cache_off = ds.id.get_access_plist().get_chunk_cache()[1] == 0
        whole_frames = tuple(chunks[1:]) == self.frame_shape
        self.fd: int | None = f.id.get_vfd_handle() if f.driver == "sec2" else None
        self.in_place = bool(self.fd is not None and cache_off and whole_frames and _unfiltered(ds) and self.dtype.isnative and self.frame_bytes > 0)
        """True: frames go to the file with ``os.pwritev`` where their chunk is allocated (an uncompressed file, opened here)."""
        self.never_filled = ds.id.get_create_plist().get_fill_time() == h5py.h5d.FILL_TIME_NEVER
        """Chunks get no fill when allocated: ``grow`` must zero what could hold old bytes, however frames are written."""
        self._address: dict[int, int] = {}
        """File offset (bytes) of each allocated chunk looked up (uncompressed chunks never move)."""
        self._stage: np.ndarray | None = None
        """Reused staging rows of the HDF5 writes (``WRITE_ROWS`` frames)."""

    def chunk_address(self, chunk: int) -> int | None:
        """File offset (bytes) of chunk ``chunk`` (rows chunk * rows onwards), None if it is not allocated as plain rows."""
        address = self._address.get(chunk)
        if address is None:
            info = self.ds.id.get_chunk_info_by_coord((chunk * self.rows,) + (0,) * len(self.frame_shape))
            if info.byte_offset is None or info.filter_mask != 0 or info.size != self.chunk_bytes:
                return None
            address = self._address[chunk] = int(info.byte_offset)
        return address

    def grow(self, n: int) -> int:
        """Add ``n`` rows (unwritten rows read 0); returns the old row count. New chunks that land on space the file used before
        (below its end) get zeros written: allocated early with no fill, they would read what was there."""
        old = self.ds.id.shape[0]
        self.ds.id.set_extent((old + n, *self.frame_shape))
        if n > 0 and self.never_filled and self.fd is None:  # no file to look at (another driver): zeros through HDF5, every new row
            for lo in range(old, old + n, WRITE_ROWS):
                write_rows(self.ds, lo, np.zeros((min(WRITE_ROWS, old + n - lo), *self.frame_shape), self.dtype))
        elif n > 0 and self.never_filled:
            end = None
            for chunk in range(-(-old // self.rows), -(-(old + n) // self.rows)):
                address = self.chunk_address(chunk)
                if address is None:
                    continue
                end = os.fstat(self.fd).st_size if end is None else end
                if address < end:
                    pwrite_all(self.fd, [bytes(min(self.chunk_bytes, end - address))], address)
        return old

    def write(self, pending: Queued, slots: Iterable[int]) -> None:
        """Write the frames of ``slots`` (ascending) to their rows: in place where it can, the rest through HDF5."""
        slots = list(slots)
        rest = self.write_in_place(pending, slots) if self.in_place else slots
        self.write_staged(pending, rest)

    def write_in_place(self, pending: Queued, slots: list[int]) -> list[int]:
        """Write what can go in place of the frames of ``slots`` (ascending) with ``os.pwritev``; returns the other slots."""
        rest: list[int] = []
        buffers: list[np.ndarray] = []
        start = end = -1
        rows, frame_bytes, n, dtype, shape = self.rows, self.frame_bytes, self.ds.id.shape[0], self.dtype, self.frame_shape
        known, unallocated = self._address.get, set()
        for slot in slots:  # ~1 us a frame: keep it lean
            image = pending[slot][0]
            chunk = slot // rows
            address = known(chunk)
            if address is None and slot < n and chunk not in unallocated:
                address = self.chunk_address(chunk)
                if address is None:
                    unallocated.add(chunk)  # looked up once a write (files made before allocate chunks at their first write)
            if address is None or slot >= n or image.dtype != dtype or image.shape != shape or not image.flags.c_contiguous:
                rest.append(slot)
                continue
            offset = address + (slot - chunk * rows) * frame_bytes
            if offset != end or len(buffers) == IOV_MAX:
                pwrite_all(self.fd, buffers, start, len(buffers) * frame_bytes)
                buffers, start = [], offset
            buffers.append(image)
            end = offset + frame_bytes
        pwrite_all(self.fd, buffers, start, len(buffers) * frame_bytes)
        return rest

    def write_staged(self, pending: Queued, slots: list[int]) -> None:
        """Write the frames of ``slots`` through HDF5 (a filter compresses them if the file has one), one write per run of
        consecutive slots, through one reused staging buffer (a fresh stack per flush costs its page faults again)."""
        patterns = self.ds
        for start, stop, _ in runs(np.asarray(slots, dtype=np.int64)):
            for lo in range(start, stop, WRITE_ROWS):
                hi = min(stop, lo + WRITE_ROWS)
                if self._stage is None or self._stage.shape[1:] != patterns.shape[1:]:
                    self._stage = np.empty((WRITE_ROWS, *patterns.shape[1:]), patterns.dtype)  # the file's type: admit checked the counts fit
                rows = self._stage[: hi - lo]
                for k, slot in enumerate(range(lo, hi)):
                    # admit let a wider frame in only if its counts fit: what exceeds the file's type is the detector's mark of an
                    # invalid pixel (its type's largest count), stored as the file type's mark (as in session memory)
                    rows[k] = fitted(pending[slot][0], rows.dtype)
                write_rows(patterns, lo, rows)


def pwrite_all(fd: int, buffers: list, offset: int, total: int | None = None) -> None:
    """Write ``buffers`` one after the other at byte ``offset`` of ``fd`` (``os.pwritev``, again after a short write);
    ``total``: their bytes, if the caller knows."""
    if not buffers:
        return
    done = os.pwritev(fd, buffers, offset)
    if total is None:
        total = sum(memoryview(b).nbytes for b in buffers)
    if done == total:
        return
    data = [memoryview(b).cast("B") for b in buffers]
    while done < total:  # a short write: what is left, from where it stopped
        skip, left = done, []
        for view in data:
            if skip >= view.nbytes:
                skip -= view.nbytes
                continue
            left.append(view[skip:])
            skip = 0
        wrote = os.pwritev(fd, left[:IOV_MAX], offset + done)
        if wrote <= 0:
            raise OSError(errno.EIO, f"short write at byte {offset + done} of the session file")
        done += wrote
