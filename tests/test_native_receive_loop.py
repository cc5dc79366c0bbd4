"""The compiled receive loop (``detector_stream.native``) gives exactly the events of the Python path, valid or mutated input.

It decodes only what it has checked as the Python decoder would (DCU layout, size, md5,
bitshuffle framing); everything else reaches ``StreamDecoder`` whole. These tests send
real multipart messages through ZeroMQ and compare with ``StreamDecoder.feed_many`` on
the same messages, in batches small enough to cut series and with arenas small enough
to send frames the Python way.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from native_testing import inproc_pair
from stream_fuzz import Case, case_strategy
from test_stream_fast_path import _as_tuple, _compact

from detector_stream.decoder import StreamDecoder
from detector_stream.events import Frame, FrameRun, StreamError, as_frames
from detector_stream.messages import image_parts, series_end_parts, series_start_parts
from detector_stream.native import build
from detector_stream.native.batch import IMAGE, RAW
from detector_stream.native.loop import NativeReceiveLoop, choose_loop
from detector_stream.receiver import StreamReceiver

CI = settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG = {"ntrigger": 3, "nimages": 1, "trigger_mode": "exte"}

try:
    LOOP = NativeReceiveLoop(512)
except build.NativeUnavailable as err:  # no C compiler: the Python path serves, and these tests say why they did not run
    if os.environ.get("PTYCHOSCAN_REQUIRE_TOOLS") == "1":
        raise
    pytest.skip(f"compiled receive loop unavailable: {err}", allow_module_level=True)


@pytest.fixture(scope="module")
def pair():
    with inproc_pair("native-loop-test") as sockets:
        yield sockets


def _through_loop(pair, messages: list[list[bytes]], loop: NativeReceiveLoop, runs: bool = False) -> tuple[list, StreamDecoder, int]:
    """Send ``messages``, drain them with ``loop`` into one decoder (``runs``: ``StreamDecoder(runs=True)``): (events, decoder,
    frames decoded by the loop)."""
    push, pull = pair
    for m in messages:
        push.send_multipart(m)
    decoder, events, got, native_frames = StreamDecoder(runs=runs), [], 0, 0
    deadline = time.monotonic() + 10
    while got < len(messages) and time.monotonic() < deadline:
        batch = loop.receive(pull)
        got += len(batch)
        native_frames += int((batch.records[:, 0] == IMAGE).sum())
        events += decoder.feed_native(batch)
    assert got == len(messages)
    return events, decoder, native_frames


def _tuples(events: list) -> list[tuple]:
    """Events as comparable tuples, without ``received_at`` (the loop stamps it; the reference decoder is not given any)."""
    out = []
    for e in events:
        kind, fields, image = _as_tuple(e)
        fields.pop("received_at", None)
        fields.pop("stack", None)  # the loop's frames know the stack they are rows of
        marked = fields.pop("marked", None)  # the loop's frames know how many pixels are marked: the right number
        assert marked is None or marked == np.count_nonzero(e.image == np.iinfo(e.image.dtype).max)
        out.append((kind, fields, image))
    return out



def _python(messages: list[list[bytes]]) -> tuple[list, StreamDecoder]:
    decoder = StreamDecoder(fast=False)
    return decoder.feed_many(messages), decoder


def test_md5_is_hashlibs():
    rng = np.random.default_rng(0)
    for n in [*range(0, 200), 1000, 4096, 8191, 65537]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert LOOP.md5_hex(data) == hashlib.md5(data).hexdigest(), n


def test_md5_is_hashlibs_at_the_padding_boundaries_and_on_large_inputs():
    """Lengths where the padding takes one or two blocks (55/56, 119/120 bytes...), whole blocks, a frame blob, and large
    random sizes (many blocks through the unrolled loop), of random bytes and of constant ones."""
    rng = np.random.default_rng(1)
    near = [64 * k + r for k in range(0, 40) for r in (-9, -8, -7, -1, 0, 1) if 64 * k + r >= 0]
    sizes = [*near, 1635, 1636, *rng.integers(100_000, 3_000_000, 4).tolist()]
    for n in sizes:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert LOOP.md5_hex(data) == hashlib.md5(data).hexdigest(), n
    for fill in (b"\x00", b"\xff"):
        data = fill * 200_003
        assert LOOP.md5_hex(data) == hashlib.md5(data).hexdigest(), fill


@pytest.mark.parametrize("offset", [1, 2, 3, 5])
def test_md5_of_data_at_an_unaligned_address_is_hashlibs(offset):
    """The words of a block are read from any address (a received blob need not be 4-byte aligned)."""
    rng = np.random.default_rng(offset)
    buf = rng.integers(0, 256, 70_000 + offset, dtype=np.uint8)
    out = ctypes.create_string_buffer(32)
    for n in (0, 55, 56, 64, 120, 1635, 70_000):
        LOOP.lib.ps_md5_hex(LOOP._ctx, ctypes.cast(buf.ctypes.data + offset, ctypes.c_char_p), n, out)
        assert out.raw.decode() == hashlib.md5(buf[offset : offset + n].tobytes()).hexdigest(), n


@CI
@given(case=case_strategy(), batch=st.integers(1, 9), arena_frames=st.sampled_from([0, 1, 2, 512]), runs=st.booleans())
def test_loop_equals_python_path_on_mutated_series(pair, case: Case, batch: int, arena_frames: int, runs: bool):
    """``runs``: the decoder gives runs of frames as ``FrameRun``\\ s; as frames, they are the same events."""
    messages = [[_compact(p) if k != 2 else p for k, p in enumerate(m)] for m in case.messages if m]  # ZeroMQ has no 0-part message
    loop = NativeReceiveLoop(batch, arena_bytes=arena_frames * (case.original.images[0].nbytes + 8))
    events, decoder, _ = _through_loop(pair, messages, loop, runs)
    expected, reference = _python(messages)
    assert runs or not any(isinstance(e, FrameRun) for e in events)
    assert _tuples(as_frames(events)) == _tuples(expected)
    assert decoder.error_counts == reference.error_counts


def test_the_loop_decodes_dcu_frames_and_hands_on_the_rest(pair):
    """DCU-layout bitshuffle frames are decoded by the loop; header, end, raw-encoded and appendix messages come whole."""
    rng = np.random.default_rng(1)
    images = [rng.poisson(2.0, (64, 64)).astype(np.uint16) for _ in range(3)]
    odd = rng.poisson(2.0, (64, 64)).astype(np.uint16)
    msgs = [
        series_start_parts(1, {"ntrigger": 5, "nimages": 1, "trigger_mode": "exte"}),
        *[image_parts(1, i, im, "bs16-lz4<", 10, 20, 30) for i, im in enumerate(images)],
        image_parts(1, 3, odd, "<", 1, 2, 3),
        image_parts(1, 4, odd, "bs16-lz4<", 1, 2, 3, appendix=b"x" * 100),
        series_end_parts(1),
    ]
    events, decoder, native_frames = _through_loop(pair, msgs, NativeReceiveLoop(64))
    assert native_frames == 3
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.frame for f in frames] == [0, 1, 2, 3, 4]
    for f, im in zip(frames, [*images, odd, odd], strict=True):
        np.testing.assert_array_equal(f.image, im)
    assert [(f.start_time_ns, f.stop_time_ns, f.real_time_ns) for f in frames[:3]] == [(10, 20, 30)] * 3
    blobs = [None if f.blob is None else bytes(f.blob) for f in frames]  # what the file keeps (service.pattern_chunks)
    assert blobs == [msgs[1][2], msgs[2][2], msgs[3][2], None, msgs[5][2]]
    assert all(f.received_at is not None and abs(f.received_at - time.perf_counter()) < 60 for f in frames)  # perf_counter's clock
    assert decoder.errors_total == 0


def test_what_fails_a_check_gets_the_python_decoders_error(pair):
    """A stale md5, a wrong size, a lying block length, a 19-digit frame number: raw to Python, which names the fault."""
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    good = [image_parts(1, i, image, "bs16-lz4<", 1, 2, 3) for i in range(4)]
    flipped = bytearray(good[0][2])
    flipped[-1] ^= 1
    lying = bytearray(good[2][2])
    lying[12:16] = (0xFFFFFFFF).to_bytes(4, "big")
    lying_parts = image_parts(1, 2, image, "bs16-lz4<", 1, 2, 3, blob=bytes(lying))
    huge = [good[3][0].replace(b'"frame":3', b'"frame":1234567890123456789'), *good[3][1:]]
    msgs = [
        series_start_parts(1, {"ntrigger": 4, "nimages": 1, "trigger_mode": "exte"}),
        [good[0][0], good[0][1], bytes(flipped), good[0][3]],
        [good[1][0], good[1][1], good[1][2] + b"x", good[1][3]],
        lying_parts,
        huge,
        series_end_parts(1),
    ]
    events, decoder, native_frames = _through_loop(pair, msgs, NativeReceiveLoop(64))
    assert native_frames == 0
    expected, reference = _python(msgs)
    assert _tuples(events) == _tuples(expected)
    kinds = [str(e.kind) for e in events if isinstance(e, StreamError)]
    assert {"corrupt", "truncated", "malformed", "unexpected"} <= set(kinds)  # the 19-digit frame: outside the series
    assert decoder.error_counts == reference.error_counts


def test_a_message_of_many_parts_comes_whole(pair):
    parts = [b"p%d" % k for k in range(300)]
    push, pull = pair
    push.send_multipart(parts)
    push.send_multipart([b""])
    time.sleep(0.05)
    batch = NativeReceiveLoop(8).receive(pull)
    items = list(batch.items())
    assert [(kind, p) for kind, _, p in items] == [(RAW, parts), (RAW, [b""])]


def test_a_full_arena_sends_frames_the_python_way_and_grows(pair):
    image = np.ones((64, 64), np.uint16)
    msgs = [series_start_parts(1, CONFIG), *[image_parts(1, i, image, "bs16-lz4<", 1, 2, 3) for i in range(3)], series_end_parts(1)]
    loop = NativeReceiveLoop(16, arena_bytes=image.nbytes)  # room for one frame
    push, pull = pair
    for m in msgs:
        push.send_multipart(m)
    time.sleep(0.05)
    decoder = StreamDecoder()
    before = loop.arena_bytes
    batch = loop.take(pull)
    received, events = len(batch), decoder.feed_native(batch)
    assert received == 5 and [e.frame for e in events if isinstance(e, Frame)] == [0, 1, 2]
    assert loop.arena_bytes >= 16 * image.nbytes > before


def test_receiver_uses_the_loop_and_matches_the_python_receiver():
    """The same series through ``StreamReceiver`` with the loop and without: the same events, in order."""
    rng = np.random.default_rng(2)
    msgs = [
        series_start_parts(7, {"ntrigger": 40, "nimages": 1, "trigger_mode": "exte"}),
        *[image_parts(7, i, rng.poisson(1.0, (64, 64)).astype(np.uint16), "bs16-lz4<", i, i + 1, 1) for i in range(40)],
        series_end_parts(7),
    ]
    got = {}
    for native in (True, False):
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        port = push.bind_to_random_port("tcp://127.0.0.1")
        events: list = []
        receiver = StreamReceiver([f"tcp://127.0.0.1:{port}"], on_events=lambda ep, evs, out=events: out.extend(evs), native=native)
        with receiver:
            assert (receiver.native_loop is not None) is native
            deadline = time.monotonic() + 10
            while not receiver.connected and time.monotonic() < deadline:
                time.sleep(0.01)
            for m in msgs:
                push.send_multipart(m)
            while len(events) < len(msgs) and time.monotonic() < deadline:
                time.sleep(0.01)
        ctx.destroy(linger=0)
        got[native] = _tuples(events)
    assert got[True] == got[False] and len(got[True]) == len(msgs)


def test_unavailable_loop_falls_back_with_the_reason(monkeypatch, tmp_path):
    """No compiler: ``build`` says so; a receiver that did not insist uses the Python path and keeps the reason."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(build.ENV_CACHE, str(tmp_path / "cache"))
    with pytest.raises(build.NativeUnavailable, match="compil"):
        build.build()
    monkeypatch.setattr("detector_stream.native.loop.load_library", lambda: (_ for _ in ()).throw(build.NativeUnavailable("no compiler here")))
    assert choose_loop(None, False, 8) == (None, "no compiler here")
    with pytest.raises(build.NativeUnavailable):
        choose_loop(True, False, 8)
    assert choose_loop(False, False, 8)[0] is None
    assert choose_loop(None, True, 8)[0] is None  # raw forwarding keeps the Python path


