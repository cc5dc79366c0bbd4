"""Fuzzing the stream v1 decoder: Hypothesis strategies for valid series with mutations applied, and the oracle.

Shared by the bounded CI test (``tests/test_stream_fuzz.py``) and the long campaign
(``bench/fuzz_stream.py``). A case is one valid series (header, images, end) encoded
as a DCU sends it, then mutated: blob bit flips, truncation, extension, block length
and header fields set to huge or edge values (the md5 and size fixed up afterwards
most of the time, so that the blob reaches the codec), JSON fields given wrong types
or values, parts replaced by garbage, empty or non-object JSON, parts and messages
dropped, duplicated, swapped or inserted.

The oracle (``check_case``): decoding never raises; every event is a ``SeriesStart``,
``Frame``, ``SeriesEnd`` or ``StreamError`` with a ``StreamErrorKind``; a frame whose
message was not touched decodes to exactly its image; and where only blobs were
mutated (hash and size fixed), every other frame decodes exactly and each mutated one
either decodes to an image of its shape and type or is one ``malformed`` error. Each
mutated blob is also decoded alone: an array of the right shape and type, or CodecError.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from detector_stream.codec import DTYPES, ENCODINGS, decode_frame
from detector_stream.decoder import StreamDecoder
from detector_stream.errors import CodecError, StreamErrorKind
from detector_stream.events import Frame, SeriesEnd, SeriesStart, StreamError
from detector_stream.messages import HEADER_DETAILS, image_parts, series_end_parts, series_start_parts

INTERESTING_U32 = (0, 1, 3, 4, 5, 255, 8191, 8192, 8193, 8240, 8241, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF8, 0xFFFFFFFF, 2_000_000_000)
INTERESTING_U64 = (0, 1, 8192, 1 << 31, 1 << 32, 1 << 40, (1 << 63) - 1, (1 << 64) - 1)
WHOLE_BLOCK_SHAPES = {"uint8": [(64, 128), (128, 128)], "uint16": [(64, 64), (64, 128)], "uint32": [(32, 64), (64, 64)]}
IMAGE_FIELDS = {0: ("htype", "series", "frame", "hash"), 1: ("htype", "shape", "type", "encoding", "size"), 3: ("start_time", "stop_time", "real_time")}
HEADER_FIELDS = {0: ("htype", "series", "header_detail"), 1: ("ntrigger", "nimages", "trigger_mode")}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63, 2**64, 10**30])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
garbage_parts = st.one_of(
    st.binary(max_size=64),
    st.just(b""),
    st.sampled_from([b"[1, 2]", b'"text"', b"null", b"42", b"{", b"{not json", b"\xff\xfe{", b"{}", b'{"htype":7}']),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@dataclass
class Series:
    """One valid series as sent, and what each frame must decode to."""

    series: int
    shape: tuple[int, int]
    dtype: str
    encoding: str
    images: list[np.ndarray]
    messages: list[list[bytes]]
    """header, one per image, end."""


@dataclass
class Case:
    """A series with mutations applied; ``rekeyed``: some image header's series or frame was changed."""

    original: Series
    messages: list[list[bytes]]
    mutated: set[int] = field(default_factory=set)
    """Indices (into ``original.messages``) of image messages whose content changed."""
    blob_only: bool = True
    """Every mutation was a blob change with the md5 and size fixed up: the strict oracle applies."""
    rekeyed: bool = False
    mutated_blobs: list[tuple[bytes, int]] = field(default_factory=list)
    """(blob, frame) of each mutated blob, decoded alone too."""
    notes: list[str] = field(default_factory=list)


def _encodings_for(dtype: str) -> list[str]:
    bits = 8 * np.dtype(dtype).itemsize
    return [e for e in ENCODINGS if not e.startswith("bs") or e == f"bs{bits}-lz4<"]


