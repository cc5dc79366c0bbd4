"""Session files keep the detector's bitshuffle-LZ4 blobs as HDF5 chunks: what is read back is always what was received."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from service_testing import session_body

import recon.hdf5_filters  # noqa: F401  (reads the compressed patterns)
from detector_stream.codec import encode_frames
from service import pattern_chunks
from service import store as store_module
from service.pattern_chunks import is_bslz4
from service.row_writer import PatternRows
from service.store import SessionStore, StoreError


def make_store(tmp_path, k=64, chunk=4, budget=12, name="s.h5", dtype="uint16"):
    params = session_body("tcp://127.0.0.1:1", budget=budget, chunk=chunk) | {
        "detector_pixels": k,
        "energy_ev": 60000.0,
        "convergence_mrad": 33.0,
        "defocus_nm": 0.0,
        "detector_bit_depth": 16 if dtype == "uint16" else 32,
    }
    store = SessionStore.create(tmp_path / name, "s", params, {"requested": "sparse-grid"}, compressed=True)
    store.append_batch(0, np.zeros((budget, 2)))
    return store


def frames(n, k=64, seed=0, dtype=np.uint16):
    images = np.random.default_rng(seed).poisson(3.0, (n, k, k)).astype(dtype)
    return images, encode_frames(images, f"bs{8 * np.dtype(dtype).itemsize}-lz4<")


def read_patterns(path):
    with h5py.File(path, "r") as f:
        assert is_bslz4(f["patterns"])
        return f["patterns"][()], f["received"][()].astype(bool)


class CountingChunks:
    """Counts direct chunk writes and frames written through HDF5's filter."""

    def __init__(self, monkeypatch):
        self.direct = self.filtered = 0
        real_chunks, real_filtered = pattern_chunks.write_chunks, PatternRows.write_staged

        def chunks(ds, direct):
            self.direct += len(direct)
            real_chunks(ds, direct)

        def filtered(rows, pending, slots):
            self.filtered += len(slots)
            real_filtered(rows, pending, slots)

        monkeypatch.setattr(store_module, "write_chunks", chunks)
        monkeypatch.setattr(PatternRows, "write_staged", filtered)


def test_blobs_become_chunks_and_read_back_as_sent(tmp_path, monkeypatch):
    count = CountingChunks(monkeypatch)
    store = make_store(tmp_path)
    images, blobs = frames(10)
    store.write_frames(list(range(6)), list(images[:6]), blobs[:6])  # chunk 0 whole, chunk 1 half: written with two zero rows
    store.flush()
    assert count.direct == 2 and count.filtered == 0
    got, received = read_patterns(store.path)
    assert np.array_equal(got[:6], images[:6]) and not got[6:].any() and list(received[:7]) == [True] * 6 + [False]
    store.write_frames(list(range(6, 10)), list(images[6:10]), blobs[6:10])  # completes chunk 1 from what it held, half of chunk 2
    store.flush()
    assert count.direct == 4 and count.filtered == 0
    store.close()
    got, received = read_patterns(store.path)
    assert np.array_equal(got[:10], images) and not got[10:].any() and received[:10].all() and not received[10:].any()


def test_without_blobs_and_after_a_restart_frames_go_through_the_filter(tmp_path, monkeypatch):
    count = CountingChunks(monkeypatch)
    store = make_store(tmp_path)
    images, blobs = frames(12, seed=1)
    store.write_frames([0, 1, 4], [images[0], images[1], images[4]], [blobs[0], None, blobs[4]])  # a frame without its blob
    store.flush()
    assert count.filtered == 2 and count.direct == 1  # chunk 0 through HDF5 (one frame has no blob); chunk 1 direct
    store.write_frame(2, images[2], blobs[2])  # chunk 0 is not this writer's now: through HDF5, merged with rows 0 and 1
    store.close()
    reopened, st = SessionStore.open(store.path)
    assert np.array_equal(st.patterns[[0, 1, 2, 4]], images[[0, 1, 2, 4]])
    reopened.write_frames([5, 6], list(images[5:7]), blobs[5:7])  # chunk 1 existed before the restart: merged by HDF5
    reopened.write_frames(list(range(8, 12)), list(images[8:12]), blobs[8:12])  # chunk 2 whole: direct
    filtered_before, direct_before = count.filtered, count.direct
    reopened.close()
    assert count.filtered - filtered_before == 2 and count.direct - direct_before == 1
    got, received = read_patterns(store.path)
    rows = [0, 1, 2, 4, 5, 6, 8, 9, 10, 11]
    assert np.array_equal(got[rows], images[rows]) and not got[[3, 7]].any() and list(np.flatnonzero(received)) == rows


def test_a_frame_sent_again_replaces_its_row_only(tmp_path):
    store = make_store(tmp_path)
    images, blobs = frames(4, seed=2)
    store.write_frames(list(range(4)), list(images), blobs)
    store.flush()
    again, again_blobs = frames(1, seed=3)
    store.write_frame(2, again[0], again_blobs[0])  # chunk 0 was full and let go: this row through HDF5
    store.close()
    got, _ = read_patterns(store.path)
    assert np.array_equal(got[[0, 1, 3]], images[[0, 1, 3]]) and np.array_equal(got[2], again[0])


