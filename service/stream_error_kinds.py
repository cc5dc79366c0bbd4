"""A stream problem's counter name (one of ``service.session.ERROR_KINDS``), for callers that hold only its text.

The service counts a ``StreamError`` by its ``kind``, set where the error was found; the
wording of its reason is matched only when nothing else is known.
"""

from __future__ import annotations

from detector_stream.events import StreamError


def classify_stream_error(error: StreamError | str) -> str:
    """One of ``ERROR_KINDS`` for a ``StreamError``: its ``kind``, set where it was made; a bare reason string by its wording."""
    if isinstance(error, StreamError):
        return str(error.kind)
    r = error.lower()
    for needle, kind in (
        ("duplicat", "duplicated"),
        ("out of order", "out_of_order"),
        ("missing", "missing"),
        ("truncated", "truncated"),
        ("corrupt", "corrupt"),
        ("ended after", "incomplete_series"),
        ("without dseries_end", "incomplete_series"),
        ("outside the series", "unexpected"),
        ("malformed", "malformed"),
        ("not json", "malformed"),
    ):
        if needle in r:
            return kind
    return "other"