def test_an_edit_to_any_source_file_names_a_new_library(monkeypatch, tmp_path):
    """The md5 is its own file (md5.c, md5.h): an edit to either, not only to recv_batch.c, must rebuild the library."""
    copies = []
    for source in build.SOURCES:
        copy = tmp_path / source.name
        copy.write_bytes(source.read_bytes())
        copies.append(copy)
    monkeypatch.setattr(build, "SOURCES", tuple(copies))
    seen = {build.library_path()}
    for copy in copies:
        copy.write_bytes(copy.read_bytes() + b"\n")
        seen.add(build.library_path())
    assert len(seen) == 1 + len(copies)
    assert {c.name for c in copies} >= {"recv_batch.c", "md5.c", "md5.h"}


def test_switch_off_by_environment(monkeypatch):
    monkeypatch.setenv(build.ENV_SWITCH, "0")
    assert not build.enabled()
    loop, why = choose_loop(None, False, 8)
    assert loop is None and build.ENV_SWITCH in why
    assert choose_loop(True, False, 8)[0] is not None  # asked for explicitly: the switch is for the default
    monkeypatch.setenv(build.ENV_SWITCH, "1")
    assert build.enabled() and choose_loop(None, False, 8)[0] is not None


@pytest.mark.parametrize("switch", ["1", "0"])
def test_readiness_says_which_receive_loop_drains_the_detectors(tmp_path, pusher, monkeypatch, switch):
    from fastapi.testclient import TestClient
    from service_testing import KEY, RecordingBackend, wait_until

    from service.app import create_app
    from service.settings import ServiceSettings

    monkeypatch.setenv(build.ENV_SWITCH, switch)
    settings = ServiceSettings(storage=tmp_path / "s", api_keys=[KEY], detectors=[pusher.endpoint])
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        body = wait_until(lambda: (r := c.get("/readyz")).json()["detail"]["receive_loop"] != "not started" and r, what="ingest").json()
        metrics = c.get("/metrics").text
    loop = body["detail"]["receive_loop"]
    assert loop == "compiled" if switch == "1" else loop.startswith("python: turned off")
    assert f"ptychoscan_ingest_compiled_receive_loop {1.0 if switch == '1' else 0.0}" in metrics


