"""The decoder's fast image parse (DCU layout, no JSON) gives exactly the events of the JSON path, valid or mutated input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from stream_fuzz import Case, case_strategy

from detector_stream.codec import encode_frame
from detector_stream.decoder import StreamDecoder
from detector_stream.events import Frame, StreamError
from detector_stream.messages import image_parts, series_end_parts, series_start_parts

CI = settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG = {"ntrigger": 3, "nimages": 1, "trigger_mode": "exte"}


def _compact(part: bytes) -> bytes:
    """A JSON object part written as the DCU writes it (no spaces, keys in order), so that the fast parse may take it."""
    try:
        obj = json.loads(part)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return part
    return json.dumps(obj, separators=(",", ":")).encode() if isinstance(obj, dict) else part


def _as_tuple(event) -> tuple:
    fields = dataclasses.asdict(event) if not isinstance(event, Frame) else {**vars(event), "image": None}
    image = event.image if isinstance(event, Frame) else None
    if isinstance(fields.get("pixel_mask"), np.ndarray):  # a header-detail "all" mask: compared by its bytes
        fields["pixel_mask"] = (fields["pixel_mask"].shape, fields["pixel_mask"].tobytes())
    return type(event).__name__, fields, None if image is None else (image.shape, image.dtype.str, image.tobytes())


def _events_both_ways(messages: list[list[bytes]]) -> tuple[list, list]:
    fast, slow = StreamDecoder(fast=True), StreamDecoder(fast=False)
    a = [_as_tuple(e) for e in fast.feed_many(messages)]
    b = [_as_tuple(e) for e in slow.feed_many(messages)]
    assert fast.error_counts == slow.error_counts
    return a, b


@CI
@given(case_strategy())
def test_fast_parse_equals_json_parse_on_mutated_series(case: Case):
    messages = [[_compact(p) if k != 2 else p for k, p in enumerate(m)] for m in case.messages]
    a, b = _events_both_ways(messages)
    assert a == b


def test_the_fast_parse_takes_the_dcu_layout():
    """Frames in the DCU's layout go the fast way (no JSON decode), and decode to their images."""
    images = [np.full((64, 64), i, np.uint16) for i in range(3)]
    msgs = [series_start_parts(1, CONFIG), *[image_parts(1, i, im, "bs16-lz4<", 10, 20, 30) for i, im in enumerate(images)], series_end_parts(1)]
    decoder = StreamDecoder()
    calls = []
    decoder._image = lambda *a: calls.append(a)  # the JSON path's image handler: must not be reached
    events = decoder.feed_many(msgs)
    assert calls == []
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.frame for f in frames] == [0, 1, 2]
    for f, im in zip(frames, images, strict=True):
        np.testing.assert_array_equal(f.image, im)
        assert (f.start_time_ns, f.stop_time_ns, f.real_time_ns) == (10, 20, 30)


def test_what_the_fast_parse_does_not_take_goes_the_json_way():
    """Spaces, other key order, a 5th (appendix) part, negative or float numbers, an upper-case hash: the same events as JSON-only."""
    blob = encode_frame(np.ones((64, 64), np.uint16), "bs16-lz4<")
    good = image_parts(1, 0, np.ones((64, 64), np.uint16), "bs16-lz4<", 1, 2, 3, blob=blob)
    variants = [
        [json.dumps(json.loads(good[0])).encode(), *good[1:]],
        [good[0], b'{"htype":"dimage_d-1.0","type":"uint16","shape":[64,64],"encoding":"bs16-lz4<","size":%d}' % len(blob), *good[2:]],
        [*good, b"appendix"],
        [good[0], good[1], good[2], b'{"htype":"dconfig-1.0","start_time":-1,"stop_time":2,"real_time":3}'],
        [good[0], good[1], good[2], b'{"htype":"dconfig-1.0","start_time":1.5,"stop_time":2,"real_time":3}'],
        [good[0].replace(b'"hash":"', b'"hash":"X'), *good[1:]],
        [good[0].upper().replace(b"HTYPE", b"htype").replace(b"DIMAGE-1.0", b"dimage-1.0").replace(b"SERIES", b"series").replace(b"FRAME", b"frame").replace(b"HASH", b"hash"), *good[1:]],
        [good[0], good[1].replace(b"[64,64]", b"[64,065]"), *good[2:]],
    ]
    for parts in variants:
        msgs = [series_start_parts(1, CONFIG), parts, series_end_parts(1)]
        a, b = _events_both_ways(msgs)
        assert a == b, parts
    leading_zero = _events_both_ways([series_start_parts(1, CONFIG), variants[-1], series_end_parts(1)])[0]
    assert any(kind == StreamError.__name__ and "descriptor" in fields["reason"] for kind, fields, _ in leading_zero)


