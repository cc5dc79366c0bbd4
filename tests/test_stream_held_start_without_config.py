"""A header-detail ``all`` series start held for its pixel mask still comes before the series' frames."""

from __future__ import annotations

import numpy as np
import pytest

from detector_stream.decoder import StreamDecoder
from detector_stream.events import Frame, SeriesEnd, SeriesStart, StreamError
from detector_stream.messages import image_parts, series_end_parts, series_start_parts

K = 8
CONFIG = {"ntrigger": 2, "nimages": 1, "trigger_mode": "exts", "x_pixels_in_detector": K, "y_pixels_in_detector": K}


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("detail", ["basic", "all"])
def test_a_header_whose_config_never_arrived_starts_its_series_before_the_first_frame(detail, fast):
    """The config message of a split header is lost: the decoder reports it and starts the series at the first frame. With detail
    ``all`` that start is held for a pixel mask again (``_start`` without parts) and comes out after the first frame; the service
    then takes the header for a restarted detector's new run of a series whose frames already began (``series_start`` reused)."""
    images = np.arange(2 * K * K, dtype=np.uint16).reshape(2, K, K)
    rest = [image_parts(3, i, images[i], "bs16-lz4<", 0, 1, 1) for i in range(2)] + [series_end_parts(3)]
    decoder = StreamDecoder()
    decoder.fast = fast
    events = decoder.feed_many([[series_start_parts(3, CONFIG, detail)[0]], *rest])
    assert [type(e) for e in events] == [StreamError, SeriesStart, Frame, Frame, SeriesEnd]
