"""An image message's JSON parts exactly as a DCU writes them (parsed without JSON), and JSON integers as the decoder reads them."""

from __future__ import annotations

import math
import re

UINT = rb"(0|[1-9][0-9]*)"
DIMAGE = re.compile(rb'\{"htype":"dimage-1\.0","series":%s,"frame":%s,"hash":"([0-9a-fA-F]*)"\}' % (UINT, UINT))
DIMAGE_D = re.compile(
    rb'\{"htype":"dimage_d-1\.0","shape":\[%s,%s\],"type":"(uint8|uint16|uint32)","encoding":"(bs8-lz4<|bs16-lz4<|bs32-lz4<|lz4<|<)","size":%s\}'
    % (UINT, UINT, UINT)
)
DCONFIG = re.compile(rb'\{"htype":"dconfig-1\.0","start_time":%s,"stop_time":%s,"real_time":%s\}' % (UINT, UINT, UINT))
"""The three JSON parts of an image message exactly as a DCU (and ``messages.image_parts``) writes them: parsed without JSON."""


def int_or_none(value) -> int | None:
    """An int from a JSON number (floats truncated, as before); None for anything else, including inf and NaN."""
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, float) and math.isfinite(value) else None
