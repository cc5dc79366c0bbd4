"""The compiled loop's own block-by-block bitshuffle-LZ4 decoding (recv_batch.c ``decode_blob``) equals bitshuffle's.

The loop decompresses each 8192-byte block with bitshuffle's ``LZ4_decompress_safe`` and
bit untranspose (no OpenMP region, no allocation per frame): whole blocks, a last partial
block of the remainder's whole multiple of 8 pixels, and the last ``pixels % 8`` pixels
copied as they are. These tests compare its frames with ``bitshuffle.decompress_lz4`` on
shapes that are and are not whole blocks, and check that a blob whose block does not
decompress to exactly its size still goes the Python way (which names the fault). 16-bit
pixels take the loop's own AVX2 eight-element step (shuffle.c) where the CPU has AVX2:
it is compared with bitshuffle's SSE step directly, and the frames of both with bitshuffle's.
"""

from __future__ import annotations

import ctypes
import struct
import time

import bitshuffle
import bitshuffle.ext
import numpy as np
import pytest
from native_testing import inproc_pair, require_native_loop

from detector_stream.decoder import StreamDecoder
from detector_stream.events import Frame, StreamError
from detector_stream.messages import image_parts, series_end_parts, series_start_parts
from detector_stream.native.batch import IMAGE, RAW
from detector_stream.native.loop import NativeReceiveLoop

require_native_loop()

SHAPES = [
    ((64, 64), np.uint16),  # one whole block
    ((1, 1), np.uint8),  # no block at all: one raw pixel
    ((3, 5), np.uint16),  # a partial block of 8 and a tail of 7
    ((7, 7), np.uint32),  # 48 + 1
    ((37, 53), np.uint8),  # 1961 pixels: a partial block of 1960, a tail of 1
    ((129, 67), np.uint16),  # 8643 pixels: two whole blocks, a partial block of 448, a tail of 3
    ((100, 100), np.uint32),  # 10000 pixels: four whole blocks and a partial one of 1808
    ((128, 256), np.uint8),  # four whole blocks of 8192 one-byte pixels
    ((1, 8), np.uint16),  # one group of 8: a single 16-byte piece
    ((3, 8), np.uint16),  # three groups: an odd number of 16-byte pieces
    ((65, 63), np.uint16),  # 4095 pixels: a partial block of 4088, a tail of 7
    ((100, 100), np.uint16),  # two whole blocks of 4096 and a partial one of 1808
]
MODES = {"avx2-step": (True, True), "bitshuffles-steps": (True, False), "bshuf_untrans_bit_elem": (False, False)}
"""(untrans_steps, avx2_shuffle) of the loops compared: the loop's own AVX2 step for 16-bit pixels, bitshuffle's two
steps, bitshuffle's whole untranspose."""
BITSHUFFLE = ctypes.CDLL(bitshuffle.ext.__file__)
STEPS_EXPORTED = all(hasattr(BITSHUFFLE, f"bshuf_{step}_SSE") for step in ("trans_byte_bitrow", "shuffle_bit_eightelem"))
"""This bitshuffle exports its untranspose steps (0.5 does): without them the loop calls ``bshuf_untrans_bit_elem`` whole."""


@pytest.fixture(scope="module")
def pair():
    with inproc_pair("native-decode-test") as sockets:
        yield sockets


def _drain(pair, messages: list[list[bytes]], loop: NativeReceiveLoop) -> tuple[list, list[int]]:
    """Send ``messages`` and drain them all with ``loop``: (events, the record kind of each message)."""
    push, pull = pair
    for m in messages:
        push.send_multipart(m)
    decoder, events, kinds = StreamDecoder(), [], []
    deadline = time.monotonic() + 10
    while len(kinds) < len(messages) and time.monotonic() < deadline:
        batch = loop.receive(pull)
        kinds += batch.records[:, 0].tolist()
        events += decoder.feed_native(batch)
    assert len(kinds) == len(messages)
    return events, kinds