def _sim_messages(monkeypatch, compiled: bool, frame_time: float, faults=None) -> tuple[list[list[bytes]], bool]:
    """Every message of one 40-frame series of a simulated detector, and whether its compiled batch sender was used."""
    from sim_microscope.detector import SimDetector
    from sim_microscope.frame_source import SyntheticSource

    monkeypatch.setattr("sim_microscope.detector.time.time_ns", lambda: 1_000_000)  # the dconfig times: equal in both runs
    det = SimDetector(SyntheticSource(32), port=0, noise="none")
    if not compiled:
        det._sender = False  # as where the compiled loop is unavailable
    det.config.update(nimages=40, ntrigger=1, trigger_mode="ints", frame_time=frame_time)
    if faults is not None:
        det.set_faults(faults)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(det.endpoint)
    try:
        time.sleep(0.2)
        det.arm()
        det.prepare()
        det.trigger()
        det.disarm()
        out = []
        while pull.poll(2000):
            out.append(pull.recv_multipart())
            if out[-1][0].startswith(b'{"htype":"dseries_end'):
                break
        return out, det._sender not in (None, False)
    finally:
        det.close()
        ctx.destroy(linger=0)


def test_the_simulated_detector_sends_unpaced_series_in_compiled_batches_byte_for_byte(monkeypatch):
    """Frame time 0 and no faults: the compiled batch sender; the same bytes as one Python send per frame."""
    fast, used = _sim_messages(monkeypatch, True, 0.0)
    slow, _ = _sim_messages(monkeypatch, False, 0.0)
    assert used and len(fast) == 42 and fast == slow
    paced, used_paced = _sim_messages(monkeypatch, True, 0.0005)  # a frame time: paced one by one, as before
    assert not used_paced and len(paced) == 42