def test_the_fast_parse_checks_size_and_md5():
    """A flipped bit under a stale hash is ``corrupt``, a blob of the wrong size ``truncated``: on the fast path too."""
    image = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    good = image_parts(1, 0, image, "bs16-lz4<", 1, 2, 3)
    flipped = bytearray(good[2])
    flipped[-1] ^= 1
    second = image_parts(1, 1, image, "bs16-lz4<", 1, 2, 3)
    msgs = [series_start_parts(1, CONFIG), [good[0], good[1], bytes(flipped), good[3]], [second[0], second[1], second[2] + b"x", second[3]]]
    decoder = StreamDecoder()
    decoder._image = None  # the JSON path's image handler is not used: both go the fast way
    errors = [e for e in decoder.feed_many(msgs) if isinstance(e, StreamError)]
    assert [(str(e.kind), e.frame) for e in errors] == [("corrupt", 0), ("truncated", 1)]


def test_whole_block_check_agrees_with_check_blob():
    """``whole_block_bodies`` accepts only what ``check_blob`` accepts, with the same body; the rest is left to ``check_blob``."""
    import struct

    from detector_stream.bslz4 import HEADER, check_blob, whole_block_bodies
    from detector_stream.errors import CodecError

    image = (np.arange(64 * 128) % 977).astype(np.uint16).reshape(64, 128)  # two DCU blocks
    blob = encode_frame(image, "bs16-lz4<")
    (first,) = struct.unpack_from(">I", blob, 12)
    small_blocks = HEADER.pack(image.nbytes, 4096) + encode_frame(image, "bs16-lz4<")[12:]  # not re-encoded: block size lies
    cases = {
        "good": blob,
        "zero header": bytes(12) + blob[12:],
        "short": blob[:-1],
        "long": blob + b"\0",
        "header size wrong": HEADER.pack(image.nbytes + 2, 8192) + blob[12:],
        "block size 4096": small_blocks,
        "block length 0": blob[:12] + struct.pack(">I", 0) + blob[16:],
        "block length huge": blob[:12] + struct.pack(">I", 0xFFFFFFFF) + blob[16:],
        "block length off by one": blob[:12] + struct.pack(">I", first + 1) + blob[16:],
        "only header": blob[:12],
        "empty": b"",
    }
    quick = dict(zip(cases, whole_block_bodies(list(cases.values()), image.nbytes), strict=True))
    assert quick["good"] is not None and quick["zero header"] is not None
    for name, b in cases.items():
        try:
            slow = check_blob(b, image.size, np.dtype(np.uint16), "bs16-lz4<")
        except CodecError:
            assert quick[name] is None, name
            continue
        if quick[name] is not None:
            assert bytes(quick[name]) == bytes(slow.body) and slow.block == 4096, name  # 8192-byte blocks of uint16


def test_raw_frames_empty_hashes_and_header_detail_all_on_the_fast_path():
    """Raw ``<`` frames and empty hashes go the fast way and decode as on the JSON path; an ``all`` header goes the JSON way."""
    images = [np.full((16, 16), 7 + i, np.uint16) for i in range(2)]
    raw = image_parts(1, 0, images[0], "<", 1, 2, 3)
    no_hash = image_parts(1, 1, images[1], "bs16-lz4<", 1, 2, 3)
    no_hash[0] = no_hash[0].split(b',"hash"')[0] + b',"hash":""}'
    config = {**CONFIG, "x_pixels_in_detector": 16, "y_pixels_in_detector": 16, "ntrigger": 2}
    msgs = [series_start_parts(1, config, "all"), raw, no_hash, series_end_parts(1)]
    a, b = _events_both_ways(msgs)
    assert a == b
    decoder = StreamDecoder()
    decoder._image = None  # both image messages go the fast way
    events = decoder.feed_many(msgs)
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.frame for f in frames] == [0, 1] and not [e for e in events if isinstance(e, StreamError)]
    for f, im in zip(frames, images, strict=True):
        np.testing.assert_array_equal(f.image, im)