def _image(shape: tuple[int, int], dtype, seed: int) -> np.ndarray:
    """Counts of every size the type holds (its largest value too), so that every bit plane is exercised."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    image = rng.integers(0, top, shape, dtype=dtype, endpoint=True)
    image.flat[:: max(1, image.size // 5)] = top
    return image


def _bitshuffles(blob: bytes, shape: tuple[int, int], dtype) -> np.ndarray:
    """bitshuffle's own decompression of a DCU blob (12-byte header, 8192-byte blocks)."""
    body = np.frombuffer(blob, np.uint8, offset=12)
    return bitshuffle.decompress_lz4(body, shape, np.dtype(dtype), 8192 // np.dtype(dtype).itemsize)


def _loop(mode: str) -> NativeReceiveLoop:
    untrans_steps, avx2 = MODES[mode]
    loop = NativeReceiveLoop(64, untrans_steps=untrans_steps, avx2_shuffle=avx2)
    assert loop.uses_avx2_shuffle(2) == (avx2 and STEPS_EXPORTED and bool(loop.lib.ps_shuffle_avx2_usable()))  # the path named is the one taken
    assert not loop.uses_avx2_shuffle(1) and not loop.uses_avx2_shuffle(4)  # bitshuffle's steps (its AVX one for 4 bytes)
    return loop


def _check_decoded(pair, shapes: list[tuple[tuple[int, int], type]], mode: str, seed: int = 0) -> None:
    """Send a frame of each shape and dtype and check the loop decodes each in C to the image sent and bitshuffle's decoding."""
    msgs, images = [series_start_parts(1, {"ntrigger": len(shapes), "nimages": 1, "trigger_mode": "exte"})], []
    for i, (shape, dtype) in enumerate(shapes):
        images.append(_image(shape, dtype, seed + i))
        msgs.append(image_parts(1, i, images[-1], f"bs{8 * np.dtype(dtype).itemsize}-lz4<", 1, 2, 3))
    msgs.append(series_end_parts(1))
    events, kinds = _drain(pair, msgs, _loop(mode))
    assert kinds[1:-1] == [IMAGE] * len(shapes)  # every frame decoded in C, none the Python way
    frames = [e for e in events if isinstance(e, Frame)]
    assert len(frames) == len(shapes) and not [e for e in events if isinstance(e, StreamError)]
    for frame, image, msg in zip(frames, images, msgs[1:-1], strict=True):
        assert frame.image.dtype == image.dtype and frame.image.shape == image.shape
        np.testing.assert_array_equal(frame.image, _bitshuffles(msg[2], image.shape, image.dtype))
        np.testing.assert_array_equal(frame.image, image)


@pytest.mark.parametrize("mode", list(MODES))
def test_decoded_frames_are_bitshuffles_own_for_whole_and_partial_blocks(pair, mode):
    _check_decoded(pair, SHAPES, mode)


@pytest.mark.parametrize("mode", list(MODES))
def test_decoded_frames_of_random_shapes_are_bitshuffles_own(pair, mode):
    """Random shapes of each pixel size (up to three blocks of 16-bit pixels and more): random data, any remainders."""
    rng = np.random.default_rng(19)
    shapes = [((int(rng.integers(1, 160)), int(rng.integers(1, 160))), dtype) for dtype in (np.uint8, np.uint16, np.uint32) for _ in range(12)]
    _check_decoded(pair, shapes, mode, seed=100)


def _untrans_function(lib: ctypes.CDLL, name: str):
    f = getattr(lib, name)
    f.restype, f.argtypes = ctypes.c_int64, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return f


def test_the_avx2_eight_element_step_is_bitshuffles_sse_step_byte_for_byte():
    """shuffle.c's step against bitshuffle's own ``bshuf_shuffle_bit_eightelem_SSE`` on random bytes: every even element
    size, groups of 8 of any count (an odd number of 16-byte pieces too); odd sizes and partial groups refused."""
    lib = NativeReceiveLoop(8).lib
    if not lib.ps_shuffle_avx2_usable():
        pytest.skip("no AVX2 on this CPU (or not x86-64): bitshuffle's step is used")
    if not STEPS_EXPORTED:
        pytest.skip("this bitshuffle does not export its SSE step to compare with (nor does the loop use the AVX2 one)")
    sse = _untrans_function(BITSHUFFLE, "bshuf_shuffle_bit_eightelem_SSE")
    rng = np.random.default_rng(5)
    for elem_size in (2, 4, 6, 8, 10, 12, 16, 24):
        for size in (8, 16, 24, 40, 64, 1000, 4088, 8192 // elem_size // 8 * 8, 4096):
            data = rng.integers(0, 256, size * elem_size, dtype=np.uint8)
            want, got = np.zeros_like(data), np.full_like(data, 0xA5)
            assert sse(data.ctypes.data, want.ctypes.data, size, elem_size) == size * elem_size
            assert lib.ps_shuffle_eightelem_avx2(data.ctypes.data, got.ctypes.data, size, elem_size) == size * elem_size
            np.testing.assert_array_equal(got, want, err_msg=f"elem_size {elem_size}, {size} elements")
    out = np.zeros(64, np.uint8)
    for size, elem_size in ((8, 1), (8, 3), (12, 2), (-8, 2)):
        assert lib.ps_shuffle_eightelem_avx2(out.ctypes.data, out.ctypes.data, size, elem_size) == -1


def _blocks(blob: bytes) -> list[bytes]:
    """The compressed payloads of a DCU blob's blocks, in order (its raw tail left out)."""
    out, pos = [], 12
    while pos + 4 <= len(blob):
        (length,) = struct.unpack_from(">I", blob, pos)
        if pos + 4 + length > len(blob):
            break
        out.append(blob[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return out


def _reframed(blob: bytes, blocks: list[bytes], tail: bytes) -> bytes:
    return blob[:12] + b"".join(struct.pack(">I", len(b)) + b for b in blocks) + tail


@pytest.mark.parametrize("mode", list(MODES))
def test_a_block_that_does_not_decompress_to_its_size_goes_the_python_way(pair, mode):
    """Framing that passes every length check but whose LZ4 data is wrong: raw to Python (its error), never a frame."""
    image = _image((129, 67), np.uint16, 7)  # blocks of 8192, 8192 and 896 bytes, a tail of 3 pixels
    blob = image_parts(1, 0, image, "bs16-lz4<", 1, 2, 3)[2]
    blocks, tail = _blocks(blob), blob[-6:]
    assert len(blocks) == 3
    short = _reframed(blob, [blocks[2], blocks[1], blocks[2]], tail)  # block 0 decompresses to 896 bytes, not 8192
    long = _reframed(blob, [blocks[0], blocks[1], blocks[0]], tail)  # the partial block decompresses to 8192, not 896
    rng = np.random.default_rng(3)
    garbage = _reframed(blob, [blocks[0], rng.integers(0, 256, 300, dtype=np.uint8).tobytes(), blocks[2]], tail)
    msgs = [series_start_parts(1, {"ntrigger": 4, "nimages": 1, "trigger_mode": "exte"})]
    msgs += [image_parts(1, i, image, "bs16-lz4<", 1, 2, 3, blob=b) for i, b in enumerate([short, long, garbage])]
    msgs += [image_parts(1, 3, image, "bs16-lz4<", 1, 2, 3, blob=blob), series_end_parts(1)]
    events, kinds = _drain(pair, msgs, _loop(mode))
    assert kinds[1:5] == [RAW, RAW, RAW, IMAGE]
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.frame for f in frames] == [3]
    np.testing.assert_array_equal(frames[0].image, image)
    errors = [str(e.kind) for e in events if isinstance(e, StreamError)]
    assert errors == ["malformed"] * 3 + ["incomplete_series"], errors  # the Python decoder's word on each
