"""``StreamDecoder``: the multipart messages of one stream v1 connection, in order, to events; never raises on input."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

from detector_stream.codec import ITEMSIZE, check_dtype, check_encoding, decode_batch
from detector_stream.errors import CodecError, StreamErrorKind
from detector_stream.events import Event, Frame, FrameRun, SeriesEnd, SeriesStart, StreamError
from detector_stream.image_layout import DCONFIG, DIMAGE, DIMAGE_D, int_or_none
from detector_stream.messages import APPENDIX_PARTS, HEADER_DETAILS, expected_frames, load_json_object, read_pixel_mask
from detector_stream.native.batch import IMAGE, RAW, RUN, NativeBatch

_K = StreamErrorKind

@dataclass
class _Pending:
    """A frame whose blob awaits (batched) decoding."""

    series: int
    frame: int
    blob: bytes
    shape: tuple[int, int]
    dtype: str
    encoding: str
    times: tuple[int | None, int | None, int | None]
    received_at: float | None = None


@dataclass
class _SeriesState:
    series: int
    total: int | None = None
    next_frame: int = 0
    received: int = 0
    seen: set = field(default_factory=set)


class StreamDecoder:
    """Turns the multipart messages of one connection into events; stateful, never raises on bad input.

    ``feed`` takes one message; ``feed_many`` takes several and decodes their
    bitshuffle frames in batches (one call for runs of same-shape frames that are
    whole 8192-byte blocks, such as 64x64 uint16; a malformed blob costs only its own
    frame). Of the header-detail ``all`` parts (in the header message, or each JSON part
    and then its blob as messages of their own) the pixel mask goes to the
    ``SeriesStart`` (held back until the mask or anything else arrives), the others and
    image appendices are skipped; md5
    hashes are checked (an empty hash is accepted). Everything else it cannot use
    becomes a ``StreamError`` whose ``kind`` is set here, and is counted in
    ``error_counts``: garbage, empty parts and non-object JSON at any point of a
    series, truncated, corrupt, duplicated, missing and out-of-order frames, a series
    left without ``dseries_end``, unknown messages.
    """

    def __init__(self, fast: bool = True, runs: bool = False) -> None:
        """``fast``: parse image messages in the DCU's exact layout without JSON (``_image_fast``); False: JSON for every message.
        ``runs``: ``feed_native`` gives a run of consecutive frames that passes every check as one ``FrameRun``, not a ``Frame`` each."""
        self.fast, self.runs = fast, runs
        self._state: _SeriesState | None = None
        self._awaiting_config: tuple[int, str] | None = None
        self._events: list = []
        self._received_at: float | None = None
        self._appendix_blob_expected = False
        self._appendix_head: dict | None = None
        """the JSON part of a header-detail ``all`` part whose blob is the next message."""
        self._held: SeriesStart | None = None
        """a detail-``all`` series start whose pixel mask comes in messages of their own: sent on with it, or before anything else."""
        self.error_counts: Counter[StreamErrorKind] = Counter()
        """Every ``StreamError`` this decoder has returned, by kind (read it from the thread that feeds)."""
        self._errors_total = 0

    def feed(self, parts: list[bytes]) -> list[Event]:
        """Events of one zmq multipart message."""
        return self.feed_many([parts])

    def feed_many(self, messages: list[list[bytes]], received_at: list[float] | None = None) -> list[Event]:
        """Events of several messages in order, frames decoded in batches.

        ``received_at`` (one ``time.perf_counter()`` per message) goes to each ``Frame``'s ``received_at``.
        """
        self._events = []
        for n, parts in enumerate(messages):
            self._received_at = received_at[n] if received_at is not None else None
            self._raw(parts)
        self._flush()
        events, self._events = self._events, []
        return events

    def feed_native(self, batch: NativeBatch) -> list[Event]:
        """Events of one drain of the compiled receive loop, in order: the same events ``feed_many`` gives for its messages.

        Its decoded images passed the size, md5 and framing checks there; they go through
        the same series and order checks here. Its raw messages go the ``feed_many`` way;
        a message the loop could not keep (out of memory) is reported, never dropped silently.
        The loop parses the DCU layout whatever ``fast`` says (the same events either way).
        """
        self._events = []
        for kind, received_at, item in batch.items():
            try:
                if kind == RUN:
                    self._decoded_run(*item, received_at)
                    continue
                self._received_at = received_at
                if kind == IMAGE:
                    self._decoded(*item)
                elif kind == RAW:
                    self._raw(item)
                else:
                    self._error(_K.OTHER, f"a message was lost ({item} part(s) kept): the receive loop ran out of memory")
            except Exception as err:  # belt and braces, as in _raw: a decoder must not raise on input
                self._error(_K.MALFORMED, f"malformed message: {type(err).__name__}: {err}")
        self._flush()
        events, self._events = self._events, []
        return events

    def _decoded_run(self, series: int, first: int, stack, times: list[tuple[int, int, int]], blobs: list, marked: list[int], stamps: list[float]) -> None:
        """Decoded images of frames ``first``, ``first`` + 1, ... (``stack`` (n, y, x), from ``blobs``, ``marked`` pixels each, received at ``stamps``):
        ``_decoded`` of each, in one step (a ``FrameRun`` if ``runs``) when they continue the open series exactly (no check can fail)."""
        self._appendix_blob_expected = False
        self._config_never_arrived()
        state, n = self._state, len(stack)
        if state is None or state.series != series or first != state.next_frame or (state.total is not None and first + n > state.total):
            for k in range(n):
                self._received_at = stamps[k]
                self._decoded(series, first + k, stack[k], times[k], blobs[k], marked[k])
            return
        state.seen.update(range(first, first + n))  # every frame seen so far is below next_frame
        state.next_frame = first + n
        state.received += n
        run = FrameRun(series, first, stack, times, stamps, blobs, marked)
        self._events += [run] if self.runs else run.frames()

    def _raw(self, parts: list[bytes]) -> None:
        try:
            parts = [bytes(p) if not isinstance(p, bytes) else p for p in parts]
            if not (self.fast and self._image_fast(parts)):
                self._message(parts)
        except Exception as err:  # belt and braces: a decoder must not raise on input
            self._error(_K.MALFORMED, f"malformed message: {type(err).__name__}: {err}")

    def _decoded(self, series: int, frame: int, image, times: tuple[int, int, int], blob: bytes | memoryview | None = None, marked: int | None = None) -> None:
        """An image the compiled loop parsed (DCU layout), checked (size, md5, framing) and decoded (``marked``: ``Frame.marked``): ``_image_fast`` on."""
        self._appendix_blob_expected = False
        self._config_never_arrived()
        if self._admit(series, frame):
            self._events.append(Frame(series, frame, image, *times, received_at=self._received_at, blob=blob, marked=marked))
            self._state.received += 1

    @property
    def errors_total(self) -> int:
        """``StreamError`` events returned so far, all kinds."""
        return self._errors_total

    def _counted(self, error: StreamError) -> StreamError:
        self._errors_total += 1
        self.error_counts[error.kind] += 1
        return error

    def _error(self, kind: StreamErrorKind, reason: str, series: int | None = None, frame: int | None = None) -> None:
        """Return (and count) one problem: nothing malformed is dropped without a ``StreamError``."""
        self._events.append(self._counted(StreamError(reason, series, frame, kind=kind)))

    # --- message kinds -------------------------------------------------------------

    def _message(self, parts: list[bytes]) -> None:
        if not parts:
            self._error(_K.MALFORMED, "malformed message: empty message (no parts)")
            return
        blob_expected, self._appendix_blob_expected = self._appendix_blob_expected, False
        head = load_json_object(parts[0])
        if head is None:
            if blob_expected and len(parts) == 1:
                self._appendix(self._appendix_head, parts[0])  # the blob of a header-detail "all" part whose JSON came as its own message
                return
            self._error(_K.MALFORMED, f"malformed message: first part of {len(parts[0])} bytes is not a JSON object")
            return
        htype = str(head.get("htype", ""))
        if htype in APPENDIX_PARTS:
            self._appendix_blob_expected, self._appendix_head = len(parts) == 1, head  # its blob follows as the next message (libertem-dectris sim)
            if len(parts) >= 2:
                self._appendix(head, parts[1])
            return
        self._release_held()
        if htype.startswith("dheader-"):
            self._header(head, parts)
        elif htype.startswith("dimage-"):
            self._image(head, parts)
        elif htype.startswith("dseries_end-"):
            self._end(head)
        elif not htype and self._awaiting_config is not None:
            series, detail = self._awaiting_config
            self._awaiting_config = None
            self._start(series, detail, head)
        else:
            self._error(_K.OTHER, f"unknown message htype {htype!r}")

    def _close_open_series(self, why: str) -> None:
        state = self._state
        if state is not None:
            self._flush()
            self._error(_K.INCOMPLETE_SERIES, f"series {state.series} {why} without dseries_end after {state.received} frame(s)", state.series)
            self._state = None

    def _header(self, head: dict, parts: list[bytes]) -> None:
        self._close_open_series("ended")
        series = int_or_none(head.get("series"))
        if series is None:
            self._error(_K.MALFORMED, "malformed series header: no integer series number")
            return
        detail = str(head.get("header_detail", "basic"))
        if detail not in HEADER_DETAILS:
            self._error(_K.OTHER, f"unknown header_detail {detail!r}", series)
        if detail == "none":
            self._start(series, detail, {})
        elif len(parts) >= 2:
            config = load_json_object(parts[1])
            if config is None:
                self._error(_K.MALFORMED, "series header config part is not JSON", series)
                config = {}
            self._start(series, detail, config, parts[2:])
        else:
            self._awaiting_config = (series, detail)  # config follows as its own message (libertem-dectris sim)

    def _start(self, series: int, detail: str, config: dict, appendix: list[bytes] | None = None) -> None:
        """Open the series; ``appendix``: the header message's parts after the config (detail ``all``: JSON and blob pairs)."""
        self._state = _SeriesState(series, expected_frames(config))
        start = SeriesStart(series, detail, config)
        for i in range(0, len(appendix or []) - 1, 2):
            head = load_json_object(appendix[i])
            if head is not None and head.get("htype") == "dpixelmask-1.0":
                start.pixel_mask = self._pixel_mask(head, appendix[i + 1], series)
        if detail == "all" and not appendix:
            self._held = start  # its parts follow as messages of their own
        else:
            self._events.append(start)

    def _pixel_mask(self, head: dict, blob: bytes, series: int | None):
        try:
            return read_pixel_mask(head, blob)
        except CodecError as err:
            self._error(_K.MALFORMED, f"series header: {err}", series)
            return None

    def _appendix(self, head: dict | None, blob: bytes) -> None:
        """A header-detail ``all`` part that came as messages of its own: the pixel mask goes with the held series start."""
        held = self._held
        if held is not None and head is not None and head.get("htype") == "dpixelmask-1.0":
            held.pixel_mask = self._pixel_mask(head, blob, held.series)
            self._release_held()

    def _release_held(self) -> None:
        if self._held is not None:
            self._events.append(self._held)
            self._held = None

    def _image_fast(self, parts: list[bytes]) -> bool:
        """An image message in the DCU's exact layout (``messages.image_parts``), parsed without JSON; False (nothing done) otherwise.

        What it accepts, the JSON path would read the same way: plain non-negative
        integers, a hex hash, a known pixel type and encoding, no other keys, no spaces.
        """
        if len(parts) != 4:
            return False
        head, desc, dconf = DIMAGE.fullmatch(parts[0]), DIMAGE_D.fullmatch(parts[1]), DCONFIG.fullmatch(parts[3])
        if head is None or desc is None or dconf is None:
            return False
        self._appendix_blob_expected = False
        series, frame = int(head[1]), int(head[2])
        self._config_never_arrived()
        x, y, size = int(desc[1]), int(desc[2]), int(desc[5])
        times = (int(dconf[1]), int(dconf[2]), int(dconf[3]))
        self._accept(series, frame, head[3].decode(), (y, x), desc[3].decode(), desc[4].decode(), size, parts[2], times, None)
        return True

    def _config_never_arrived(self) -> None:
        self._release_held()
        if self._awaiting_config is not None:
            awaited, detail = self._awaiting_config
            self._awaiting_config = None
            self._error(_K.OTHER, "series header config never arrived", awaited)
            self._start(awaited, detail, {})
            self._release_held()  # a detail-"all" start is held for its mask parts, which will not come either: out before the frame

    def _image(self, head: dict, parts: list[bytes]) -> None:
        series, frame = int_or_none(head.get("series")), int_or_none(head.get("frame"))
        if series is None or frame is None:
            self._error(_K.MALFORMED, "malformed image header: no integer series and frame", series, frame)
            return
        self._config_never_arrived()
        if len(parts) < 3:
            self._error(_K.TRUNCATED, f"truncated image message: {len(parts)} part(s), need 3 or more", series, frame)
            return
        desc, blob = load_json_object(parts[1]), parts[2]
        try:
            x, y = (int(v) for v in desc["shape"])
            dtype, encoding = str(desc["type"]), str(desc["encoding"])
            check_dtype(dtype)
            check_encoding(encoding)
        except Exception as err:
            self._error(_K.MALFORMED, f"malformed image descriptor: {err}", series, frame)
            return
        size = desc.get("size")
        times, bad_dconf = (None, None, None), None
        if len(parts) >= 4:
            dconf = load_json_object(parts[3])
            if dconf is None:  # the frame itself is fine: kept, without its times
                bad_dconf, dconf = len(parts[3]), {}
            times = tuple(int_or_none(dconf.get(k)) for k in ("start_time", "stop_time", "real_time"))
        self._accept(series, frame, str(head.get("hash", "")), (y, x), dtype, encoding, size if isinstance(size, int) else None, blob, times, bad_dconf)

    def _accept(
        self,
        series: int,
        frame: int,
        digest: str,
        shape: tuple[int, int],
        dtype: str,
        encoding: str,
        size: int | None,
        blob: bytes,
        times: tuple,
        bad_dconf: int | None,
    ) -> None:
        """The checks of one parsed image message (size, md5, series, order, duplicates); the frame then awaits batched decoding.

        ``bad_dconf``: the byte length of a dconfig part that was not a JSON object (reported after the order checks; the frame is kept).
        """
        if size is not None and size != len(blob):
            self._error(_K.TRUNCATED, f"truncated frame: blob has {len(blob)} bytes, header says {size}", series, frame)
            return
        if digest and hashlib.md5(blob).hexdigest() != digest.lower():
            self._error(_K.CORRUPT, "corrupt frame: md5 of the blob does not match its hash", series, frame)
            return
        if not self._admit(series, frame):
            return
        if bad_dconf is not None:
            self._error(_K.MALFORMED, f"malformed image dconfig part: {bad_dconf} bytes that are not a JSON object", series, frame)
        self._events.append(_Pending(series, frame, blob, shape, dtype, encoding, times, self._received_at))  # parts[4:]: appendix, skipped

    def _admit(self, series: int, frame: int) -> bool:
        """The series and order checks of one frame (its series open, not seen, in range; a gap or a late one reported); False: dropped."""
        state = self._state
        if state is None or state.series != series:
            self._close_open_series("interrupted")
            self._error(_K.OTHER, f"frames of series {series} arrived without its series header", series, frame)
            state = self._state = _SeriesState(series)
        if frame in state.seen:
            self._error(_K.DUPLICATED, f"duplicated frame {frame}", series, frame)
            return False
        if frame < 0 or (state.total is not None and frame >= state.total):
            self._error(_K.UNEXPECTED, f"frame index {frame} outside the series of {state.total} frames", series, frame)
            return False
        if frame > state.next_frame:
            self._error(_K.MISSING, f"missing frame(s) {state.next_frame}..{frame - 1}", series, state.next_frame)
        elif frame < state.next_frame:
            self._error(_K.OUT_OF_ORDER, f"frame {frame} arrived out of order", series, frame)
        state.next_frame = max(state.next_frame, frame + 1)
        state.seen.add(frame)
        return True

    def _end(self, head: dict) -> None:
        self._flush()
        series = int_or_none(head.get("series"))
        state = self._state
        if self._awaiting_config is not None:
            self._awaiting_config = None
        if state is None or state.series != series:
            self._error(_K.OTHER, f"dseries_end for series {series}, which is not open", series)
        elif state.total is not None and state.received < state.total:
            self._error(_K.INCOMPLETE_SERIES, f"series ended after {state.received} of {state.total} frames", series)
        self._state = None
        self._events.append(SeriesEnd(series if series is not None else -1))

    # --- batched decoding ----------------------------------------------------------

    def _flush(self) -> None:
        pending = [i for i, e in enumerate(self._events) if isinstance(e, _Pending)]
        groups: dict[tuple, list[int]] = {}
        for i in pending:
            e = self._events[i]
            groups.setdefault((e.shape, e.dtype, e.encoding), []).append(i)
        for (shape, dtype, encoding), idx in groups.items():
            try:
                batch = decode_batch([self._events[i].blob for i in idx], shape, dtype, encoding)
                group_error = None
            except CodecError as err:  # the shape, type or encoding itself: every frame of the group
                batch, group_error = None, err
            for k, i in enumerate(idx):
                p = self._events[i]
                err = group_error if batch is None else batch.errors.get(k)
                if err is not None:
                    self._events[i] = self._counted(StreamError(f"malformed frame: {err}", p.series, p.frame, kind=_K.MALFORMED))
                    continue
                blob = p.blob if ITEMSIZE.get(encoding) == batch.images.itemsize else None  # bitshuffled in the image's own items
                self._events[i] = Frame(p.series, p.frame, batch.images[k], *p.times, received_at=p.received_at, blob=blob)
                if self._state is not None and self._state.series == p.series:
                    self._state.received += 1
