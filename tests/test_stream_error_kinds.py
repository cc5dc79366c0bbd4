"""Every malformed message is counted by a kind set where the error is made; none is dropped silently.

Regression (defect 8, stream side): garbage bytes, empty parts and non-object JSON
during an open series (before its first frame, or while the header awaited its config)
were dropped without a ``StreamError``, so nothing counted them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector_stream.decoder import StreamDecoder
from detector_stream.errors import StreamErrorKind
from detector_stream.events import Frame, SeriesEnd, SeriesStart, StreamError
from detector_stream.messages import image_parts, series_end_parts, series_start_parts
from service.session import ERROR_KINDS
from service.stream_error_kinds import classify_stream_error

CONFIG = {"ntrigger": 1, "nimages": 3, "trigger_mode": "ints", "x_pixels_in_detector": 13, "y_pixels_in_detector": 7}
IMAGES = [np.full((7, 13), i, np.uint16) for i in range(3)]
FRAMES = [image_parts(5, i, im, "bs16-lz4<", 10 * i, 10 * i + 5, 5) for i, im in enumerate(IMAGES)]
GARBAGE = [[b"\x00garbage"], [b""], [b"[1, 2]"], [b'"a string"'], [b"{not json"], [b"\xff\xfe{"]]


def _errors(events) -> list[StreamError]:
    return [e for e in events if isinstance(e, StreamError)]


@pytest.mark.parametrize("where", ["before the first frame", "between frames"])
def test_malformed_messages_in_an_open_series_are_counted(where):
    start = series_start_parts(5, CONFIG)
    if where == "before the first frame":
        msgs = [start, *GARBAGE, *FRAMES, series_end_parts(5)]
    else:
        msgs = [start, FRAMES[0], *GARBAGE, *FRAMES[1:], series_end_parts(5)]
    decoder = StreamDecoder()
    events = decoder.feed_many(msgs)
    errors = _errors(events)
    assert len(errors) == len(GARBAGE)
    assert {e.kind for e in errors} == {StreamErrorKind.MALFORMED}
    assert all("not a JSON object" in e.reason for e in errors)
    assert decoder.error_counts == {StreamErrorKind.MALFORMED: len(GARBAGE)}
    assert [e.frame for e in events if isinstance(e, Frame)] == [0, 1, 2]
    assert isinstance(events[0], SeriesStart) and isinstance(events[-1], SeriesEnd)


def test_garbage_while_the_header_awaits_its_config_is_counted():
    header, config = series_start_parts(5, CONFIG)
    decoder = StreamDecoder()
    events = [e for m in ([header], [b"\xff\xfe"], [b"[]"], [config], *FRAMES) for e in decoder.feed(m)]
    assert [e.kind for e in _errors(events)] == [StreamErrorKind.MALFORMED] * 2
    assert events[2].config == CONFIG  # the real config, after the garbage, still starts the series
    assert decoder.error_counts[StreamErrorKind.MALFORMED] == 2


@pytest.mark.parametrize("dconfig", [b"", b"\x01\x02", b"[0]", b"null"])
def test_a_bad_dconfig_part_is_counted_and_the_frame_kept(dconfig):
    msg = list(FRAMES[0])
    msg[3] = dconfig
    events = StreamDecoder().feed_many([series_start_parts(5, CONFIG), msg])
    (error,) = _errors(events)
    assert (error.kind, error.series, error.frame) == (StreamErrorKind.MALFORMED, 5, 0)
    (frame,) = [e for e in events if isinstance(e, Frame)]
    assert frame.start_time_ns is None
    np.testing.assert_array_equal(frame.image, IMAGES[0])


def test_header_detail_all_parts_sent_as_their_own_messages_are_not_errors():
    parts = series_start_parts(5, CONFIG, "all")
    assert len(parts) == 8
    own_messages = [[p] for p in parts]  # dheader, config, then flatfield/mask/count-rate JSON and blob each alone
    events = StreamDecoder().feed_many([*own_messages, *FRAMES, series_end_parts(5)])
    assert _errors(events) == []
    assert [type(e) for e in events] == [SeriesStart, Frame, Frame, Frame, SeriesEnd]
    # A blob without its appendix JSON before it is garbage, counted.
    events = StreamDecoder().feed_many([*own_messages[:2], own_messages[3], *FRAMES])
    assert [e.kind for e in _errors(events)] == [StreamErrorKind.MALFORMED]


def _error_corpus() -> list[StreamError]:
    """Errors of every kind the decoder makes, from ordinary stream faults."""
    f0, f1, f2 = FRAMES
    corrupt = [json.dumps({**json.loads(f1[0]), "hash": "0" * 32}).encode(), *f1[1:]]
    truncated = [*f2[:2], f2[2][:-3], f2[3]]
    beyond = image_parts(5, 7, IMAGES[0], "bs16-lz4<", 0, 0, 0)
    bad_blob = image_parts(5, 2, IMAGES[0], "bs16-lz4<", 0, 0, 0, blob=b"\0" * 12 + b"\0\0\0\x05" + b"\xff" * 5)
    msgs = [
        [],
        [b"garbage"],
        [b'{"htype":"dweird-1.0"}'],
        [b'{"htype":"dheader-1.0"}'],
        [b'{"htype":"dheader-1.0","series":5,"header_detail":"odd"}', json.dumps(CONFIG).encode()],
        [b'{"htype":"dimage-1.0","series":"x"}'],
        f1,
        f0,
        f1,
        corrupt,
        truncated,
        f2[:2],
        bad_blob,
        [f2[0], b"{}", f2[2], f2[3]],
        beyond,
        series_end_parts(5),
        series_end_parts(6),
        [b'{"htype":"dheader-1.0","series":8}'],
        f0,
    ]
    decoder = StreamDecoder()
    errors = _errors(decoder.feed_many(msgs)) + _errors(decoder.feed_many([series_start_parts(9, CONFIG), f0]))
    return errors + _errors(decoder.feed_many([series_start_parts(10, CONFIG)]))


def test_every_kind_is_made_and_is_a_service_error_counter():
    kinds = {e.kind for e in _error_corpus()}
    assert kinds == set(StreamErrorKind)
    assert set(StreamErrorKind) <= set(ERROR_KINDS)


def test_the_session_reads_the_kind_and_the_wording_agrees_with_it():
    for error in _error_corpus():
        assert classify_stream_error(error) == error.kind, error.reason
        assert classify_stream_error(error.reason) == error.kind, error.reason  # the reason-text fallback says the same
    # The kind is made where the error is: a reason whose text mentions another kind does not change it.
    tricky = StreamError("unknown message htype 'missing-truncated'", kind=StreamErrorKind.OTHER)
    assert classify_stream_error(tricky) == "other"