def test_faults_keep_the_simulated_detector_on_its_per_frame_path(monkeypatch):
    from sim_microscope.detector import FaultPlan

    messages, used = _sim_messages(monkeypatch, True, 0.0, FaultPlan(drop_frames=[3]))
    assert not used and len(messages) == 41


@pytest.mark.parametrize(
    "order",
    [[0, 1, 2, 3, 4], [0, 1, 3, 4, 5], [0, 1, 2, 1, 2], [2, 3, 4], [3, 4, 5, 6]],
    ids=["whole", "gap-then-past-the-end", "resent", "late-start", "past-the-end"],
)
@pytest.mark.parametrize("runs", [False, True], ids=["frames", "frame-runs"])
def test_runs_of_frames_get_the_checks_of_single_frames(pair, order, runs):
    """Consecutive frames decoded back to back go through the decoder in one step only when no check can fail (``runs``: and
    then come as one ``FrameRun``)."""
    rng = np.random.default_rng(3)
    images = {i: rng.poisson(1.0, (64, 64)).astype(np.uint16) for i in set(order)}
    msgs = [series_start_parts(1, {"ntrigger": 5, "nimages": 1, "trigger_mode": "exte"})]
    msgs += [image_parts(1, i, images[i], "bs16-lz4<", i, i, 0) for i in order]
    msgs.append(series_end_parts(1))
    events, decoder, native_frames = _through_loop(pair, msgs, NativeReceiveLoop(64), runs)
    expected, reference = _python(msgs)
    assert native_frames == len(order)
    assert _tuples(as_frames(events)) == _tuples(expected)
    assert decoder.error_counts == reference.error_counts
    frame_runs = [e for e in events if isinstance(e, FrameRun)]
    # the loop's runs are the frames back to back: one of them that a check could fail (a gap before it, a frame past the end, a
    # late start, a resent frame) goes frame by frame
    passing = {(0, 1, 2, 3, 4): [[0, 1, 2, 3, 4]], (0, 1, 3, 4, 5): [[0, 1]], (0, 1, 2, 1, 2): [[0, 1, 2]]}.get(tuple(order), [])
    assert [list(r.frame_numbers) for r in frame_runs] == (passing if runs else [])