@pytest.mark.parametrize(("k", "frame_dtype", "file_dtype"), [(24, np.uint16, "uint16"), (64, np.uint32, "uint16"), (64, np.uint8, "uint16")])
def test_frames_that_are_not_the_files_whole_blocks_are_compressed_by_hdf5(tmp_path, monkeypatch, k, frame_dtype, file_dtype):
    count = CountingChunks(monkeypatch)
    store = make_store(tmp_path, k=k, dtype=file_dtype)
    images, blobs = frames(4, k=k, seed=4, dtype=frame_dtype)
    store.write_frames(list(range(4)), list(images), blobs)
    store.close()
    assert count.direct == 0 and count.filtered == 4
    got, _ = read_patterns(store.path)
    assert np.array_equal(got[:4], images.astype(file_dtype))


def test_a_blob_with_another_block_size_is_not_copied(tmp_path, monkeypatch):
    count = CountingChunks(monkeypatch)
    store = make_store(tmp_path)
    images, blobs = frames(4, seed=5)
    odd = bytearray(blobs[0])
    odd[8:12] = (4096).to_bytes(4, "big")  # a sender's other block size: its blocks would not line up with the chunk's
    store.write_frames(list(range(4)), list(images), [bytes(odd), *blobs[1:]])
    store.close()
    assert count.direct == 0 and count.filtered == 4


def test_a_failed_chunk_write_keeps_the_frames_and_what_the_writer_held(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    images, blobs = frames(8, seed=6)
    store.write_frames([0, 1], list(images[:2]), blobs[:2])
    store.flush()
    held = store.held_frames
    assert held == 2

    def disk_full(ds, direct):
        raise OSError("[Errno 28] No space left on device")

    monkeypatch.setattr(store_module, "write_chunks", disk_full)
    store.write_frames([2, 3, 4], list(images[2:5]), blobs[2:5])
    taken = store.take_pending()
    with pytest.raises(StoreError, match="No space left"):
        store.write_taken(taken)
    assert store.pending_frames == 3 and store.held_frames == held  # nothing written is taken as written
    monkeypatch.undo()
    with pytest.raises(StoreError):
        store.flush()  # a failed write stays failed (service.store): the session fails, the frames are not reported durable


def test_old_uncompressed_session_files_are_still_written(tmp_path):
    path = tmp_path / "old.h5"
    store = make_store(tmp_path, name="old.h5")
    store.close()
    with h5py.File(path, "a") as f:  # as files were written before: patterns uncompressed
        del f["patterns"]
        f.create_dataset("patterns", (12, 64, 64), maxshape=(None, 64, 64), dtype=np.uint16, chunks=(4, 64, 64))
    reopened, _ = SessionStore.open(path)
    images, blobs = frames(4, seed=7)
    reopened.write_frames(list(range(4)), list(images), blobs)
    reopened.close()
    with h5py.File(path, "r") as f:
        assert not is_bslz4(f["patterns"]) and np.array_equal(f["patterns"][:4], images)


def test_a_whole_chunk_written_directly_replaces_what_hdf5_cached_of_it(tmp_path, monkeypatch):
    count = CountingChunks(monkeypatch)
    store = make_store(tmp_path)
    first, _ = frames(4, seed=8)
    store.write_frames([0, 1], list(first[:2]))  # no blobs: through HDF5 (its chunk cache holds chunk 0 now)
    store.flush()
    images, blobs = frames(4, seed=9)
    store.write_frames(list(range(4)), list(images), blobs)  # every row of chunk 0 again, with blobs: one direct write
    store.flush()
    assert count.filtered == 2 and count.direct == 1
    store.write_frame(3, first[3])  # and a row after it, through HDF5 again: merged with the direct chunk, not the cached one
    store.close()
    got, _ = read_patterns(store.path)
    assert np.array_equal(got[:3], images[:3]) and np.array_equal(got[3], first[3])


def test_patterns_are_uncompressed_unless_the_service_says_so(tmp_path):
    """Compressed chunks move when rewritten (a kill -9 mid-flush can cost rows flushed before): off by default."""
    from fastapi.testclient import TestClient
    from service_testing import AUTH, KEY, RecordingBackend

    from service.app import create_app
    from service.settings import ServiceSettings

    for compressed in (False, True):
        settings = ServiceSettings(storage=tmp_path / f"s{compressed}", api_keys=[KEY], compressed_patterns=compressed)
        with TestClient(create_app(settings, backend=RecordingBackend())) as c:
            sid = c.post("/api/v1/sessions", json=session_body("tcp://127.0.0.1:1"), headers=AUTH).json()["session_id"]
        with h5py.File(settings.storage / f"{sid}.h5", "r") as f:
            assert is_bslz4(f["patterns"]) == compressed
    store = SessionStore.create(tmp_path / "plain.h5", "p", session_body("tcp://127.0.0.1:1", budget=4, chunk=4) | {
        "detector_pixels": 64, "energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0, "detector_bit_depth": 16}, {})
    store.append_batch(0, np.zeros((4, 2)))
    images, blobs = frames(4, seed=11)
    store.write_frames(list(range(4)), list(images), blobs)  # blobs offered, not used: rows written in place
    store.close()
    with h5py.File(tmp_path / "plain.h5", "r") as f:
        assert not is_bslz4(f["patterns"]) and np.array_equal(f["patterns"][()], images)
