"""Frame routing: detector series -> session batches, the pre-tell buffer, and the verdict on each frame.

A *key* is ``(endpoint, series)``. A series is bound once, at its tell, to the
missing slots of one batch (``service.session.Binding``). A detector numbers its series
anew when it restarts (the simulated one from 1): a second header for a key that has
already started (header or frames seen) is a new run of that series number, so the
earlier run's binding and untold frames are retired (``new_run``) and the new run is
bound by its own tell; frames of one run never reach the other's slots. Frames of a series not told
yet are held in a buffer capped in frames and bytes (oldest series evicted first) and
replayed at the tell. When a session ends its bindings are dropped (memory stays bounded by the
sessions in progress) and its series are *retired*: a frame or end of a retired series is a late
one of the ended session, discarded, until a header of that series number begins a new run
(a later session may tell it before or after that header). Nothing here writes a file, touches a metric or takes a lock:
methods return what happened (``FrameResult``, evictions) and the session manager,
holding its lock, applies the side effects (store writes, metrics, queueing, logging).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from detector_stream.events import Frame
from service.detector_mask import fitted, measured_peak
from service.session import BatchStatus, Binding, Session, SessionState

Key = tuple[str, int]
"""(detector endpoint, series number)."""

MAX_CANDIDATES = 4
"""Frames kept per index of an untold series: a frame refused at the tell (wrong shape, counts too high) must not
make a valid resend of it a duplicate, so distinct arrivals are kept and the first acceptable one is stored."""


class FrameOutcome(StrEnum):
    """What became of one frame."""

    STORED = "stored"
    """Put into its slot (memory); its batch still misses frames."""
    BATCH_COMPLETE = "batch_complete"
    """Put into its slot, and that completed its told batch: the batch awaits reconstruction."""
    ADMITTED = "admitted"
    """May be stored at ``slot`` (the verdict before the session file is written)."""
    BUFFERED = "buffered"
    """Held until its series is told."""
    REFUSED = "refused"
    """Not stored; ``kind`` (an error counter name) and ``detail`` say why."""


@dataclass(frozen=True)
class FrameResult:
    """The outcome of one frame; ``kind`` and ``detail`` only for ``REFUSED``, ``slot`` only for ``ADMITTED``."""

    outcome: FrameOutcome
    kind: str | None = None
    detail: str = ""
    slot: int | None = None

    @classmethod
    def refused(cls, kind: str, detail: str = "") -> FrameResult:
        return cls(FrameOutcome.REFUSED, kind, detail)


STORED = FrameResult(FrameOutcome.STORED)
BATCH_COMPLETE = FrameResult(FrameOutcome.BATCH_COMPLETE)
BUFFERED = FrameResult(FrameOutcome.BUFFERED)


MAX_RETIRED_SERIES = 256
"""Retired series remembered per endpoint, the oldest forgotten first: a frame of a series this many series older than
the latest ended one is long past (one detector stream is ordered; a series' frames come before the next one's header)."""


@dataclass
class Buffered:
    """Frames and problems of a series not yet told."""

    frames: dict[int, list[tuple[np.ndarray, float]]] = field(default_factory=dict)
    """per frame index, each arrival (image, perf_counter() when it arrived (s): a chunk's acquisition time is measured
    from arrivals, not the tell), oldest first."""
    errors: list[tuple[str, str]] = field(default_factory=list)
    """(error kind, detail) noted against the series before its tell; charged to its session at the tell."""
    ended: bool = False
    count: int = 0
    """frames held."""
    nbytes: int = 0
    """bytes of the frames held."""
    unclaimed: bool = False
    """when its first frame came, no session in progress read its endpoint: its frames may wait for a tell that never comes."""


@dataclass(frozen=True)
class Eviction:
    """An untold series dropped from a full buffer: ``count`` frames lost."""

    key: Key
    count: int


class FrameRouter:
    """Series bindings, the pre-tell buffer and per-endpoint error counts of every detector; called with the manager's lock held."""

    def __init__(self, max_buffered_frames: int, max_buffered_bytes: int) -> None:
        self.max_buffered_frames = max_buffered_frames
        self.max_buffered_bytes = max_buffered_bytes
        """caps of the pre-tell buffer, all series together (frames; bytes of decoded images)."""
        self.bindings: dict[Key, Binding] = {}
        self.buffer: OrderedDict[Key, Buffered] = OrderedDict()
        """untold series, oldest first (evicted in this order)."""
        self.buffered_frames = 0
        self.buffered_bytes = 0
        self.endpoint_errors: dict[str, dict[str, int]] = {}
        """per endpoint, error counts no session or untold series could be charged with (and buffer overflows)."""
        self.last_key: dict[str, Key] = {}
        """per endpoint, the series of its latest frame or header (errors without a series number go to it)."""
        self.logged_errors: dict[str, int] = {}
        """per endpoint, stream errors seen (the log is thinned out past 100)."""
        self.started: set[Key] = set()
        """series whose header or frames arrived (restored bindings count as started: their series was armed before the tell)."""
        self.retired: dict[str, OrderedDict[int, str]] = {}
        """per endpoint, series of ended sessions (series number -> that session's id), oldest first, at most
        ``MAX_RETIRED_SERIES`` each: their bindings are dropped; a frame or end of one of them before a new header of that
        series number is a late one of the ended session (discarded, never held for or stored under another tell)."""

    # --- bindings ----------------------------------------------------------------------

    def binding(self, key: Key) -> Binding | None:
        return self.bindings.get(key)

    def is_bound(self, key: Key) -> bool:
        return key in self.bindings

    def bind(self, key: Key, binding: Binding) -> Buffered | None:
        """Bind series ``key`` (at its tell); returns what was buffered of it, now out of the buffer, for the caller to replay."""
        self.bindings[key] = binding
        entry = self.buffer.pop(key, None)
        if entry is not None:
            self._unbuffer(entry)
        return entry

    def adopt(self, endpoint: str, bindings: dict[int, Binding]) -> None:
        """Take over a restored session's bindings, by series number."""
        for series, bind in bindings.items():
            self.bindings[(endpoint, series)] = bind
            self.started.add((endpoint, series))

    def session_ended(self, session_id: str) -> None:
        """Drop the bindings of an ended session and retire its series (``retired``): a late frame of one is discarded, not
        buffered as untold, and the series number is free for a later session's tell."""
        keys = [key for key, bind in self.bindings.items() if bind.session_id == session_id]
        for key in keys:
            del self.bindings[key]
            self.started.discard(key)
            retired = self.retired.setdefault(key[0], OrderedDict())
            retired.pop(key[1], None)
            retired[key[1]] = session_id
            while len(retired) > MAX_RETIRED_SERIES:
                retired.popitem(last=False)

    def retired_to(self, key: Key) -> str | None:
        """The ended session series ``key`` was retired from (its frames now are late ones), or None."""
        retired = self.retired.get(key[0])
        return None if retired is None else retired.get(key[1])

    def unretire(self, key: Key) -> None:
        """A header of retired series ``key`` arrived: a new run of that series number begins; its frames are routed as any."""
        retired = self.retired.get(key[0])
        if retired is not None:
            retired.pop(key[1], None)
            if not retired:
                del self.retired[key[0]]

    @staticmethod
    def late(key: Key, idx: int, ended_state: str) -> FrameResult:
        """The verdict on frame ``idx`` of a retired series ``key`` (its session ended as ``ended_state``): refused, ``unexpected``."""
        return FrameResult.refused("unexpected", f"series {key[1]}: frame {idx} arrived after the session was {ended_state}")

    def series_end(self, key: Key) -> Binding | None:
        """The detector ended series ``key``: its binding (marked ended), or None if it is untold (a buffered series is marked ended)."""
        bind = self.bindings.get(key)
        if bind is not None:
            bind.ended = True
        elif key in self.buffer:
            self.buffer[key].ended = True
        return bind

    @staticmethod
    def unbind_slots(bind: Binding, lost: set[int]) -> None:
        """Forget the frames of ``bind`` bound to slots ``lost`` (its series ended short): a late one is then refused."""
        bind.frame_to_slot = {i: slot for i, slot in bind.frame_to_slot.items() if slot not in lost}

    def series_start(self, key: Key) -> bool:
        """A header of series ``key`` arrived; True if that series had started already: a new detector run reuses its number."""
        reused = key in self.started
        self.started.add(key)
        return reused

    def new_run(self, key: Key) -> Buffered | None:
        """Retire series ``key`` of the earlier detector run: its binding is forgotten, its untold frames leave the buffer (returned).

        Call after ending the bound batch's series (its missing positions are re-issued):
        the new run's frames are then held for their own tell, never stored in the old slots.
        """
        self.bindings.pop(key, None)
        entry = self.buffer.pop(key, None)
        if entry is not None:
            self._unbuffer(entry)
        return entry

    # --- frames ------------------------------------------------------------------------

    @staticmethod
    def admit(key: Key, idx: int, image: np.ndarray, bind: Binding, s: Session | None, ended_state: str | None = None) -> FrameResult:
        """Whether frame ``idx`` of bound series ``key`` may be stored: ``ADMITTED`` with its slot, or ``REFUSED``.

        ``s`` is the bound session in progress (None: it has ended, as ``ended_state``). A
        frame refused (shape, counts) leaves its slot empty: a valid resend is admitted.
        """
        slot = bind.frame_to_slot.get(idx)
        if s is None:
            kind = "other" if slot is not None else "unexpected"
            return FrameResult.refused(kind, f"series {key[1]}: frame {idx} arrived after the session was {ended_state}")
        if slot is None:
            return FrameResult.refused("unexpected", f"series {key[1]}: frame {idx} is not bound to a position (beyond the series or its series ended short)")
        if s.received[slot]:
            return FrameResult.refused("duplicated", f"series {key[1]}: frame {idx} already stored")
        if image.shape != (s.k, s.k):
            return FrameResult.refused("malformed", f"series {key[1]}: frame {idx} has shape {image.shape}, expected ({s.k}, {s.k})")
        if image.dtype.kind != "u":  # detectors count in unsigned integers (codec.check_dtype); anything else would be cast blindly
            return FrameResult.refused("malformed", f"series {key[1]}: frame {idx} has pixel type {image.dtype}, not an unsigned integer count")
        stored = s.pixel_dtype
        # pixels at the frame type's largest count are the detector's marks of masked (pixel_mask_applied) or saturated pixels,
        # not counts: a 32-bit frame into a 16-bit file is refused only for real counts the file cannot hold (service.detector_mask)
        if image.dtype.itemsize > stored.itemsize and int(image.max()) > np.iinfo(stored).max and (peak := measured_peak(image)) > np.iinfo(stored).max:
            return FrameResult.refused(
                "malformed", f"series {key[1]}: frame {idx} has counts up to {peak}, more than the session file's {stored.name} holds ({np.iinfo(stored).max})"
            )
        return FrameResult(FrameOutcome.ADMITTED, slot=slot)

    @staticmethod
    def admit_run(
        bind: Binding, s: Session, frame_numbers: Sequence[int], images: Sequence[np.ndarray], stack: np.ndarray | None
    ) -> list[int] | None:
        """The slots of a run of frames (``frame_numbers``, their ``images``) of a series bound by ``bind`` to session ``s`` (in
        progress) when ``admit`` would admit each of them, at slots all distinct; None when that is not certain (then ``admit``
        each: its refusals, its errors).

        The common case in a few array operations instead of ``admit`` per frame: every frame
        bound, none of their slots filled, no slot twice, and the images (K, K) of a type no
        wider than the file's, or wider with counts (marks aside) all within the file's type
        (``stack``: the images as one (n, K, K) array, if they are one, and then ``images`` is
        not looked at; else each image's shape and type is looked at, and a wider one is
        admitted frame by frame).
        """
        slots = list(map(bind.frame_to_slot.get, frame_numbers))
        if None in slots:  # a frame not bound: "unexpected"
            return None
        at = np.array(slots, dtype=np.int64)
        if not (at[1:] > at[:-1]).all() and np.unique(at).size != at.size:  # a slot twice: "duplicated"
            return None
        if s.received[at].any():  # a slot filled already: "duplicated"
            return None
        k, stored = s.k, s.pixel_dtype
        if stack is None:
            shape, size = (k, k), stored.itemsize
            return slots if all(im.shape == shape and im.dtype.kind == "u" and im.dtype.itemsize <= size for im in images) else None
        if stack.shape != (len(slots), k, k) or stack.dtype.kind != "u":  # another shape or pixel type: "malformed"
            return None
        if stack.dtype.itemsize <= stored.itemsize:  # counts that fit by their type: admit does not look at them
            return slots
        # wider than the file's type: admit refuses a frame only if its largest count that is not a mark (measured_peak) exceeds the
        # file's type; none does when the run's does not
        top = np.iinfo(stored).max
        return slots if int(stack.max()) <= top or measured_peak(stack) <= top else None

    @staticmethod
    def place(s: Session, batch_id: int, slot: int, image: np.ndarray, arrived_at: float, live: bool, resume_told_timeout_s: float) -> FrameResult:
        """Put an admitted frame (already written to the session file) into slot ``slot`` in memory: ``STORED`` or ``BATCH_COMPLETE``.

        ``arrived_at``: perf_counter() (s) when the frame came off the socket. ``live``: it
        comes straight from the detector, not from the buffer at a tell; a chunk completed by
        a live frame counts its decision latency from that arrival, one completed at a tell
        from the tell. A complete batch leaves the session reconstructing.
        """
        s.patterns[slot] = fitted(image, s.patterns.dtype)
        s.received[slot] = True
        s.frames_received += 1
        b = s.batches[batch_id]
        if b.stall_deadline is not None:
            b.stall_deadline = time.monotonic() + resume_told_timeout_s
        b.first_arrival = arrived_at if b.first_arrival is None else min(b.first_arrival, arrived_at)
        b.last_arrival = arrived_at if b.last_arrival is None else max(b.last_arrival, arrived_at)
        if b.status == BatchStatus.TOLD and s.batch_complete(b):
            b.status = BatchStatus.COMPLETE
            s.last_frame_at = arrived_at if live else time.perf_counter()
            s.state = SessionState.RECONSTRUCTING
            return BATCH_COMPLETE
        return STORED

    @staticmethod
    def place_run(
        s: Session,
        batch_id: int,
        slots: list[int],
        images: list[np.ndarray],
        arrivals: list[float],
        resume_told_timeout_s: float,
        stack: np.ndarray | None = None,
    ) -> FrameResult:
        """``place`` for a run of admitted live frames of one batch (distinct ``slots``, (K, K) ``images``, ``arrivals`` perf_counter() s;
        ``stack``: the same images as one (n, K, K) array, if they are one).

        The same result as placing them one by one in order: a batch that completes does
        so with the last of them (its arrival is the session's ``last_frame_at``).
        """
        patterns, n = s.patterns, len(slots)
        at = np.asarray(slots, dtype=np.int64)
        lo = int(at[0])
        if stack is not None and lo >= 0 and int(at[-1]) - lo == n - 1 and (at[1:] - at[:-1] == 1).all():
            patterns[lo : lo + n] = fitted(stack, patterns.dtype)  # consecutive slots: one copy for the run
        else:
            for slot, image in zip(slots, images, strict=True):  # into the session's rows: no stacked copy of the run
                patterns[slot] = fitted(image, patterns.dtype)
        s.received[at] = True
        s.frames_received += n
        b = s.batches[batch_id]
        if b.stall_deadline is not None:
            b.stall_deadline = time.monotonic() + resume_told_timeout_s
        lo, hi = min(arrivals), max(arrivals)
        b.first_arrival = lo if b.first_arrival is None else min(b.first_arrival, lo)
        b.last_arrival = hi if b.last_arrival is None else max(b.last_arrival, hi)
        if b.status == BatchStatus.TOLD and s.batch_complete(b):
            b.status = BatchStatus.COMPLETE
            s.last_frame_at = arrivals[-1]
            s.state = SessionState.RECONSTRUCTING
            return BATCH_COMPLETE
        return STORED

    # --- the pre-tell buffer -----------------------------------------------------------

    def _entry(self, key: Key) -> Buffered:
        entry = self.buffer.get(key)
        if entry is None:
            entry = self.buffer[key] = Buffered()
        return entry

    def buffer_frame(self, key: Key, idx: int, image: np.ndarray, arrived_at: float) -> tuple[FrameResult, list[Eviction]]:
        """Hold a frame of a series not told yet: ``BUFFERED`` (or ``REFUSED`` as a duplicate, noted for the tell) and the series evicted.

        The oldest series go when ``max_buffered_frames`` or ``max_buffered_bytes`` is
        exceeded; their frames are counted as ``buffer_overflow`` against the endpoint. A view
        (a row of a decoded batch, of the compiled loop's arena) is copied: held until a tell,
        it must not pin the whole array it is a view of (``NativeReceiveLoop.receive``).
        """
        if image.base is not None:
            image = image.copy()
        entry = self._entry(key)
        held = entry.frames.setdefault(idx, [])
        if len(held) >= MAX_CANDIDATES:
            detail = f"series {key[1]}: duplicated frame {idx} (before tell)"
            entry.errors.append(("duplicated", detail))
            return FrameResult.refused("duplicated", detail), []
        held.append((image, arrived_at))
        entry.count += 1
        entry.nbytes += image.nbytes
        self.buffered_frames += 1
        self.buffered_bytes += image.nbytes
        evicted = []
        while (self.buffered_frames > self.max_buffered_frames or self.buffered_bytes > self.max_buffered_bytes) and self.buffer:
            old_key, old = self.buffer.popitem(last=False)
            self._unbuffer(old)
            self.count_endpoint_error(old_key[0], "buffer_overflow", old.count)
            evicted.append(Eviction(old_key, old.count))
        return BUFFERED, evicted

    def _unbuffer(self, entry: Buffered) -> None:
        """Account for ``entry`` leaving the buffer (told or evicted)."""
        self.buffered_frames -= entry.count
        self.buffered_bytes -= entry.nbytes

    # --- stream errors -----------------------------------------------------------------

    def error_key(self, endpoint: str, series: int | None) -> Key | None:
        """The series a stream error of ``endpoint`` belongs to: its own, else that of the endpoint's latest frame or header."""
        return (endpoint, series) if series is not None else self.last_key.get(endpoint)

    def hold_error(self, endpoint: str, series: int | None, kind: str, reason: str) -> None:
        """An error no session in progress takes: noted for the tell of its series if it names one, else counted against the endpoint."""
        if series is not None:
            self._entry((endpoint, series)).errors.append((kind, f"series {series}: {reason}"))
        else:
            self.count_endpoint_error(endpoint, kind)

    def count_endpoint_error(self, endpoint: str, kind: str, n: int = 1) -> None:
        counts = self.endpoint_errors.setdefault(endpoint, {})
        counts[kind] = counts.get(kind, 0) + n

    def count_logged(self, endpoint: str) -> int:
        """Count one more stream error of ``endpoint``; returns how many so far."""
        self.logged_errors[endpoint] = n = self.logged_errors.get(endpoint, 0) + 1
        return n


def frame_runs(events: list) -> list:
    """``events`` in order, each run of two or more consecutive ``Frame``\\ s of one series as one list (the rest as they are)."""
    out: list = []
    run: list = []
    for ev in events:
        if isinstance(ev, Frame) and run and ev.series == run[0].series:
            run.append(ev)
            continue
        if run:
            out.append(run if len(run) > 1 else run[0])
        run = [ev] if isinstance(ev, Frame) else []
        if not run:
            out.append(ev)
    if run:
        out.append(run if len(run) > 1 else run[0])
    return out
