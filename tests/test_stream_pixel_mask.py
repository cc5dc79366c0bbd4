"""The pixel mask of a header-detail ``all`` series header reaches the ``SeriesStart`` event, in either message layout."""

from __future__ import annotations

import numpy as np

from detector_stream.decoder import StreamDecoder
from detector_stream.events import Frame, SeriesEnd, SeriesStart, StreamError
from detector_stream.messages import image_parts, series_end_parts, series_start_parts

K = 8
CONFIG = {"ntrigger": 2, "nimages": 1, "trigger_mode": "exts", "x_pixels_in_detector": K, "y_pixels_in_detector": K}


def _mask() -> np.ndarray:
    mask = np.zeros((K, K), np.uint32)
    mask[1, 6] = 1  # gap
    mask[5, 2] = 16  # noisy
    return mask


def _rest() -> list[list[bytes]]:
    images = np.arange(2 * K * K, dtype=np.uint16).reshape(2, K, K)
    return [image_parts(3, i, images[i], "bs16-lz4<", 0, 1, 1) for i in range(2)] + [series_end_parts(3)]


def test_the_mask_comes_with_the_series_start_when_the_header_is_one_message():
    events = StreamDecoder().feed_many([series_start_parts(3, CONFIG, "all", pixel_mask=_mask()), *_rest()])
    assert [type(e) for e in events] == [SeriesStart, Frame, Frame, SeriesEnd]
    assert np.array_equal(events[0].pixel_mask, _mask()) and events[0].pixel_mask.dtype == np.uint32


def test_the_mask_comes_with_the_series_start_when_each_part_is_a_message_of_its_own():
    """The libertem-dectris simulator's layout: dheader, config, then each all-part's JSON and blob as messages of their own."""
    header = series_start_parts(3, CONFIG, "all", pixel_mask=_mask())
    split = [[part] for part in header]
    for cut in (len(split), 1, 4, 6):  # fed in one go, or with the stream cut before the frames / mid-header
        decoder = StreamDecoder()
        messages = [*split, *_rest()]
        events = decoder.feed_many(messages[:cut]) + decoder.feed_many(messages[cut:])
        assert [type(e) for e in events] == [SeriesStart, Frame, Frame, SeriesEnd], cut
        assert np.array_equal(events[0].pixel_mask, _mask()) and not decoder.error_counts


def test_basic_headers_carry_no_mask_and_a_bad_mask_part_is_reported_not_fatal():
    events = StreamDecoder().feed_many([series_start_parts(3, CONFIG, "basic"), *_rest()])
    assert isinstance(events[0], SeriesStart) and events[0].pixel_mask is None
    header = series_start_parts(3, CONFIG, "all", pixel_mask=_mask())
    header[5] = header[5][:-4]  # the mask blob cut short
    events = StreamDecoder().feed_many([header, *_rest()])
    kinds = [type(e) for e in events]
    assert kinds == [StreamError, SeriesStart, Frame, Frame, SeriesEnd] and "pixel mask" in events[0].reason
    assert events[1].pixel_mask is None