def test_kept_frames_hold_their_own_bytes_not_the_arena(pair):
    """Regression: frames were views into the whole per-drain arena (4 MiB to 256 MiB each), so every kept frame pinned it. A
    drain this small is still copied out (``VIEW_SHARE``); a busy one's frames are views into a pooled arena
    (tests/test_native_arena_pool.py)."""
    image = np.ones((64, 64), np.uint16)
    msgs = [series_start_parts(1, CONFIG), *[image_parts(1, i, image, "bs16-lz4<", 1, 2, 3) for i in range(3)], series_end_parts(1)]
    loop = NativeReceiveLoop(64)
    events, _, native_frames = _through_loop(pair, msgs, loop)
    frames = [e for e in events if isinstance(e, Frame)]
    assert native_frames == 3 and len(frames) == 3
    for f in frames:
        assert f.image.base is not None and f.image.base.nbytes == 3 * image.nbytes < loop.arena_bytes


def test_a_message_claiming_a_huge_shape_does_not_grow_the_arena(pair):
    """Regression: the arena grew to 256 MiB for good on one message that only claimed an 8192 x 8192 frame."""
    image = np.ones((64, 64), np.uint16)
    good = image_parts(1, 0, image, "bs16-lz4<", 1, 2, 3)
    bogus = [good[0], good[1].replace(b"[64,64]", b"[8192,8192]"), *good[2:]]
    loop = NativeReceiveLoop(64)
    before = loop.arena_bytes
    events, decoder, _ = _through_loop(pair, [series_start_parts(1, CONFIG), bogus, series_end_parts(1)], loop)
    push, pull = pair
    push.send_multipart(bogus)
    time.sleep(0.05)
    decoder.feed_native(loop.take(pull))
    assert loop.arena_bytes == before and any(isinstance(e, StreamError) for e in events)


