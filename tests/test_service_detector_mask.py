"""Invalid detector pixels in the service: learnt from the header's pixel mask and from marked counts, recorded, frames kept as sent."""

from __future__ import annotations

import h5py
import numpy as np
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, RecordingBackend, frames_for, session_body, wait_until

from detector_stream.messages import series_start_parts
from service.app import create_app
from service.detector_mask import FROM_HEADER, MARKED, DetectorMask, measured_peak
from service.settings import ServiceSettings
from service.store import SessionStore

K = 16
MASKED = (2, 3)
"""(y, x) in the detector's pixel mask (header detail all)."""
MARKED_AT = (9, 11)
"""(y, x) the detector marks with its largest count in every frame."""
TOP32 = 2**32 - 1


def _client(tmp_path):
    backend = RecordingBackend()
    c = TestClient(create_app(ServiceSettings(storage=tmp_path / "sessions", api_keys=[KEY], ask_timeout_s=5.0), backend=backend))
    c.backend = backend
    return c


def _one_batch(c, p, images: np.ndarray, header: list[bytes] | None = None, encoding: str = "bs16-lz4<", **body) -> str:
    """A session of one batch of len(images) positions, told as series 5, its frames pushed; returns the session id once they are in."""
    sid = c.post("/api/v1/sessions", json=session_body(p.endpoint, budget=len(images), chunk=len(images)) | body, headers=AUTH).json()["session_id"]
    ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
    c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 5}, headers=AUTH)
    if header is None:
        p.start(5, len(images), K)
    else:
        p.raw(header)
    for i, image in enumerate(images):
        p.frame(5, i, image, encoding)
    p.end(5)
    wait_until(lambda: c.get(f"/api/v1/sessions/{sid}", headers=AUTH).json()["frames_received"] == len(images) or None, what="frames stored")
    wait_until(lambda: c.backend.jobs or None, what="the reconstruction job")
    c.app.state.service.manager.flush_all()
    return sid


def _header(mask: np.ndarray, n: int) -> list[bytes]:
    config = {"ntrigger": n, "nimages": 1, "trigger_mode": "exts", "x_pixels_in_detector": K, "y_pixels_in_detector": K, "bit_depth_image": 16}
    return series_start_parts(5, config, "all", pixel_mask=mask)


def test_mask_from_the_header_and_from_marked_pixels(tmp_path, pusher):
    images = frames_for(5, 3, K)
    images[:, MARKED_AT[0], MARKED_AT[1]] = 65535  # pixel_mask_applied: the detector's mark
    mask = np.zeros((K, K), np.uint32)
    mask[MASKED] = 1  # a gap pixel, its counts not marked (pixel_mask_applied off): still not a measurement
    with _client(tmp_path) as c:
        sid = _one_batch(c, pusher, images, header=_header(mask, 3), detector_bit_depth=16)
        job = c.backend.jobs[-1]
        with h5py.File(tmp_path / "sessions" / f"{sid}.h5", "r") as f:
            stored, flags = f["patterns"][()], f["detector_mask"][()]
    assert np.array_equal(stored, images)  # bit for bit as sent: neither pixel rewritten
    assert flags[MASKED] == FROM_HEADER and flags[MARKED_AT] == MARKED and np.count_nonzero(flags) == 2
    assert np.array_equal(np.argwhere(job.invalid_pixels), [MASKED, MARKED_AT])


def test_a_basic_header_carries_no_mask_and_marked_pixels_alone_are_learnt(tmp_path, pusher):
    images = frames_for(5, 3, K)
    images[1, MARKED_AT[0], MARKED_AT[1]] = 65535  # in one frame only: invalid for the whole session
    with _client(tmp_path) as c:
        sid = _one_batch(c, pusher, images, detector_bit_depth=16)
        job = c.backend.jobs[-1]
        with h5py.File(tmp_path / "sessions" / f"{sid}.h5", "r") as f:
            flags = f["detector_mask"][()]
    assert np.argwhere(flags).tolist() == [list(MARKED_AT)] and flags[MARKED_AT] == MARKED
    assert np.argwhere(job.invalid_pixels).tolist() == [list(MARKED_AT)]


def test_a_session_without_invalid_pixels_records_none(tmp_path, pusher):
    with _client(tmp_path) as c:
        sid = _one_batch(c, pusher, frames_for(5, 3, K), detector_bit_depth=16)
        assert c.backend.jobs[-1].invalid_pixels is None
        with h5py.File(tmp_path / "sessions" / f"{sid}.h5", "r") as f:
            assert "detector_mask" not in f


def test_32_bit_frames_with_marked_pixels_are_stored_in_a_16_bit_session(tmp_path, pusher):
    """A DCU derives its bit depth from the count time: a session created at 16 bit may get 32-bit frames, each with its masked
    pixels at 2^32 - 1. Those marks are not counts: the frames are stored (the mark as the file type's mark), not refused."""
    images = frames_for(5, 3, K).astype(np.uint32)
    images[:, MARKED_AT[0], MARKED_AT[1]] = TOP32
    with _client(tmp_path) as c:
        sid = _one_batch(c, pusher, images, encoding="bs32-lz4<", detector_bit_depth=16)
        st = c.get(f"/api/v1/sessions/{sid}", headers=AUTH).json()
        job = c.backend.jobs[-1]
        with h5py.File(tmp_path / "sessions" / f"{sid}.h5", "r") as f:
            stored, flags = f["patterns"][()], f["detector_mask"][()]
    assert st["stream_errors"] == {} and st["frames_received"] == 3
    expected = images.copy()
    expected[:, MARKED_AT[0], MARKED_AT[1]] = 65535
    assert stored.dtype == np.uint16 and np.array_equal(stored, expected)  # every count exact; the 32-bit mark is the 16-bit mark
    assert flags[MARKED_AT] == MARKED and np.argwhere(job.invalid_pixels).tolist() == [list(MARKED_AT)]


