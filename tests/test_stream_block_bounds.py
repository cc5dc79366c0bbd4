"""Regression: a bitshuffle block whose length field lies must cost only its own frame, never the process.

bitshuffle's C code trusts each block's u32 compressed length and jumps by it; a
frame with a valid md5 whose block claimed 2 GB, drained together with other frames,
segfaulted the service (every session died). The crafted frames are decoded in a child
process, so that a regression fails this test instead of killing pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.subprocess_env import REPO, repo_env

CHILD = r"""
import json, struct
import numpy as np
import sys
from detector_stream.codec import decode_frame, decode_frames, encode_frame
from detector_stream.decoder import StreamDecoder
from detector_stream.errors import CodecError
from detector_stream.events import Frame, StreamError
from detector_stream.messages import image_parts, series_end_parts, series_start_parts

def images(shape, dtype, n=3):
    rng = np.random.default_rng(7)
    return [rng.poisson(3, size=shape).astype(dtype) for _ in range(n)]

def set_u32(blob, at, value):
    b = bytearray(blob)
    struct.pack_into(">I", b, at, value)
    return bytes(b)

def cases():
    "name -> (shape, dtype, encoding, function(good blob) -> bad blob)"
    return {
        "block claims 2 GB": ((64, 64), "uint16", "bs16-lz4<", lambda b: set_u32(b, 12, 2_000_000_000)),
        "block claims 4 GB (negative as int32)": ((64, 64), "uint16", "bs16-lz4<", lambda b: set_u32(b, 12, 0xFFFFFFFF)),
        "block one byte past the end": ((64, 64), "uint16", "bs16-lz4<", lambda b: set_u32(b, 12, len(b) - 16 + 1)),
        "block of zero bytes": ((64, 64), "uint16", "bs16-lz4<", lambda b: set_u32(b, 12, 0)),
        "second block past the end": ((128, 64), "uint16", "bs16-lz4<",
                                      lambda b: set_u32(b, 16 + struct.unpack_from(">I", b, 12)[0], 1 << 30)),
        "blob cut inside a block": ((64, 64), "uint32", "bs32-lz4<", lambda b: b[: len(b) - 9]),
        "blob cut before a block length": ((256, 64), "uint8", "bs8-lz4<", lambda b: b[: 16 + struct.unpack_from(">I", b, 12)[0] + 2]),
        "raw tail missing": ((7, 13), "uint16", "bs16-lz4<", lambda b: b[:-2]),
        "bytes after the tail": ((7, 13), "uint16", "bs16-lz4<", lambda b: b + b"\0" * 4096),
        "header claims more than the shape": ((64, 64), "uint16", "bs16-lz4<", lambda b: struct.pack(">QI", 1 << 40, 8192) + b[12:]),
        "block size not 8 pixels": ((64, 64), "uint32", "bs32-lz4<", lambda b: struct.pack(">QI", 0, 8188) + b[12:]),
        "block size 4 GB": ((64, 64), "uint16", "bs16-lz4<", lambda b: struct.pack(">QI", 0, 0xFFFFFFF0) + b[12:]),
        "LZ4 garbage inside a well-framed block": ((64, 64), "uint16", "bs16-lz4<", lambda b: b[:16] + b"\xff" * (len(b) - 16)),
    }

out = {}
for name, (shape, dtype, encoding, spoil) in cases().items():
    ims = images(shape, dtype)
    blobs = [encode_frame(im, encoding) for im in ims]
    bad = spoil(blobs[1])
    res = {}
    try:
        decode_frame(bad, shape, dtype, encoding)
        res["single"] = "decoded"
    except CodecError as err:
        res["single"] = "CodecError"
        res["single_one_line"] = "\n" not in str(err)
    if sys.argv[1] == "batch":  # the API that keeps the good frames of a batch
        from detector_stream.codec import decode_batch
        batch = decode_batch([blobs[0], bad, blobs[2]], shape, dtype, encoding)
        res["batch_errors"] = sorted(batch.errors)
        res["batch_good"] = all(np.array_equal(batch.images[i], ims[i]) for i in (0, 2))
    try:
        decode_frames([blobs[0], bad, blobs[2]], shape, dtype, encoding)
        res["frames"] = "decoded"
    except CodecError:
        res["frames"] = "CodecError"
    msgs = [series_start_parts(4, {"ntrigger": 1, "nimages": 3, "trigger_mode": "ints"})]
    msgs += [image_parts(4, i, ims[i], encoding, 0, 1, 1, blob=[blobs[0], bad, blobs[2]][i]) for i in range(3)]
    msgs.append(series_end_parts(4))
    events = StreamDecoder().feed_many(msgs)
    frames = {e.frame: e for e in events if isinstance(e, Frame)}
    res["stream_frames"] = sorted(frames)
    res["stream_good"] = all(np.array_equal(frames[i].image, ims[i]) for i in frames)
    res["stream_errors"] = [(e.frame, e.reason) for e in events if isinstance(e, StreamError) and e.frame is not None]
    out[name] = res
print(json.dumps(out))
"""


def _decode_in_child(mode: str) -> dict:
    """Each crafted frame decoded alone, in decode_frames and in a drained stream (``batch``: and decode_batch)."""
    run = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"the decoding process died (exit {run.returncode}): {run.stderr[-2000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def outcomes() -> dict:
    return _decode_in_child("stream")


def test_no_crafted_block_kills_the_process_and_each_costs_only_its_frame(outcomes):
    assert len(outcomes) == 13
    for name, res in outcomes.items():
        assert res["single"] == "CodecError" and res["single_one_line"], name
        assert res["frames"] == "CodecError", name
        assert res["stream_frames"] == [0, 2] and res["stream_good"], name
        assert [(f, r.startswith("malformed frame: ")) for f, r in res["stream_errors"]] == [(1, True)], name


def test_block_lengths_are_named_in_the_error(outcomes):
    reason = outcomes["block claims 2 GB"]["stream_errors"][0][1]
    assert "block 0 claims 2000000000 compressed bytes" in reason
    assert "block 1 claims 1073741824" in outcomes["second block past the end"]["stream_errors"][0][1]
    assert "header says 1099511627776 bytes" in outcomes["header claims more than the shape"]["stream_errors"][0][1]


def test_decode_batch_keeps_the_good_frames_of_a_batch():
    for name, res in _decode_in_child("batch").items():
        assert res["batch_errors"] == [1] and res["batch_good"], name
