"""The session manager's stream side: detector events (from the receiver thread) become frames stored, held or refused.

A mixin of ``service.manager.SessionManager``, split off to keep each file to one
concern: it uses the manager's lock, router, sessions, metrics and settings, and its
``_fail`` and ``_enqueue``; the rules stay in ``service.routing`` and ``service.session``.
Every method here runs with the manager's lock held (``on_events`` takes it).
"""

from __future__ import annotations

import logging
import time
from operator import attrgetter

import numpy as np

from detector_stream.event_callbacks import handle_each
from detector_stream.events import Frame, FrameRun, SeriesEnd, SeriesStart, StreamError, stacked_images
from service.pattern_chunks import Blob
from service.routing import FrameOutcome, FrameResult, Key, frame_runs
from service.session import Binding, Session
from service.store import StoreError

log = logging.getLogger("service.manager")

_FRAME, _IMAGE, _BLOB, _RECEIVED_AT, _MARKED = attrgetter("frame"), attrgetter("image"), attrgetter("blob"), attrgetter("received_at"), attrgetter("marked")


class RunNotAdmitted(Exception):
    """Checking a run of frames raised (a bug, not bad input): its frames are applied one by one instead."""


class StreamHandling:
    """Detector events applied to the sessions (see the module docstring)."""

    # --- ingest (called from the receiver thread) --------------------------------------

    def on_event(self, endpoint: str, event) -> None:
        """One stream event from ``endpoint`` (see ``on_events``)."""
        self.on_events(endpoint, [event])

    def on_events(self, endpoint: str, events: list) -> None:
        """Stream events received from ``endpoint``, in order, under one acquisition of the lock (the receiver's drained batch).

        An event whose handling raises does not stop the others; the last such error is
        raised after the batch (the receiver counts it).
        """
        t0 = time.perf_counter()
        try:
            with self.lock:
                handle_each(frame_runs(events), lambda item: self._apply_item(endpoint, item, t0))
        finally:
            self.metrics.ingest_seconds.observe(time.perf_counter() - t0)

    def _apply_item(self, endpoint: str, item, handled_at: float) -> None:
        """One event, or a run (``FrameRun``, or a list of ``Frame``\\ s) of consecutive frames of one series: stored together when
        their series is bound to a session in progress. A ``FrameRun`` not stored so (some frame's verdict is not certain at once)
        goes the list way, then frame by frame."""
        if isinstance(item, FrameRun):
            if self._stored_as_run(endpoint, item, handled_at):
                return
            item = item.frames()
        if not isinstance(item, list):
            self._apply_event(endpoint, item, handled_at)
        elif not self._stored_as_run(endpoint, item, handled_at):
            handle_each(item, lambda event: self._apply_event(endpoint, event, handled_at))

    def _stored_as_run(self, endpoint: str, run: FrameRun | list[Frame], handled_at: float) -> bool:
        """``_store_run``, False (nothing done) where checking the run raised: then frame by frame, so that only that frame is lost
        (and its error raised)."""
        try:
            return self._store_run(endpoint, run, handled_at)
        except RunNotAdmitted:
            return False

    def _apply_event(self, endpoint: str, event, handled_at: float) -> None:
        router = self.router
        if isinstance(event, Frame):
            key = (endpoint, event.series)
            if (ended := router.retired_to(key)) is not None:
                self._late_frame(key, event.frame, ended)
                return
            router.last_key[endpoint] = key
            router.started.add(key)
            arrived_at = event.received_at if event.received_at is not None else handled_at  # off the socket, per frame
            if router.is_bound(key):
                self._store_frame(key, event.frame, event.image, arrived_at, live=True, blob=event.blob, marked=event.marked)
            else:
                self._buffer_frame(key, event.frame, event.image, arrived_at)
        elif isinstance(event, StreamError):
            self._stream_error(endpoint, event)
        elif isinstance(event, SeriesEnd):
            if router.retired_to((endpoint, event.series)) is None:  # else: a late end of an ended session's series
                self._series_end((endpoint, event.series))
        elif isinstance(event, SeriesStart):
            if event.pixel_mask is not None:
                self._header_mask(endpoint, event.pixel_mask)
            router.last_key[endpoint] = key = (endpoint, event.series)
            router.unretire(key)
            bind = router.binding(key)
            if router.series_start(key) and (bind is None or bind.run_begun):  # else: the header of the run its tell named
                self._new_run(key)
            self.series_started.notify_all()

    def _header_mask(self, endpoint: str, pixel_mask: np.ndarray) -> None:
        """The detector at ``endpoint`` sent its pixel mask (header detail ``all``): its masked pixels are invalid for every session
        in progress that reads it (``service.detector_mask``)."""
        for s in [s for s in self.sessions.values() if s.endpoint == endpoint and not s.terminal]:
            try:
                s.learn_invalid_pixels(header_mask=pixel_mask)
            except StoreError as err:
                self._fail(s, err)

    def _new_run(self, key: Key) -> None:
        """Series ``key`` started again: the detector restarted. The earlier run's batch is ended short (re-issued) and its series retired."""
        if self.router.is_bound(key):
            self._series_end(key)
        stale = self.router.new_run(key)
        dropped = 0 if stale is None else stale.count
        if dropped:
            self.router.count_endpoint_error(key[0], "stale_series", dropped)
            self.metrics.stream_errors.labels("stale_series").inc(dropped)
            self.metrics.buffered_frames.set(self.router.buffered_frames)
        log.warning("series %s of %s started again (a restarted detector?): a new run; %d untold frame(s) of the earlier one dropped", key[1], key[0], dropped)

    def _late_frame(self, key: Key, idx: int, session_id: str) -> None:
        """Discard frame ``idx`` of series ``key``, retired from ended session ``session_id``: counted against it (or the endpoint)."""
        f = self.finished.get(session_id)
        verdict = self.router.late(key, idx, "ended" if f is None else str(f.state))
        self.metrics.stream_errors.labels(verdict.kind).inc()
        self._charge_ended(key[0], session_id, verdict.kind, verdict.detail)

    def _charge_ended(self, endpoint: str, session_id: str, kind: str, detail: str) -> None:
        """Count a problem of a series retired from ended session ``session_id`` against it (against ``endpoint`` if it is gone)."""
        f = self.finished.get(session_id)
        if f is not None:
            f.note_error(kind, detail)
        else:
            self.router.count_endpoint_error(endpoint, kind)

    def _stream_error(self, endpoint: str, ev: StreamError) -> None:
        """Count ``ev`` by its kind and charge it to its series' session, else hold it for the series' tell or the endpoint."""
        kind = str(ev.kind)  # set where the error was found (detector_stream.errors.StreamErrorKind), never guessed from the reason text
        self.metrics.stream_errors.labels(kind).inc()
        n = self.router.count_logged(endpoint)
        if n <= 100 or n % 1000 == 0:  # a flood of bad input must not flood the log
            log.warning("stream %s: %s%s", endpoint, ev.reason, f" ({n} problems so far)" if n >= 100 else "")
        if ev.series is not None and (ended := self.router.retired_to((endpoint, ev.series))) is not None:
            self._charge_ended(endpoint, ended, kind, f"series {ev.series}: {ev.reason}")  # not held for a later tell of that number
            return
        key = self.router.error_key(endpoint, ev.series)
        bind = self.router.binding(key) if key is not None else None
        if bind is not None and (s := self.sessions.get(bind.session_id)) is not None:
            s.note_error(kind, f"series {key[1]}: {ev.reason}")
            return
        self.router.hold_error(endpoint, ev.series, kind, ev.reason)

    def _buffer_frame(self, key: Key, idx: int, image: np.ndarray, arrived_at: float) -> None:
        """Hold a frame of a series not told yet (``FrameRouter.buffer_frame``); count and log the series it evicts."""
        result, evicted = self.router.buffer_frame(key, idx, image, arrived_at)
        if result.outcome != FrameOutcome.BUFFERED:
            return  # a duplicate: noted for the tell
        entry = self.router.buffer.get(key)
        if entry is not None and entry.count == 1 and not any(s.endpoint == key[0] and not s.terminal for s in self.sessions.values()):
            entry.unclaimed = True  # e.g. the sessions name another endpoint for this detector: say so, or the scan waits in silence
            log.warning("frames of series %s arrive from %s, but no session in progress reads that stream; they are held for a tell", key[1], key[0])
        if entry is not None and entry.unclaimed:
            self.metrics.unclaimed_frames.inc()
        for old in evicted:
            self.metrics.stream_errors.labels("buffer_overflow").inc(old.count)
            log.warning("ingest buffer full: dropped %d untold frame(s) of series %s on %s", old.count, old.key[1], old.key[0])
        self.metrics.buffered_frames.set(self.router.buffered_frames)

    def _store_frame(
        self, key: Key, idx: int, image: np.ndarray, arrived_at: float, live: bool = False, blob: Blob | None = None, marked: int | None = None
    ) -> bool:
        """Put one frame into its session's slot; True if stored. ``live``: it comes straight from the detector (not from the buffer at a tell);
        ``blob``: the detector's blob of it (``Frame.blob``), for the file; ``marked``: ``Frame.marked``.

        The router decides (``FrameRouter.admit``, ``FrameRouter.place``); this applies the
        side effects: error counts, the file write, metrics, and for a completed batch the
        flush, the compute queue and waking asks.
        """
        bind = self.router.bindings[key]
        bind.run_begun = True
        s = self.sessions.get(bind.session_id)
        f = self.finished.get(bind.session_id) if s is None else None
        verdict = self.router.admit(key, idx, image, bind, s, None if f is None else f.state)
        if verdict.outcome == FrameOutcome.REFUSED:
            self.metrics.stream_errors.labels(verdict.kind).inc()
            if s is not None:
                s.note_error(verdict.kind, verdict.detail)
            elif f is not None:
                f.note_error(verdict.kind, verdict.detail)
            return False
        try:
            s.store.write_frame(verdict.slot, image, blob)
            s.learn_invalid_pixels([image], marked=[marked])
        except StoreError as err:
            self._fail(s, err)
            return False
        placed = self.router.place(s, bind.batch_id, verdict.slot, image, arrived_at, live, self.settings.resume_told_timeout_s)
        self.metrics.frames.inc()
        self.metrics.bytes.inc(image.nbytes)
        if placed.outcome == FrameOutcome.BATCH_COMPLETE:
            self._batch_complete(s)
        return True

    def _store_run(self, endpoint: str, run: FrameRun | list[Frame], handled_at: float) -> bool:
        """Store a run of frames of one bound series in one go (``admit_run``, else ``admit`` each; then one queueing for the file, one ``place_run``).

        False, with nothing done, when the run is not for a session in progress (the caller
        then applies each frame alone), or when it is a ``FrameRun`` that ``admit_run`` cannot
        admit whole (the caller then stores its frames as a list). The outcome is the same as
        frame by frame: a frame ``admit`` refuses, or a second frame for a slot, is refused
        with the same error; the batch completes with the last frame admitted (after it,
        every slot of the batch is filled, so any later frame of the series would be refused).
        """
        router = self.router
        key = (endpoint, run.series if isinstance(run, FrameRun) else run[0].series)
        bind = router.bindings.get(key)
        s = self.sessions.get(bind.session_id) if bind is not None else None
        if s is None or router.retired_to(key) is not None:  # a retired series' frames are late ones: discarded one by one
            return False
        try:  # nothing is changed until every frame has its verdict
            if isinstance(run, FrameRun):  # decoded back to back: its frames' images are the rows of its stack
                stack, refused = run.stack, ()
                slots = router.admit_run(bind, s, run.frame_numbers, (), stack)
                if slots is None:
                    return False
                images, blobs, marked, stamps = list(stack), run.blobs, run.marked, run.received_at
            else:
                stack = stacked_images(run)  # the frames as one array where they were decoded back to back (no copy)
                slots = router.admit_run(bind, s, list(map(_FRAME, run)), list(map(_IMAGE, run)), stack)  # the common case, checked at once
                kept, refused = run, ()
                if slots is None:
                    slots, kept, refused = self._admit_each(key, run, bind, s)
                    stack = stacked_images(kept) if len(kept) < len(run) else stack
                images, blobs, marked, stamps = list(map(_IMAGE, kept)), list(map(_BLOB, kept)), list(map(_MARKED, kept)), list(map(_RECEIVED_AT, kept))
        except Exception as err:
            raise RunNotAdmitted(str(err)) from err
        router.last_key[endpoint] = key
        router.started.add(key)
        bind.run_begun = True
        for verdict in refused:
            self.metrics.stream_errors.labels(verdict.kind).inc()
            s.note_error(verdict.kind, verdict.detail)
        if not images:
            return True
        arrivals = [handled_at if t is None else t for t in stamps]
        try:  # images not copied: nothing writes into a decoded frame (a fresh allocation per batch costs page faults)
            s.store.write_frames(slots, images, blobs)
            s.learn_invalid_pixels(images, stack=stack, marked=marked)  # frames the loop saw unmarked: not reduced
        except StoreError as err:
            self._fail(s, err)
            return True
        placed = router.place_run(s, bind.batch_id, slots, images, arrivals, self.settings.resume_told_timeout_s, stack=stack)
        self.metrics.frames.inc(len(images))
        self.metrics.bytes.inc(stack.nbytes if stack is not None else sum(im.nbytes for im in images))
        if placed.outcome == FrameOutcome.BATCH_COMPLETE:
            self._batch_complete(s)
        return True

    def _admit_each(self, key: Key, frames: list[Frame], bind: Binding, s: Session) -> tuple[list[int], list[Frame], list[FrameResult]]:
        """``FrameRouter.admit`` of each frame of a run, in order, a second frame for one slot refused as a duplicate whatever else is
        wrong with it (as ``admit`` refuses a frame for a filled slot): (slots, frames admitted, verdicts of those refused). Nothing
        is changed."""
        slots, kept, taken, refused = [], [], set(), []
        for ev in frames:
            if bind.frame_to_slot.get(ev.frame) in taken:  # frame by frame its slot would be filled: admit looks at that first
                verdict = FrameResult.refused("duplicated", f"series {key[1]}: frame {ev.frame} already stored")
            else:
                verdict = self.router.admit(key, ev.frame, ev.image, bind, s)
            if verdict.outcome == FrameOutcome.REFUSED:
                refused.append(verdict)
                continue
            taken.add(verdict.slot)
            slots.append(verdict.slot)
            kept.append(ev)
        return slots, kept, refused

    def _batch_complete(self, s: Session) -> None:
        """Every frame of the session's current batch is in: onto disk, then queued for its reconstruction and plan."""
        self.metrics.batches_complete.inc()
        try:
            s.flush_frames()
        except StoreError as err:
            self._fail(s, err)
            return
        self._enqueue(s)
        s.notify()

    def _series_end(self, key: Key) -> None:
        """The detector ended series ``key``: a told batch still missing frames of it goes back to issued.

        Its missing slots are unbound (in memory and in the file), so a late frame of the
        ended series is refused rather than stored where a new tell's series belongs, and
        a restart re-issues them instead of waiting for them.
        """
        bind = self.router.series_end(key)
        if bind is None:  # not told yet: the buffered series is marked ended
            return
        s = self.sessions.get(bind.session_id)
        if s is None or s.terminal:
            return
        missing = s.short_of(bind.batch_id, key[1])
        if missing is not None:
            self.reissue_missing(s, bind, missing, f"series {key[1]} ended with {len(missing)} position(s) of batch {bind.batch_id} missing; batch re-issued")

    def reissue_missing(self, s: Session, bind: Binding, missing: np.ndarray, note: str) -> bool:
        """Batch ``bind.batch_id`` of ``s`` goes back to issued: its slots ``missing`` are unbound from the series (memory, then
        file), so a late frame of it is refused, and ask offers them again. False if the file failed (``s`` failed). Lock held.
        """
        s.note_error("reissued", note)
        self.router.unbind_slots(bind, {int(v) for v in missing})
        try:
            s.store.unbind(missing, bind.batch_id)
        except StoreError as err:
            self._fail(s, err)
            return False
        s.reissue(bind.batch_id)
        s.notify()
        return True

    def reissue_stalled(self) -> int:
        """Re-issue the told batches resumed from a restart whose series sent none of their missing frames in time; returns how many.

        The old process may have received (and lost) a series' last frames and its end;
        the detector will not send them again, so their positions are acquired anew.
        """
        now, n = time.monotonic(), 0
        with self.lock:
            for s in list(self.sessions.values()):
                for b in s.stalled_batches(now):
                    if self.router.is_bound(key := (s.endpoint, b.series)):
                        s.note_error("other", f"series {b.series}: no frame for {self.settings.resume_told_timeout_s:g} s after a restart")
                        self._series_end(key)
                        n += 1
        return n

    def flush_all(self) -> None:
        """Flush every session with unflushed frames (the flusher thread calls this). Each session's queued frames are taken
        under the manager's lock and written outside it: the ingest goes on while the file is written (it waited for every
        write before, which halved the frames/s a detector could send). A flush under the lock (a batch complete) waits
        for such a write of its session, so its frames are durable, in order, when it returns."""
        with self.lock:
            ids = [sid for sid, s in self.sessions.items() if s.unflushed]
        for sid in ids:
            with self.lock:
                s = self.sessions.get(sid)
                if s is None or not s.unflushed:
                    continue
                received, pending = s.frames_received, s.store.take_pending()
            try:
                s.store.write_taken(pending)
                failure = None
            except StoreError as err:  # whatever failed, a bug included: the flusher thread goes on with the other sessions
                failure = err
            with self.lock:
                live = self.sessions.get(sid) is s and not s.terminal
                if failure is not None and live:
                    self._fail(s, failure)
                elif failure is not None:  # it ended meanwhile: its own final flush raised this error (the store keeps it)
                    log.error("session %s: frames could not be written after it ended (%s)", sid, failure)
                elif live:
                    s.frames_persisted = max(s.frames_persisted, received)

