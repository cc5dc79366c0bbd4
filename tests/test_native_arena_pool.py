"""The compiled loop's arenas: frames are views into a pooled arena, and no drain writes over a frame still referenced.

``NativeReceiveLoop.receive`` decodes each drain into an arena of its pool that nothing
references any more (``sys.getrefcount``: a view of an array holds a reference to it),
allocates a new one when every pooled arena is still held (pooled while the pool has
room), and copies a small drain's frames out instead of pinning a whole arena with them.
"""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
from native_testing import inproc_pair, require_native_loop

from detector_stream.decoder import StreamDecoder
from detector_stream.events import Frame
from detector_stream.messages import image_parts, series_start_parts
from detector_stream.native.loop import NativeReceiveLoop
from service.routing import FrameRouter

require_native_loop()

FRAME = 64 * 64 * 2
"""Bytes of one 64 x 64 uint16 frame."""


@pytest.fixture()
def pair():
    with inproc_pair("native-arena-pool-test") as sockets:
        yield sockets


class Stream:
    """One series sent frame after frame, drained by one loop and decoder."""

    def __init__(self, pair, loop: NativeReceiveLoop) -> None:
        self.push, self.pull, self.loop, self.decoder, self.next = *pair, loop, StreamDecoder(), 0
        self.push.send_multipart(series_start_parts(1, {"ntrigger": 1000, "nimages": 1, "trigger_mode": "exte"}))
        self._drain(1)

    def _drain(self, n: int) -> list:
        events, got = [], 0
        deadline = time.monotonic() + 10
        while got < n and time.monotonic() < deadline:
            batch = self.loop.receive(self.pull)
            got += len(batch)
            events += self.decoder.feed_native(batch)
        assert got == n
        return events

    def frames(self, value: int, n: int) -> list[Frame]:
        """Send ``n`` frames every pixel ``value`` and drain them (in one drain: they are queued before it)."""
        for _ in range(n):
            self.push.send_multipart(image_parts(1, self.next, np.full((64, 64), value, np.uint16), "bs16-lz4<", 1, 2, 3))
            self.next += 1
        time.sleep(0.05)
        frames = [e for e in self._drain(n) if isinstance(e, Frame)]
        assert len(frames) == n
        return frames


def _arena_of(frame: Frame) -> np.ndarray:
    """The array that owns ``frame.image``'s memory."""
    base = frame.image
    while base.base is not None:
        base = base.base
    return base


def test_a_frame_still_referenced_is_not_written_over_by_the_next_drain(pair):
    """Regression guard: a pool that hands out a referenced arena again makes the next drain overwrite the kept frame."""
    stream = Stream(pair, NativeReceiveLoop(16, arena_bytes=4 * FRAME))
    kept = stream.frames(1, 4)[2]  # a full drain: the frames are views into the arena, not copies
    assert _arena_of(kept).nbytes == 4 * FRAME
    for value in (2, 3):
        later = stream.frames(value, 4)
        assert not np.shares_memory(later[0].image, kept.image)
        assert (later[3].image == value).all()
        del later
        gc.collect()
    assert (kept.image == 1).all()
    assert stream.loop.pooled == 2  # the arena of the kept frame, and one that was reused


def test_an_arena_is_reused_once_its_frames_are_released(pair):
    stream = Stream(pair, NativeReceiveLoop(16, arena_bytes=4 * FRAME))
    frames = stream.frames(1, 4)
    first = frames[0].image.ctypes.data
    del frames
    gc.collect()
    again = stream.frames(2, 4)
    assert again[0].image.ctypes.data == first and (again[0].image == 2).all()
    assert stream.loop.pooled == 1


def test_beyond_the_pool_a_drain_gets_a_new_arena_not_kept(pair):
    stream = Stream(pair, NativeReceiveLoop(16, arena_bytes=4 * FRAME, pool=3))
    held = [stream.frames(value, 4) for value in range(1, 7)]
    assert stream.loop.pooled == 3
    assert len({_arena_of(frames[0]).ctypes.data for frames in held}) == 6
    for value, frames in enumerate(held, 1):
        assert all((f.image == value).all() for f in frames)


def test_a_small_drain_copies_its_frames_out_and_leaves_the_arena_free(pair):
    """A slow stream's drains of a frame or two must not pin an arena each (4 MiB or more) for as long as a frame is kept."""
    stream = Stream(pair, NativeReceiveLoop(16, arena_bytes=16 * FRAME))
    frames = stream.frames(1, 2)
    assert _arena_of(frames[0]).nbytes == 2 * FRAME
    stream.frames(2, 16)
    assert stream.loop.pooled == 1 and (frames[0].image == 1).all()


def test_a_buffered_frame_of_an_untold_series_holds_its_own_bytes():
    """Held until a tell, a frame that is a view (into the loop's arena) would pin the whole arena: ``buffer_frame`` copies it."""
    arena = np.zeros((8, 64, 64), np.uint16)
    router = FrameRouter(100, 10**9)
    router.buffer_frame(("tcp://x", 1), 0, arena[3], 0.0)
    router.buffer_frame(("tcp://x", 1), 1, own := np.ones((64, 64), np.uint16), 0.0)
    held = router.buffer[("tcp://x", 1)].frames
    assert held[0][0][0].base is None and not np.shares_memory(held[0][0][0], arena)
    assert held[1][0][0] is own  # an array of its own is kept as it is
    assert router.buffered_bytes == 2 * FRAME


def test_the_loop_reports_the_largest_frame_that_did_not_fit(pair):
    stream = Stream(pair, NativeReceiveLoop(16, arena_bytes=FRAME))
    for i in range(3):
        stream.push.send_multipart(image_parts(1, i, np.ones((64, 64), np.uint16), "bs16-lz4<", 1, 2, 3))
    time.sleep(0.05)
    batch = stream.loop.receive(stream.pull)
    assert len(batch) == 3 and batch.arena_misses == FRAME  # frames 1 and 2: raw, the arena full
    assert stream.loop.receive(stream.pull).arena_misses == 0


def test_the_pool_turns_itself_off_where_reference_counts_do_not_tell_views(pair, monkeypatch):
    """An interpreter whose counts do not rise with a view (borrowed references) would make every arena look free: the loop
    checks at construction and then gives each drain a new arena, never reused."""
    from detector_stream.native import loop as loop_module

    monkeypatch.setattr(loop_module, "_references", lambda arenas, i: 2)  # every array looks unreferenced
    assert not loop_module.refcount_tells_views()
    stream = Stream(pair, NativeReceiveLoop(16, arena_bytes=4 * FRAME))
    kept = stream.frames(1, 4)[2]
    for value in (2, 3):
        stream.frames(value, 4)
        gc.collect()
    assert (kept.image == 1).all() and stream.loop.pooled == 0


def test_frames_handed_out_are_read_only(pair):
    """Frames share their arena (a run's stack, the file's queue): a write into one raises instead of changing the others."""
    stream = Stream(pair, NativeReceiveLoop(16, arena_bytes=8 * FRAME))
    viewed, copied = stream.frames(1, 4), stream.frames(2, 1)  # half the arena: views; an eighth: copied out
    assert _arena_of(viewed[0]).nbytes == 8 * FRAME and _arena_of(copied[0]).nbytes < 8 * FRAME
    for frames in (viewed, copied):
        with pytest.raises(ValueError, match="read-only"):
            frames[0].image[0, 0] = 7