@st.composite
def series_strategy(draw) -> Series:
    """A valid series: 1-4 frames, any type and compatible encoding, often of whole 8192-byte blocks (batched decoding)."""
    dtype = draw(st.sampled_from(DTYPES))
    encoding = draw(st.sampled_from(_encodings_for(dtype)))
    shape = draw(st.sampled_from(WHOLE_BLOCK_SHAPES[dtype]) | st.tuples(st.integers(1, 40), st.integers(1, 40)))
    n = draw(st.integers(1, 4))
    series = draw(st.integers(0, 2**31))
    detail = draw(st.sampled_from(HEADER_DETAILS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    top = np.iinfo(dtype).max
    images = []
    for _ in range(n):
        image = rng.poisson(3, size=shape).astype(np.int64)
        image.flat[:: max(1, image.size // 5)] = top
        images.append(image.astype(dtype))
    config = {"ntrigger": 1, "nimages": n, "trigger_mode": "ints", "x_pixels_in_detector": shape[1], "y_pixels_in_detector": shape[0]}
    messages = [series_start_parts(series, config, detail)]
    messages += [image_parts(series, i, im, encoding, 10 * i, 10 * i + 5, 5) for i, im in enumerate(images)]
    messages.append(series_end_parts(series))
    return Series(series, shape, dtype, encoding, images, messages)


def _block_offsets(blob: bytes) -> list[int]:
    """Where each bitshuffle block's u32 length sits in a valid blob (walks the lengths; stops at the end)."""
    offsets, pos = [], 12
    while pos + 4 <= len(blob):
        offsets.append(pos)
        (length,) = struct.unpack_from(">I", blob, pos)
        pos += 4 + length
    return offsets


@st.composite
def mutated_blob(draw, blob: bytes, encoding: str) -> tuple[bytes, str]:
    """``blob`` changed one way or several; returns it and a note."""
    out = bytearray(blob)
    ops = draw(st.lists(st.sampled_from(["flip", "truncate", "extend", "u32", "header", "replace", "empty"]), min_size=1, max_size=3))
    notes = []
    for op in ops:
        if op == "flip" and out:
            for pos in draw(st.lists(st.integers(0, len(out) - 1), min_size=1, max_size=8)):
                out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            out = out[: draw(st.integers(0, max(0, len(out) - 1)))]
        elif op == "extend":
            out += draw(st.binary(min_size=1, max_size=64))
        elif op == "u32" and len(out) >= 4:
            offsets = _block_offsets(bytes(out)) if encoding.startswith("bs") else []
            pos = draw(st.sampled_from(offsets) | st.integers(0, len(out) - 4)) if offsets else draw(st.integers(0, len(out) - 4))
            struct.pack_into(">I", out, pos, draw(st.sampled_from(INTERESTING_U32) | st.integers(0, 2**32 - 1)))
        elif op == "header" and len(out) >= 12:
            struct.pack_into(">Q", out, 0, draw(st.sampled_from(INTERESTING_U64)))
            if draw(st.booleans()):
                struct.pack_into(">I", out, 8, draw(st.sampled_from(INTERESTING_U32)))
        elif op == "replace":
            out = bytearray(draw(st.binary(max_size=200)))
        elif op == "empty":
            out = bytearray()
        notes.append(op)
    return bytes(out), "+".join(notes)


def _set_field(part: bytes, key: str, value) -> bytes:
    obj = json.loads(part)
    obj[key] = value
    return json.dumps(obj).encode()


def _fix_hash_and_size(parts: list[bytes]) -> None:
    head, desc = json.loads(parts[0]), json.loads(parts[1])
    head["hash"] = hashlib.md5(parts[2]).hexdigest()
    desc["size"] = len(parts[2])
    parts[0], parts[1] = json.dumps(head).encode(), json.dumps(desc).encode()


@st.composite
def case_strategy(draw, max_mutations: int = 3) -> Case:
    """A valid series with 0..``max_mutations`` mutations; about half the cases change blobs only (hash and size fixed)."""
    original = draw(series_strategy())
    messages = [list(m) for m in original.messages]
    case = Case(original, messages)
    n_images = len(original.images)
    blob_only = draw(st.booleans())
    for _ in range(draw(st.integers(0, max_mutations))):
        target = min(draw(st.integers(1, n_images)), len(messages) - 1)  # an image message (unless messages were dropped)
        if target < 0:
            break  # every message dropped
        kind = "blob" if blob_only else draw(st.sampled_from(["blob", "blob", "json", "header_json", "part", "message"]))
        if kind == "blob":
            parts = messages[target]
            if len(parts) < 4:
                continue
            parts[2], note = draw(mutated_blob(parts[2], original.encoding))
            fix = blob_only or draw(st.booleans())
            if fix:
                try:
                    _fix_hash_and_size(parts)
                except (ValueError, TypeError):  # an earlier mutation left no JSON object there
                    fix = False
            case.blob_only &= fix
            case.mutated.add(target)
            case.mutated_blobs.append((parts[2], target - 1))
            case.notes.append(f"blob of frame {target - 1}: {note}{'' if fix else ' (hash/size left)'}")
            continue
        case.blob_only = False
        if kind == "json":
            parts = messages[target]
            choices = [i for i in IMAGE_FIELDS if i < len(parts)]
            if not choices:
                continue  # every part dropped
            index = draw(st.sampled_from(choices))
            key = draw(st.sampled_from(IMAGE_FIELDS[index]))
            try:
                parts[index] = _set_field(parts[index], key, draw(json_values))
            except (ValueError, TypeError):
                continue  # the part is no longer a JSON object (an earlier mutation)
            case.mutated.add(target)
            case.rekeyed |= index == 0 and key in ("series", "frame", "htype")
            case.notes.append(f"frame {target - 1} part {index} {key} changed")
        elif kind == "header_json":
            parts = messages[0]
            choices = [i for i in HEADER_FIELDS if i < len(parts)]
            if not choices:
                continue
            index = draw(st.sampled_from(choices))
            key = draw(st.sampled_from(HEADER_FIELDS[index]))
            try:
                parts[index] = _set_field(parts[index], key, draw(json_values))
            except (ValueError, TypeError):
                continue
            case.rekeyed = True  # the series may no longer start: its frames then decode under an open series or none
            case.notes.append(f"header part {index} {key} changed")
        elif kind == "part":
            parts = messages[target]
            op = draw(st.sampled_from(["garbage", "drop", "duplicate", "insert"]))
            index = draw(st.integers(0, len(parts) - 1)) if parts else 0
            if op == "garbage" and parts:
                parts[index] = draw(garbage_parts)
            elif op == "drop" and parts:
                del parts[index]
            elif op == "duplicate" and parts:
                parts.insert(index, parts[index])
            else:
                parts.insert(index, draw(garbage_parts))
            case.mutated.add(target)
            case.rekeyed = True  # a shifted part may be read as another frame's header
            case.notes.append(f"frame {target - 1} part {index}: {op}")
        else:
            op = draw(st.sampled_from(["drop", "duplicate", "swap", "insert_garbage", "insert_header"]))
            at = draw(st.integers(0, len(messages) - 1))
            if op == "drop":
                del messages[at]
            elif op == "duplicate":
                messages.insert(at, list(messages[at]))
            elif op == "swap" and at + 1 < len(messages):
                messages[at], messages[at + 1] = messages[at + 1], messages[at]
            elif op == "insert_header":
                messages.insert(at, list(original.messages[0]))
            else:
                messages.insert(at, draw(st.lists(garbage_parts, min_size=0, max_size=3)))
            case.rekeyed = True  # order and presence change which copy of a frame counts
            case.notes.append(f"message {at}: {op}")
    return case


def check_case(case: Case) -> list:
    """Decode ``case`` (one batch, then message by message) and assert the oracle; returns the batched events."""
    o = case.original
    events = StreamDecoder().feed_many(case.messages)
    one_by_one = StreamDecoder()
    single = [e for m in case.messages for e in one_by_one.feed(m)]
    for evs in (events, single):
        _check_events(case, evs)
    for blob, frame in case.mutated_blobs:
        try:
            image = decode_frame(blob, o.shape, o.dtype, o.encoding)
        except CodecError as err:
            assert "\n" not in str(err), str(err)
        else:
            assert image.shape == o.shape and image.dtype == np.dtype(o.dtype), (frame, image.shape, image.dtype)
    return events


def _check_events(case: Case, events: list) -> None:
    o = case.original
    clean = {(o.series, i): o.images[i] for i in range(len(o.images)) if i + 1 not in case.mutated}
    for e in events:
        assert isinstance(e, SeriesStart | Frame | SeriesEnd | StreamError), type(e)
        if isinstance(e, StreamError):
            assert isinstance(e.kind, StreamErrorKind) and isinstance(e.reason, str), e
            assert "\n" not in e.reason, e.reason
        elif isinstance(e, Frame):
            assert isinstance(e.image, np.ndarray) and e.image.ndim == 2 and e.image.dtype.name in DTYPES, e
            key = (e.series, e.frame)
            if key in clean and not case.rekeyed:  # only its own, untouched message can carry this key
                np.testing.assert_array_equal(e.image, clean[key], err_msg=f"frame {key} decoded wrong")
    if not case.mutated and not case.notes:
        assert [type(e) for e in events] == [SeriesStart, *[Frame] * len(o.images), SeriesEnd], events
        return
    if case.blob_only:  # strict: every clean frame decodes exactly; a mutated one decodes to its shape and type or is one error
        frames = {e.frame: e for e in events if isinstance(e, Frame)}
        errors = [e for e in events if isinstance(e, StreamError)]
        for i, image in enumerate(o.images):
            if i + 1 not in case.mutated:
                np.testing.assert_array_equal(frames[i].image, image, err_msg=f"clean frame {i}")
            elif i in frames:
                assert frames[i].image.shape == o.shape and frames[i].image.dtype == np.dtype(o.dtype)
            else:
                assert [e.kind for e in errors if e.frame == i] == [StreamErrorKind.MALFORMED], errors
        allowed = {StreamErrorKind.MALFORMED, StreamErrorKind.INCOMPLETE_SERIES}
        assert {e.kind for e in errors} <= allowed, errors
        assert all(e.frame is None or e.frame + 1 in case.mutated for e in errors), errors