def test_the_record_tables_set_how_many_messages_a_drain_takes():
    """Regression: max_msgs was a writable attribute while the record tables kept their first size (a heap overflow in C)."""
    loop = NativeReceiveLoop(4)
    with pytest.raises(AttributeError):
        loop.max_msgs = 64
    assert loop.max_msgs == 4


def test_prepare_without_a_receiver_times_out_instead_of_hanging():
    from sim_microscope.detector import SimDetector
    from sim_microscope.frame_source import SyntheticSource
    from sim_microscope.scan_controller import DetectorError

    det = SimDetector(SyntheticSource(16), port=0, noise="none")
    try:
        det.config.update(nimages=4, ntrigger=1, trigger_mode="ints", frame_time=0.0)
        det.arm()  # its header waits for a receiver: there is none
        with pytest.raises(DetectorError, match="in time"):
            det.prepare(timeout=0.3)
    finally:
        det.close()


def test_the_batch_sender_refuses_a_message_without_parts(pair):
    from detector_stream.native.send import NativeSender

    with pytest.raises(ValueError, match="part"):
        NativeSender().send(pair[0], [[b"x"], []])


class _Target:
    """A ``ForwardTarget`` on a bound PUSH socket, with the tallies the loop reports."""

    def __init__(self, ctx: zmq.Context, hwm: int = 1000) -> None:
        self.socket = ctx.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.socket.bind_to_random_port('tcp://127.0.0.1')}"
        self.sent = self.dropped = 0

    def send(self, endpoint, messages):  # the Python loop's way: not used here
        raise AssertionError("the compiled loop forwards by itself")

    def counted(self, sent: int, dropped: int) -> None:
        self.sent += sent
        self.dropped += dropped


def test_the_compiled_loop_forwards_every_message_byte_for_byte(pair):
    """Decoded frames, raw messages, a six-part message and empty parts: all forwarded in order, unchanged, and counted."""
    ctx = zmq.Context()
    target = _Target(ctx)
    reader = ctx.socket(zmq.PULL)
    reader.connect(target.endpoint)
    try:
        time.sleep(0.2)
        image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
        msgs = [
            series_start_parts(1, CONFIG),
            image_parts(1, 0, image, "bs16-lz4<", 1, 2, 3),
            [b"\x00odd", b"", b"x" * 5000, b"tail", b"5", b"6"],
            image_parts(1, 1, image, "<", 1, 2, 3),
            image_parts(1, 2, image, "bs16-lz4<", 1, 2, 3),
            series_end_parts(1),
        ]
        loop = NativeReceiveLoop(64, forward=target)
        events, _, native_frames = _through_loop(pair, msgs, loop)
        loop.report_forwarded()
        assert native_frames == 2 and [e.frame for e in events if isinstance(e, Frame)] == [0, 1, 2]
        received = []
        while len(received) < len(msgs) and reader.poll(5000):
            received.append(reader.recv_multipart())
        assert received == msgs and (target.sent, target.dropped) == (len(msgs), 0)
    finally:
        ctx.destroy(linger=0)


def test_forwarding_with_nobody_reading_drops_and_counts_and_ingest_goes_on(pair):
    ctx = zmq.Context()
    target = _Target(ctx, hwm=1)
    try:
        image = np.ones((64, 64), np.uint16)
        msgs = [series_start_parts(1, CONFIG), *[image_parts(1, i, image, "bs16-lz4<", 1, 2, 3) for i in range(3)], series_end_parts(1)]
        loop = NativeReceiveLoop(64, forward=target)
        events, _, native_frames = _through_loop(pair, msgs, loop)
        loop.report_forwarded()
        assert native_frames == 3 and len([e for e in events if isinstance(e, Frame)]) == 3
        assert (target.sent, target.dropped) == (0, len(msgs))
    finally:
        ctx.destroy(linger=0)


