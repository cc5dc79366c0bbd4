"""What went wrong in a detector stream: a kind set where the problem is found, and the codec's exception."""

from __future__ import annotations

from enum import StrEnum


class StreamErrorKind(StrEnum):
    """What went wrong, set where a ``StreamError`` is made; the values are the service's error counter names."""

    MALFORMED = "malformed"
    """Cannot be parsed: not a JSON object (garbage, an empty part, a JSON array), bad header fields, an undecodable blob."""
    TRUNCATED = "truncated"
    """Fewer parts than an image message needs, or a blob shorter or longer than its descriptor's size."""
    CORRUPT = "corrupt"
    """The blob's md5 does not match the image header's hash."""
    DUPLICATED = "duplicated"
    OUT_OF_ORDER = "out_of_order"
    MISSING = "missing"
    """Frames skipped: a later frame index arrived first."""
    UNEXPECTED = "unexpected"
    """A frame index outside the series its config announced."""
    INCOMPLETE_SERIES = "incomplete_series"
    """A series ended (or was cut off by the next one) before all its frames arrived."""
    OTHER = "other"
    """Protocol oddities: an unknown htype or header_detail, a config that never came, frames or an end of a series not open."""


class CodecError(ValueError):
    """A frame blob cannot be encoded or decoded as asked; the one-line message says why (a ``MALFORMED`` frame)."""

    kind = StreamErrorKind.MALFORMED
