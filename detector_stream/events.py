"""What a ``StreamDecoder`` makes of the messages of one connection, in order."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detector_stream.errors import StreamErrorKind


@dataclass
class SeriesStart:
    """A series header: its number, header detail and detector config (``{}`` for detail ``none``)."""

    series: int
    header_detail: str
    config: dict
    pixel_mask: np.ndarray | None = None
    """(y, x) uint32 the detector's pixel mask (nonzero: masked) from a header of detail ``all``; None when the header had none."""


@dataclass
class Frame:
    """One decoded image of a series, with its dconfig times when the message had them."""

    series: int
    frame: int
    image: np.ndarray
    """(y, x) pixel counts."""
    start_time_ns: int | None = None
    stop_time_ns: int | None = None
    real_time_ns: int | None = None
    received_at: float | None = None
    """``time.perf_counter()`` when the receiver took the frame's message off its socket (None: not given)."""
    stack: tuple[np.ndarray, int] | None = field(default=None, repr=False, compare=False)
    """``(array, row)``: ``image`` is ``array[row]``, a row of the (n, y, x) array consecutive frames were decoded into
    (``stacked_images`` takes a run of them without a copy); None: not known."""
    blob: bytes | memoryview | None = field(default=None, repr=False, compare=False)
    """The message's bitshuffle-LZ4 blob ``image`` was decoded from, bitshuffled in the image's own items (a store may keep it
    as it came: ``service.pattern_chunks``); None: none (another encoding, or not kept)."""
    marked: int | None = field(default=None, compare=False)
    """How many pixels of ``image`` read their type's largest value (the detector's mark of an invalid pixel, or saturation),
    counted where it was decoded (the compiled loop); None: not counted (look at the pixels)."""


@dataclass(eq=False)
class FrameRun:
    """Frames ``first``, ``first`` + 1, ... of one series, decoded back to back into one array: the same as ``frames()``, one
    ``Frame`` each, without an object per frame (the ingest's hot path). A receiver gives these only to a consumer that asks
    (``StreamReceiver(frame_runs=True)``); the per-frame lists hold one entry per row of ``stack``. Equal only to itself
    (a field-wise comparison would compare pixel arrays, which raises)."""

    series: int
    first: int
    stack: np.ndarray
    """(n, y, x) pixel counts, row k frame ``first`` + k."""
    times: list[tuple[int | None, int | None, int | None]]
    """per frame, its dconfig (start, stop, real) times (ns)."""
    received_at: list[float]
    """per frame, ``Frame.received_at`` (``time.perf_counter()`` s when its message came off the socket)."""
    blobs: list[bytes | memoryview | None]
    """per frame, ``Frame.blob``."""
    marked: list[int | None]
    """per frame, ``Frame.marked``."""

    def __len__(self) -> int:
        return len(self.stack)

    @property
    def frame_numbers(self) -> range:
        """The run's frame numbers, ``first`` up to ``first`` + ``len(self)`` (exclusive)."""
        return range(self.first, self.first + len(self.stack))

    def frames(self) -> list[Frame]:
        """The run as ``Frame`` events, in order (views of ``stack``, no copy)."""
        stack, series, first = self.stack, self.series, self.first
        return [
            Frame(series, first + k, stack[k], *self.times[k], received_at=self.received_at[k], stack=(stack, k), blob=self.blobs[k], marked=self.marked[k])
            for k in range(len(stack))
        ]


def as_frames(events: list) -> list:
    """``events`` in order, each ``FrameRun`` as its ``Frame``\\ s (``FrameRun.frames``)."""
    return [f for e in events for f in (e.frames() if isinstance(e, FrameRun) else [e])]


def stacked_images(frames: list[Frame]) -> np.ndarray | None:
    """The frames' images as one (n, y, x) array without a copy when they are consecutive rows, in order, of one decoded stack; else None."""
    head = frames[0].stack if frames else None
    if head is None:
        return None
    array, row = head
    for k, frame in enumerate(frames):
        where = frame.stack
        if where is None or where[0] is not array or where[1] != row + k:
            return None
    return array[row : row + len(frames)]


@dataclass
class SeriesEnd:
    """A ``dseries_end`` (series -1 if it had no integer series number)."""

    series: int


@dataclass
class StreamError:
    """One problem in the stream; the decoder makes one for everything it cannot use, and drops nothing silently."""

    reason: str
    """For people: one line, what and where."""
    series: int | None = None
    frame: int | None = None
    kind: StreamErrorKind = field(default=StreamErrorKind.OTHER, kw_only=True)
    """Set where the error is made: count and classify by this, never by searching ``reason``."""


Event = SeriesStart | Frame | FrameRun | SeriesEnd | StreamError
