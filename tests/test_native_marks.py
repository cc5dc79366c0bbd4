"""Marked pixels counted where frames are decoded: ``Frame.marked`` from the compiled loop, and the store path that trusts it.

The compiled receive loop counts, per frame, the pixels at their type's largest value
(0xFF, 0xFFFF, 0xFFFFFFFF: the detector's mark of an invalid pixel, or saturation) while
each decoded block is in cache. ``DetectorMask.observe`` then reduces only the frames
whose count is not 0 (all of them where it is not known: the Python decoder's frames).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from native_testing import inproc_pair, require_native_loop
from service_testing import KEY, RecordingBackend, frames_for, session_body

import service.detector_mask as detector_mask
from detector_stream.decoder import StreamDecoder
from detector_stream.events import Frame
from detector_stream.messages import image_parts, series_end_parts, series_start_parts
from detector_stream.native.batch import IMAGE
from detector_stream.native.loop import NativeReceiveLoop
from service.detector_mask import MARKED, DetectorMask
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.scheduler import Scheduler
from service.settings import ServiceSettings

require_native_loop()

EP = "tcp://127.0.0.1:5011"
K = 16


@pytest.fixture()
def pair():
    with inproc_pair("native-marks-test") as sockets:
        yield sockets


def _series(images: list[np.ndarray], series: int = 1) -> list[list[bytes]]:
    msgs = [series_start_parts(series, {"ntrigger": len(images), "nimages": 1, "trigger_mode": "exte"})]
    msgs += [image_parts(series, i, im, f"bs{8 * im.dtype.itemsize}-lz4<", 1, 2, 3) for i, im in enumerate(images)]
    return [*msgs, series_end_parts(series)]


def _through_loop(pair, msgs: list[list[bytes]]) -> list:
    """The events of ``msgs`` through the compiled loop (every image decoded there)."""
    push, pull = pair
    for m in msgs:
        push.send_multipart(m)
    loop, decoder, events, kinds = NativeReceiveLoop(64), StreamDecoder(), [], []
    deadline = time.monotonic() + 10
    while len(kinds) < len(msgs) and time.monotonic() < deadline:
        batch = loop.receive(pull)
        kinds += batch.records[:, 0].tolist()
        events += decoder.feed_native(batch)
    assert kinds.count(IMAGE) == len(msgs) - 2
    return events


def test_the_loop_counts_each_frames_marked_pixels_and_the_python_decoder_leaves_it_unknown(pair):
    rng = np.random.default_rng(5)
    shapes = [((64, 64), np.uint16), ((128, 256), np.uint8), ((37, 53), np.uint8), ((129, 67), np.uint16), ((7, 7), np.uint32), ((100, 100), np.uint32), ((3, 5), np.uint8)]
    images = []
    for shape, dtype in shapes:
        top = np.iinfo(dtype).max
        for marks in (0, 1, 37):
            image = rng.integers(0, top, shape, dtype=dtype)  # below the top: only the marks placed read it
            image.flat[rng.choice(image.size, min(marks, image.size), replace=False)] = top
            image.flat[-1] = top if marks == 37 else image.flat[-1]  # a mark in the raw tail of the blob
            images.append(image)
        images.append(np.full(shape, top, dtype))  # every pixel marked: a per-block counter that wraps would miscount it
    msgs = _series(images)
    frames = [e for e in _through_loop(pair, msgs) if isinstance(e, Frame)]
    assert [f.marked for f in frames] == [int(np.count_nonzero(im == np.iinfo(im.dtype).max)) for im in images]
    assert {f.marked for f in frames} >= {0, 1}
    python = [e for e in StreamDecoder(fast=False).feed_many(msgs) if isinstance(e, Frame)]
    assert len(python) == len(images) and all(f.marked is None for f in python)


def test_observe_reduces_only_the_frames_whose_count_is_not_zero(monkeypatch):
    images = [np.zeros((K, K), np.uint16) for _ in range(3)]
    images[1][4, 5] = images[2][6, 7] = 65535
    reduced = []
    reduction = detector_mask.largest_per_pixel
    monkeypatch.setattr(detector_mask, "largest_per_pixel", lambda same: reduced.append(len(same)) or reduction(same))
    mask = DetectorMask(K)
    assert not mask.observe(images, marked=[0, 0, 0]) and reduced == []  # counted, none marked: nothing looked at
    assert mask.observe(images, marked=[0, 1, None]) and reduced == [2]  # the count not known is looked at too
    assert mask.flags[4, 5] == mask.flags[6, 7] == MARKED and np.count_nonzero(mask.flags) == 2


def _manager(tmp_path) -> tuple[SessionManager, str]:
    """A manager with one session of budget and chunk 6 on EP, its first batch told as series 1."""
    manager = SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())
    sid = manager.create(session_body(EP, budget=6, chunk=6) | {"energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0})["session_id"]
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(manager.take_work(0.1))
    manager.tell(sid, manager.try_ask(sid)["batch_id"], 1, None)
    return manager, sid


@pytest.mark.parametrize("marked_frames", [[3], [0, 5], [0, 1, 2, 3, 4, 5]])
def test_a_run_from_the_loop_with_a_marked_pixel_flags_it(tmp_path, pair, marked_frames):
    """Regression guard: a count that missed a mark, or a store that skipped a run with one, leaves the pixel unflagged."""
    images = frames_for(1, 6, K)
    for i in marked_frames:
        images[i, 9, 11] = 65535
    events = _through_loop(pair, _series(list(images)))
    assert [e.marked for e in events if isinstance(e, Frame)] == [int(i in marked_frames) for i in range(6)]
    manager, sid = _manager(tmp_path)
    manager.on_events(EP, events)
    s = manager.sessions[sid]
    assert s.frames_received == 6
    assert s.detector_mask.flags[9, 11] == MARKED and np.count_nonzero(s.detector_mask.flags) == 1
    manager.close()


def test_a_run_the_loop_saw_unmarked_is_not_reduced(tmp_path, pair, monkeypatch):
    reduced = []
    reduction = detector_mask.largest_per_pixel
    monkeypatch.setattr(detector_mask, "largest_per_pixel", lambda same: reduced.append(len(same)) or reduction(same))
    images = list(frames_for(1, 6, K))
    for events in (_through_loop(pair, _series(images)), StreamDecoder().feed_many(_series(images))):
        manager, sid = _manager(tmp_path / str(len(reduced)))
        manager.on_events(EP, events)
        assert manager.sessions[sid].frames_received == 6 and manager.sessions[sid].detector_mask.count == 0
        manager.close()
    assert reduced == [6]  # only the Python decoder's frames (counts not known) were reduced