def test_32_bit_frames_in_a_32_bit_session_keep_their_marks(tmp_path, pusher):
    images = frames_for(5, 3, K).astype(np.uint32)
    images[:, 0, 0] += 100_000  # counts beyond 16 bits: a 32-bit detector's own
    images[:, MARKED_AT[0], MARKED_AT[1]] = TOP32
    with _client(tmp_path) as c:
        sid = _one_batch(c, pusher, images, encoding="bs32-lz4<", detector_bit_depth=32)
        with h5py.File(tmp_path / "sessions" / f"{sid}.h5", "r") as f:
            stored, flags = f["patterns"][()], f["detector_mask"][()]
    assert stored.dtype == np.uint32 and np.array_equal(stored, images) and flags[MARKED_AT] == MARKED


def test_the_marks_of_16_bit_frames_are_found_in_a_32_bit_file_only_through_the_recorded_mask(tmp_path):
    """A session left at the default 32 bit reading a 16-bit detector stores 65535 marks as uint32: only ``detector_mask`` says they
    are marks; a restart reads it back."""
    from recon.dataset import read_dataset

    params = session_body("tcp://127.0.0.1:1", budget=2, chunk=2) | {
        "energy_ev": 60e3, "convergence_mrad": 33.0, "defocus_nm": 0.0, "detector_bit_depth": 32}
    store = SessionStore.create(tmp_path / "s.h5", "s", params, {})
    store.append_batch(0, np.zeros((2, 2)))
    images = frames_for(1, 2, K)
    images[:, MARKED_AT[0], MARKED_AT[1]] = 65535
    mask = DetectorMask(K)
    assert mask.observe(list(images)) and not mask.observe(list(images))  # new once, then nothing new
    store.write_frames([0, 1], list(images))
    store.set_detector_mask(mask.flags)
    store.flush()
    store.close()
    reopened, stored = SessionStore.open(tmp_path / "s.h5")
    reopened.close()
    assert stored.patterns.dtype == np.uint32 and np.array_equal(stored.patterns, images)
    assert np.argwhere(stored.detector_mask).tolist() == [list(MARKED_AT)]
    assert np.argwhere(read_dataset(tmp_path / "s.h5").invalid_pixels).tolist() == [list(MARKED_AT)]


def test_marks_are_each_pixel_types_largest_count():
    mask = DetectorMask(4)
    assert not mask.observe([np.full((4, 4), 255, np.uint16), np.full((4, 4), 65535, np.float32)])  # 255 in 16 bit is a count
    frame8 = np.zeros((4, 4), np.uint8)
    frame8[1, 2] = 255
    assert mask.observe([frame8]) and np.argwhere(mask.flags).tolist() == [[1, 2]]
    assert not mask.from_header(np.ones((8, 8), np.uint32))  # another detector size: ignored
    assert mask.from_header(np.eye(4, dtype=np.uint32)) and mask.count == 5 and mask.flags[1, 2] == MARKED
    frame32 = np.full((4, 4), 7, np.uint32)
    frame32[0, 0] = TOP32
    assert measured_peak(frame32) == 7 and measured_peak(np.full((2, 2), TOP32, np.uint32)) == 0


def test_a_restarted_session_keeps_its_invalid_pixels(tmp_path):
    """Marks seen before a restart ("kill -9" after a flush) still exclude their pixels from the chunks reconstructed after it."""
    from detector_stream.events import Frame
    from service.manager import SessionManager
    from service.metrics import ServiceMetrics
    from service.models import SessionCreate
    from service.scheduler import Scheduler

    ep = "tcp://127.0.0.1:5011"

    def manager() -> SessionManager:
        return SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())

    frames = frames_for(5, 10, K)
    frames[:4, MARKED_AT[0], MARKED_AT[1]] = 65535  # marked in the frames before the restart only
    m1 = manager()
    sid = m1.create(SessionCreate(**session_body(ep, budget=10, chunk=10, detector_bit_depth=32)).model_dump(mode="json"))["session_id"]
    Scheduler(m1, RecordingBackend(), m1.metrics).run_round(m1.take_work(0.1))
    assert m1.tell(sid, 0, 5, None)[0] == 202
    m1.on_events(ep, [Frame(5, i, frames[i]) for i in range(4)])
    m1.flush_all()
    m2 = manager()
    assert m2.restore() == 1
    m2.on_events(ep, [Frame(5, i, frames[i]) for i in range(4, 10)])
    (item,) = m2.take_work(0.1)
    assert np.argwhere(item.job.invalid_pixels).tolist() == [list(MARKED_AT)]  # a uint32 file: only its detector_mask knows 65535 is a mark
    m1.close()
    m2.close()
