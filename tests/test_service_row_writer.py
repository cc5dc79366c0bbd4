"""Frames written in place into an uncompressed ``patterns`` (``service.row_writer``): where they go, what stays zero, what
falls back to HDF5, and failures."""

from __future__ import annotations

import errno
import os

import h5py
import numpy as np
import pytest
from service_testing import session_body

from service import row_writer
from service.row_writer import PatternRows, pwrite_all
from service.store import SessionStore, StoreError


def params(k=16, chunk=4, budget=12, bit_depth=16):
    return session_body("tcp://127.0.0.1:1", budget=budget, chunk=chunk) | {
        "detector_pixels": k,
        "energy_ev": 60000.0,
        "convergence_mrad": 33.0,
        "defocus_nm": 0.0,
        "detector_bit_depth": bit_depth,
    }


def make_store(tmp_path, n=12, **kw) -> SessionStore:
    store = SessionStore.create(tmp_path / "s.h5", "s", params(**kw), {"requested": "sparse-grid"})
    store.append_batch(0, np.zeros((n, 2)))
    return store


def images(n, k=16, seed=0, dtype=np.uint16):
    return np.random.default_rng(seed).integers(1, 1000, (n, k, k)).astype(dtype)


class Counting:
    """Counts frames written in place and frames written through HDF5."""

    def __init__(self, monkeypatch):
        self.in_place = self.staged = 0
        real_in_place, real_staged = PatternRows.write_in_place, PatternRows.write_staged

        def in_place(rows, pending, slots):
            rest = real_in_place(rows, pending, slots)
            self.in_place += len(slots) - len(rest)
            return rest

        def staged(rows, pending, slots):
            self.staged += len(slots)
            real_staged(rows, pending, slots)

        monkeypatch.setattr(PatternRows, "write_in_place", in_place)
        monkeypatch.setattr(PatternRows, "write_staged", staged)


def read(path):
    with h5py.File(path, "r") as f:
        return f["patterns"][()], f["received"][()].astype(bool)