def test_a_huge_raw_message_does_not_keep_its_memory_after_the_next_drain(pair):
    """Regression: the raw buffer only grew: one 40 MB message kept 40 MB (64 MiB of capacity) for the life of the process."""
    push, pull = pair
    loop = NativeReceiveLoop(8)
    big = [b"x" * (40 << 20)]
    push.send_multipart(big)
    time.sleep(0.2)
    batch = loop.receive(pull)
    assert [p for kind, _, p in batch.items()] == [big] and loop.lib.ps_raw_capacity(loop._ctx) >= 40 << 20
    push.send_multipart([b"small"])
    time.sleep(0.05)
    assert [p for kind, _, p in loop.receive(pull).items()] == [[b"small"]]
    assert loop.lib.ps_raw_capacity(loop._ctx) <= 16 << 20


def test_drains_of_big_blobs_keep_every_blob_and_the_buffer_is_given_back_after(pair):
    """Frames of ~1 MiB blobs, ~20 MiB a drain: each frame's blob comes whole; the buffer (kept while drains fill it, rather than
    freed and grown again at every drain) is given back once drains are small."""
    push, pull = pair
    loop = NativeReceiveLoop(32, arena_bytes=32 << 20)
    images = np.random.default_rng(3).integers(0, 2**31, (20, 512, 512), dtype=np.uint32)  # ~1 MiB blobs: ~20 MiB a drain
    capacities = []
    for _ in range(3):
        for i, im in enumerate(images):
            push.send_multipart(image_parts(1, i, im, "bs32-lz4<", 0, 0, 0))
        time.sleep(0.3)
        got = loop.receive(pull)
        sent = [image_parts(1, i, im, "bs32-lz4<", 0, 0, 0)[2] for i, im in enumerate(images[:2])]
        assert int((got.records[:, 0] == IMAGE).sum()) == 20 and [bytes(b) for b in next(got.items())[2][4][:2]] == sent  # one run
        capacities.append(loop.lib.ps_blobs_capacity(loop._ctx))
    assert capacities[0] >= 20 << 20 and capacities[1] == capacities[0] == capacities[2]
    push.send_multipart(image_parts(1, 0, images[0][:64, :64].copy(), "bs32-lz4<", 0, 0, 0))
    time.sleep(0.05)
    loop.receive(pull)
    push.send_multipart(image_parts(1, 1, images[0][:64, :64].copy(), "bs32-lz4<", 0, 0, 0))
    time.sleep(0.05)
    loop.receive(pull)
    assert loop.lib.ps_blobs_capacity(loop._ctx) <= 16 << 20


def test_a_loop_for_a_consumer_that_keeps_no_blobs_copies_none(pair):
    """Session files are uncompressed by default: the loop then copies no blob (~0.2 us a frame less on the decode thread)."""
    images = [np.random.default_rng(5).poisson(2.0, (64, 64)).astype(np.uint16) for _ in range(3)]
    msgs = [series_start_parts(1, CONFIG), *[image_parts(1, i, im, "bs16-lz4<", 1, 2, 3) for i, im in enumerate(images)], series_end_parts(1)]
    kept, _, _ = _through_loop(pair, msgs, NativeReceiveLoop(64))
    events, _, native_frames = _through_loop(pair, msgs, NativeReceiveLoop(64, keep_blobs=False))
    frames = [e for e in events if isinstance(e, Frame)]
    assert native_frames == 3 and [f.blob for f in frames] == [None] * 3
    assert [bytes(f.blob) for f in kept if isinstance(f, Frame)] == [m[2] for m in msgs[1:4]]
    for f, im in zip(frames, images, strict=True):
        np.testing.assert_array_equal(f.image, im)
