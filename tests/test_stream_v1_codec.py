"""Stream v1 codec and decoder: round trips, DCU framing, header_detail, faults reported as StreamError."""

from __future__ import annotations

import hashlib
import json
import struct

import bitshuffle
import numpy as np
import pytest

from detector_stream.codec import ENCODINGS, decode_frame, decode_frames, encode_frame, encode_frames
from detector_stream.decoder import StreamDecoder
from detector_stream.errors import CodecError
from detector_stream.events import Frame, SeriesEnd, SeriesStart, StreamError
from detector_stream.messages import expected_frames, image_parts, series_end_parts, series_start_parts

ALL_PAIRS = [
    (dt, enc)
    for dt in ("uint8", "uint16", "uint32")
    for enc in ENCODINGS
    if not enc.startswith("bs") or enc == f"bs{8 * np.dtype(dt).itemsize}-lz4<"
]


def _image(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    top = min(np.iinfo(dtype).max, 70000)
    a = rng.poisson(3, size=shape).astype(np.int64)
    a.flat[:: max(1, a.size // 7)] = top  # exercise high bits
    return a.astype(dtype)


@pytest.mark.parametrize(("dtype", "encoding"), ALL_PAIRS)
@pytest.mark.parametrize("shape", [(64, 64), (7, 13), (100, 96)])
def test_round_trip_every_encoding_and_dtype(dtype, encoding, shape):
    image = _image(shape, dtype)
    blob = encode_frame(image, encoding)
    out = decode_frame(blob, shape, dtype, encoding)
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    np.testing.assert_array_equal(out, image)
    stack = np.stack([_image(shape, dtype, seed=s) for s in range(4)])
    blobs = encode_frames(stack, encoding)
    assert blobs == [encode_frame(im, encoding) for im in stack]
    np.testing.assert_array_equal(decode_frames(blobs, shape, dtype, encoding), stack)


def test_bitshuffle_framing_matches_dcu_header():
    image = _image((64, 64), "uint16")
    blob = encode_frame(image, "bs16-lz4<")
    total, block = struct.unpack(">QI", blob[:12])
    assert (total, block) == (64 * 64 * 2, 8192)
    (first_block,) = struct.unpack(">I", blob[12:16])
    assert 16 + first_block == len(blob)  # exactly one 8192-byte block for 64x64 uint16
    # Independent decode of the body with bitshuffle's own framing.
    body = np.frombuffer(blob[12:], np.uint8)
    np.testing.assert_array_equal(bitshuffle.decompress_lz4(body, (64, 64), np.dtype("<u2"), 4096), image)


def test_zeroed_bitshuffle_header_is_tolerated():
    image = _image((64, 64), "uint32")
    blob = b"\0" * 12 + encode_frame(image, "bs32-lz4<")[12:]
    np.testing.assert_array_equal(decode_frame(blob, (64, 64), "uint32", "bs32-lz4<"), image)
    np.testing.assert_array_equal(decode_frames([blob, blob], (64, 64), "uint32", "bs32-lz4<")[1], image)


def test_lz4_has_no_size_prefix_and_raw_is_little_endian():
    import lz4.block

    image = _image((8, 8), "uint16")
    assert lz4.block.decompress(encode_frame(image, "lz4<"), uncompressed_size=128) == image.astype("<u2").tobytes()
    assert encode_frame(image, "<") == image.astype("<u2").tobytes()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: encode_frame(np.zeros((4, 4), np.float32), "<"), "unsupported pixel type"),
        (lambda: encode_frame(np.zeros((4, 4), np.uint16), "zstd"), "unknown encoding"),
        (lambda: encode_frame(np.zeros((4, 4), np.uint16), "bs32-lz4<"), "needs 32-bit"),
        (lambda: encode_frame(np.zeros(4, np.uint16), "<"), "must be 2-D"),
        (lambda: decode_frame(b"\0" * 7, (2, 2), "uint16", "<"), "raw frame has 7 bytes"),
        (lambda: decode_frame(b"\0" * 5, (2, 2), "uint16", "bs16-lz4<"), "shorter than its 12-byte header"),
        (lambda: decode_frame(struct.pack(">QI", 9, 0), (2, 2), "uint16", "bs16-lz4<"), "header says 9 bytes"),
        (lambda: decode_frame(b"\xff" * 30, (8, 8), "uint16", "lz4<"), "cannot decode"),
    ],
)
def test_bad_input_gives_one_line_codec_errors(call, match):
    with pytest.raises(CodecError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_expected_frames_per_trigger_mode():
    assert expected_frames({"ntrigger": 3, "nimages": 5, "trigger_mode": "ints"}) == 15
    assert expected_frames({"ntrigger": 3, "nimages": 5, "trigger_mode": "exts"}) == 15
    assert expected_frames({"ntrigger": 3, "nimages": 5, "trigger_mode": "exte"}) == 3
    assert expected_frames({"ntrigger": 3, "nimages": 5, "trigger_mode": "inte"}) == 3
    assert expected_frames({}) is None


CONFIG = {
    "ntrigger": 1,
    "nimages": 3,
    "trigger_mode": "ints",
    "x_pixels_in_detector": 13,
    "y_pixels_in_detector": 7,
    "bit_depth_image": 16,
}


def _series(series=5, n=3, detail="basic", encoding="bs16-lz4<", appendix=None):
    images = [_image((7, 13), "uint16", seed=i) for i in range(n)]
    msgs = [series_start_parts(series, {**CONFIG, "nimages": n}, detail)]
    msgs += [image_parts(series, i, im, encoding, 10 * i, 10 * i + 5, 5, appendix) for i, im in enumerate(images)]
    msgs.append(series_end_parts(series))
    return images, msgs


@pytest.mark.parametrize("detail", ["none", "basic", "all"])
def test_decoder_series_with_every_header_detail_and_appendix(detail):
    images, msgs = _series(detail=detail, appendix=b"appendix \xff\x00 bytes")
    if detail == "all":
        assert len(msgs[0]) == 8 and json.loads(msgs[0][2])["htype"] == "dflatfield-1.0"
    events = StreamDecoder().feed_many(msgs)
    assert [type(e) for e in events] == [SeriesStart, Frame, Frame, Frame, SeriesEnd]
    assert events[0].header_detail == detail
    assert events[0].config == ({} if detail == "none" else {**CONFIG, "nimages": 3})
    for ev, im in zip(events[1:4], images, strict=True):
        np.testing.assert_array_equal(ev.image, im)
    assert (events[2].start_time_ns, events[2].stop_time_ns, events[2].real_time_ns) == (10, 15, 5)


def test_decoder_one_message_at_a_time_and_header_split_over_messages():
    _images, msgs = _series()
    split = [[msgs[0][0]], [msgs[0][1]], *msgs[1:]]  # libertem-dectris's sim sends the config on its own
    decoder = StreamDecoder()
    events = [e for m in split for e in decoder.feed(m)]
    assert [type(e) for e in events] == [SeriesStart, Frame, Frame, Frame, SeriesEnd]
    assert events[0].config["nimages"] == 3


def test_empty_hash_is_accepted_and_bad_hash_reported():
    _images, msgs = _series()
    head = json.loads(msgs[1][0])
    msgs[1][0] = json.dumps({**head, "hash": ""}).encode()
    msgs[2][2] = bytes([msgs[2][2][0] ^ 0xFF]) + msgs[2][2][1:]
    events = StreamDecoder().feed_many(msgs)
    errors = [e for e in events if isinstance(e, StreamError)]
    assert [e.frame for e in events if isinstance(e, Frame)] == [0, 2]
    assert any("md5" in e.reason and e.frame == 1 for e in errors)
    assert any("after 2 of 3 frames" in e.reason for e in errors)


def test_missing_duplicated_out_of_order_truncated_reported():
    _images, msgs = _series(n=5)
    s, f0, f1, f2, f3, f4, end = msgs
    trunc = list(f4)
    trunc[2] = trunc[2][: len(trunc[2]) // 2]
    events = StreamDecoder().feed_many([s, f0, f2, f2, f1, trunc, f3[:2], end])
    reasons = [e.reason for e in events if isinstance(e, StreamError)]
    assert any("missing frame(s) 1..1" in r for r in reasons)
    assert any("duplicated frame 2" in r for r in reasons)
    assert any("frame 1 arrived out of order" in r for r in reasons)
    assert any("truncated frame" in r for r in reasons)
    assert any("truncated image message" in r for r in reasons)
    assert [e.frame for e in events if isinstance(e, Frame)] == [0, 2, 1]
    assert isinstance(events[-1], SeriesEnd)


def test_series_without_end_and_garbage_never_raise():
    _, first = _series(series=1)
    _, second = _series(series=2)
    decoder = StreamDecoder()
    events = decoder.feed_many([*first[:2], *second, [b"not json"], [], [b'{"htype":"weird"}'], [b"[1]"]])
    reasons = [e.reason for e in events if isinstance(e, StreamError)]
    assert any("series 1 ended without dseries_end after 1 frame(s)" in r for r in reasons)
    assert sum(isinstance(e, Frame) for e in events) == 4
    assert any("unknown message htype 'weird'" in r for r in reasons)
    assert any("empty message" in r for r in reasons)
    # A corrupt body with a matching hash: caught by the decoder, not raised.
    bad = b"\0" * 12 + b"\x00\x00\x00\x10" + b"\xff" * 16
    msg = image_parts(9, 0, np.zeros((64, 64), np.uint16), "bs16-lz4<", 0, 0, 0, blob=bad)
    events = StreamDecoder().feed_many([msg, [*msg[:1], msg[1], bad, msg[3]]])
    assert any("malformed frame" in e.reason for e in events if isinstance(e, StreamError))
    assert hashlib.md5(bad).hexdigest() == json.loads(msg[0])["hash"]


def test_lz4_frame_claiming_more_than_lz4_can_hold_is_refused_before_decompressing():
    blob = encode_frame(np.zeros((64, 64), np.uint32), "lz4<")
    np.testing.assert_array_equal(decode_frame(blob, (64, 64), "uint32", "lz4<"), 0)  # all zeros: the best ratio there is
    with pytest.raises(CodecError, match="cannot hold"):
        decode_frame(blob, (4096, 4096), "uint32", "lz4<")
    with pytest.raises(CodecError, match="is outside 1"):
        decode_frame(blob, (1 << 20, 1 << 20), "uint32", "lz4<")