def addresses(ds: h5py.Dataset) -> list:
    rows = ds.chunks[0]
    return [ds.id.get_chunk_info_by_coord((c * rows, 0, 0)).byte_offset for c in range(-(-ds.shape[0] // rows))]


def test_new_files_allocate_chunks_as_patterns_grow_and_they_never_move(tmp_path):
    store = make_store(tmp_path, n=10)  # chunks of 4 rows: 3 chunks, the last one part of the extent
    with h5py.File(store.path, "r") as f:
        plist = f["patterns"].id.get_create_plist()
        assert plist.get_alloc_time() == h5py.h5d.ALLOC_TIME_EARLY and plist.get_fill_time() == h5py.h5d.FILL_TIME_NEVER
    first = addresses(store.dataset("patterns"))
    assert len(first) == 3 and None not in first
    store.write_frames(list(range(10)), list(images(10)))
    store.flush()
    store.append_batch(1, np.zeros((6, 2)))
    store.write_frames(list(range(10, 16)), list(images(6, seed=1)))
    store.flush()
    again = addresses(store.dataset("patterns"))
    assert again[:3] == first and None not in again
    store.close()
    with h5py.File(store.path, "r") as f:
        assert addresses(f["patterns"]) == again


def test_frames_go_in_place_and_read_back_as_sent(tmp_path, monkeypatch):
    count = Counting(monkeypatch)
    store = make_store(tmp_path, n=12)
    calls = []
    real = os.pwritev
    monkeypatch.setattr(os, "pwritev", lambda fd, buffers, offset: calls.append(len(buffers)) or real(fd, buffers, offset))
    sent = images(12)
    store.write_frames([3, 4, 5, 6, 7, 9], list(sent[[3, 4, 5, 6, 7, 9]]))
    store.flush()
    assert count.in_place == 6 and count.staged == 0
    assert sum(calls) == 6 and len(calls) <= 3  # runs of rows consecutive in the file, one call each
    store.close()
    got, received = read(store.path)
    want = np.zeros_like(sent)
    want[[3, 4, 5, 6, 7, 9]] = sent[[3, 4, 5, 6, 7, 9]]
    np.testing.assert_array_equal(got, want)  # the rows never written read 0
    assert received.tolist() == [i in (3, 4, 5, 6, 7, 9) for i in range(12)]


def test_more_frames_than_one_call_takes_are_written_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(row_writer, "IOV_MAX", 3)
    store = make_store(tmp_path, n=12, chunk=12)
    sent = images(12, seed=2)
    store.write_frames(list(range(12)), list(sent))
    store.close()
    np.testing.assert_array_equal(read(store.path)[0], sent)


def test_grown_but_unwritten_rows_read_zero_after_reopening(tmp_path):
    store = make_store(tmp_path, n=8)
    store.write_frames([0, 1], list(images(2)))
    store.flush()
    from service.store import StoredReconstruction

    for _ in range(2):  # the second replaces the first: space freed at the end of the file, maybe allocated again
        store.write_reconstruction(0, StoredReconstruction(0, np.random.default_rng(0).random((300, 300)), (0.0, 0.0), 0.1, 2, [1.0], "v"))
    store.set_state("running")
    store.append_batch(1, np.zeros((40, 2)))
    store.write_frames([45], list(images(1, seed=3)))
    store.close()
    reopened, stored = SessionStore.open(store.path)
    reopened.close()
    assert stored.patterns.shape[0] == 48
    assert not stored.patterns[2:45].any() and not stored.patterns[46:].any() and stored.patterns[45].all()


def test_a_new_chunk_on_space_the_file_used_before_is_zeroed(tmp_path):
    """A chunk allocated early with no fill reads what its space held: below the file's end, ``grow`` writes zeros over it."""
    store = make_store(tmp_path, n=4)
    store.flush()
    fd = store.pattern_rows.fd
    end = os.fstat(fd).st_size
    os.pwrite(fd, b"\xff" * (1 << 20), end)  # bytes past HDF5's end of file: where its next allocation lands
    store.append_batch(1, np.zeros((8, 2)))
    new = addresses(store.dataset("patterns"))[1:]
    assert all(a is not None and a < end + (1 << 20) for a in new)  # the test's premise: the new chunks lie on those bytes
    store.close()
    got, _ = read(store.path)
    assert got.shape[0] == 12 and not got.any()


@pytest.mark.parametrize("reopened", [False, True], ids=["created", "reopened"])
def test_in_place_and_hdf5_writes_in_one_chunk_keep_both(tmp_path, monkeypatch, reopened):
    """HDF5 keeps no copy of a chunk (its chunk cache is off for ``patterns``) to write back over rows written in place."""
    count = Counting(monkeypatch)
    store = make_store(tmp_path, n=8, chunk=8, bit_depth=16)
    if reopened:
        store.close()
        store, _ = SessionStore.open(store.path)
    assert store.dataset("patterns").id.get_access_plist().get_chunk_cache()[1] == 0
    sent = images(8, seed=4)
    wide = sent[1].astype(np.uint32)
    wide[0, 0] = 70000  # wider than the file's type: clipped through HDF5 as before
    strided = np.asfortranarray(sent[2])  # not C-contiguous
    swapped = sent[3].astype(">u2")  # other byte order
    store.write_frames([0, 1, 2, 3], [sent[0], wide, strided, swapped])
    store.flush()
    assert count.in_place == 1 and count.staged == 3
    _ = store.dataset("patterns")[4]  # an HDF5 read of the chunk ...
    store.write_frames([4, 5], [sent[4], sent[5]])  # ... then rows of it in place ...
    store.flush()
    with h5py.File(store.path, "r") as f:  # another open in this process sees them at once
        np.testing.assert_array_equal(f["patterns"][4:6], sent[4:6])
    store.write_frames([6, 7], [sent[6], sent[7].astype(np.uint8)])  # ... then HDF5 (uint8: converted) and in place again
    store.close()
    assert count.in_place == 4 and count.staged == 4
    got, received = read(store.path)
    want = sent.copy()
    want[7] = sent[7].astype(np.uint8)
    want[1, 0, 0] = np.iinfo(np.uint16).max
    np.testing.assert_array_equal(got, want)
    assert received.all()


def test_a_file_made_before_goes_through_hdf5_until_its_chunk_is_allocated(tmp_path, monkeypatch):
    """Files made before early allocation: a chunk is allocated at its first (HDF5) write, then rows go in place."""
    count = Counting(monkeypatch)
    store = make_store(tmp_path, n=0)
    store.close()
    with h5py.File(store.path, "a") as f:  # as create_patterns made it before
        del f["patterns"]
        f.create_dataset("patterns", (0, 16, 16), maxshape=(None, 16, 16), dtype=np.uint16, chunks=(4, 16, 16))
    store, _ = SessionStore.open(store.path)
    store.append_batch(0, np.zeros((8, 2)))
    assert addresses(store.dataset("patterns")) == [None, None]
    sent = images(8, seed=5)
    store.write_frames([0, 1], list(sent[:2]))
    store.flush()
    assert count.in_place == 0 and count.staged == 2
    store.write_frames([2, 3, 4], list(sent[2:5]))
    store.flush()
    assert count.in_place == 2 and count.staged == 3  # chunk 0 is allocated now; chunk 1 is not
    store.close()
    got, received = read(store.path)
    np.testing.assert_array_equal(got[:5], sent[:5])
    assert not got[5:].any() and received.tolist() == [True] * 5 + [False] * 3


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_write_puts_the_frames_back_and_later_flushes_fail(tmp_path, monkeypatch, code):
    store = make_store(tmp_path, n=8)
    sent = images(8, seed=6)
    store.write_frames(list(range(8)), list(sent))

    def failing(*_a):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "pwritev", failing)
    taken = store.take_pending()
    with pytest.raises(StoreError, match=os.strerror(code)):
        store.write_taken(taken)
    assert store.pending_frames == 8
    with pytest.raises(StoreError):
        store.flush()
    monkeypatch.undo()
    store.close()  # writes what it still queues (its file write works again)
    got, received = read(store.path)
    np.testing.assert_array_equal(got, sent)
    assert received.all()


def test_a_short_write_goes_on_from_where_it_stopped(tmp_path, monkeypatch):
    real = os.pwritev

    def short(fd, buffers, offset):  # at most 1000 bytes a call
        data = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)[:1000]
        return real(fd, [data], offset)

    path = tmp_path / "raw"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        monkeypatch.setattr(os, "pwritev", short)
        rows = images(3, seed=7)
        pwrite_all(fd, list(rows), 10)
    finally:
        os.close(fd)
    assert path.read_bytes()[10:] == rows.tobytes()


def _grown_on_core_driver(tmp_path, zeroed: bool) -> np.ndarray:
    """``patterns`` grown by 64 rows in a file on HDF5's core driver after a dataset of 0xFFFF was written and deleted
    (``zeroed`` False: ``grow`` told the chunks got a fill, so it writes no zeros)."""
    from service.pattern_chunks import create_patterns

    with h5py.File(tmp_path / f"core-{zeroed}.h5", "w", driver="core", backing_store=False) as f:
        ds = create_patterns(f, 16, np.dtype(np.uint16), 4, compressed=False)
        f.create_dataset("junk", data=np.full((64, 16, 16), 0xFFFF, np.uint16))
        f.flush()
        del f["junk"]
        rows = PatternRows(f, ds)
        assert not rows.in_place and rows.never_filled
        rows.never_filled = zeroed
        rows.grow(64)
        return ds[()]


def test_on_another_driver_new_rows_are_zeroed_through_hdf5(tmp_path):
    """No file descriptor to write through (not the sec2 driver): ``grow`` writes the new rows' zeros through HDF5, so chunks
    allocated early with no fill read 0, not old bytes."""
    assert _grown_on_core_driver(tmp_path, zeroed=False).any()  # the test's premise: unfilled new chunks read old bytes here
    assert not _grown_on_core_driver(tmp_path, zeroed=True).any()
