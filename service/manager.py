"""The session manager: sessions, ask/tell, matching detector frames to sessions, work for the compute worker.

One lock guards all session state. REST handlers, the ingest thread, the flusher and
the compute worker call in; nothing here computes (the worker reconstructs and plans
outside the lock and hands results back through ``publish``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from detector_stream.events import Frame, SeriesEnd, SeriesStart, StreamError
from detector_stream.receiver import handle_each
from service.compute import ReconJob, ReconOutput
from service.metrics import ServiceMetrics
from service.planner import PlannerChoice, PlanRequest, resolve_planner
from service.problems import Problem
from service.session import Batch, Session, classify_stream_error
from service.settings import ServiceSettings
from service.store import SESSION_SUFFIX, SessionStore, StoredReconstruction, StoreError

log = logging.getLogger(__name__)


@dataclass
class Binding:
    """Detector series (endpoint, series) -> one batch of one session: frame index -> slot."""

    session_id: str
    batch_id: int
    frame_to_slot: dict[int, int]
    ended: bool = False


@dataclass
class Buffered:
    """Frames and problems of a series not yet told."""

    frames: dict[int, np.ndarray] = field(default_factory=dict)
    arrived: dict[int, float] = field(default_factory=dict)
    """perf_counter() when each frame arrived (a chunk's acquisition time is measured from arrivals, not the tell)."""
    errors: list[tuple[str, str]] = field(default_factory=list)
    ended: bool = False


@dataclass
class WorkItem:
    session_id: str
    batch_id: int | None
    job: ReconJob | None
    plan: PlanRequest | None
    planner: object | None
    last_frame_at: float | None


class SessionManager:
    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.lock = threading.RLock()
        self.work_ready = threading.Condition(self.lock)
        self.sessions: dict[str, Session] = {}
        self.bindings: dict[tuple[str, int], Binding] = {}
        self.buffer: OrderedDict[tuple[str, int], Buffered] = OrderedDict()
        self.buffered_frames = 0
        self.endpoint_errors: dict[str, dict[str, int]] = {}
        self.last_key: dict[str, tuple[str, int]] = {}
        self._logged_errors: dict[str, int] = {}
        self.queue: list[str] = []
        self.accepting = True
        self.load_errors: list[str] = []
        self.storage_error: str | None = None
        self.storage_error_at: float | None = None
        self.on_endpoint = None
        """callback(endpoint) so the ingest connects to a session's detector."""
        self._planners: dict[str, PlannerChoice] = {}
        self.decision_samples: deque[float] = deque(maxlen=10_000)
        """recent decision latencies (s): last frame of a chunk -> next batch published."""

    # --- helpers ---------------------------------------------------------------------

    def planner_for(self, strategy: str) -> PlannerChoice:
        if strategy not in self._planners:
            self._planners[strategy] = resolve_planner(strategy, self.settings.policy_checkpoint)
        return self._planners[strategy]

    def recent_storage_error(self, within_s: float = 60.0) -> str | None:
        """The last storage failure if it happened within ``within_s`` seconds (readiness reports it)."""
        if self.storage_error_at is not None and time.monotonic() - self.storage_error_at < within_s:
            return self.storage_error
        return None

    def get(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            raise Problem(404, f"no session {sid!r}", kind="unknown-session")
        return s

    def _active_gauge(self) -> None:
        self.metrics.sessions_active.set(sum(1 for s in self.sessions.values() if not s.terminal))

    def _enqueue(self, s: Session) -> None:
        if s.session_id not in self.queue:
            self.queue.append(s.session_id)
        self.metrics.recon_queue.set(len(self.queue))
        self.work_ready.notify_all()

    def has_work(self) -> bool:
        """Some session's chunk is queued for the compute worker."""
        with self.lock:
            return bool(self.queue)

    def is_active(self, session_id: str) -> bool:
        """The session exists and is not done, stopped or failed."""
        with self.lock:
            s = self.sessions.get(session_id)
            return s is not None and not s.terminal

    def _fail(self, s: Session, err: Exception | str) -> None:
        msg = str(err)
        log.error("session %s failed: %s", s.session_id, msg)
        s.state, s.error = "failed", msg
        if isinstance(err, StoreError):
            self.metrics.storage_errors.inc()
            self.storage_error, self.storage_error_at = msg, time.monotonic()
        try:
            s.store.set_state("failed", msg)
        except StoreError:
            pass
        s.notify()
        self._active_gauge()

    # --- sessions --------------------------------------------------------------------

    def create(self, params: dict) -> dict:
        with self.lock:
            if not self.accepting:
                raise Problem(503, "the service is shutting down and takes no new sessions", headers={"Retry-After": "5"})
            if sum(1 for s in self.sessions.values() if not s.terminal) >= self.settings.max_sessions:
                raise Problem(409, f"{self.settings.max_sessions} sessions are active already (max_sessions)", kind="too-many-sessions")
            if params["budget"] > self.settings.max_budget:
                raise Problem(422, f"budget: at most {self.settings.max_budget} positions", kind="invalid-request")
            self._check_size(params)
            choice = self.planner_for(params["strategy"])
            sid = uuid.uuid4().hex[:16]
            planner_info = {"requested": choice.requested, "used": choice.planner.name, "version": choice.planner.version, "fallback": choice.fallback}
            try:
                store = SessionStore.create(self.settings.storage / f"{sid}{SESSION_SUFFIX}", sid, params, planner_info)
            except StoreError as err:
                self.metrics.storage_errors.inc()
                self.storage_error, self.storage_error_at = str(err), time.monotonic()
                raise Problem(507, str(err), kind="storage-unavailable") from None
            s = Session(sid, params, choice, store)
            self.sessions[sid] = s
            self._enqueue(s)  # plans the first batch
            self._active_gauge()
            status = s.status()
        if self.on_endpoint is not None:
            self.on_endpoint(params["detector_endpoint"])
        return status

    def _check_size(self, params: dict) -> None:
        """422 for a session whose grid or frame stack would not fit (before anything is allocated)."""
        from service.compute import BeamKey

        k = int(params["detector_pixels"])
        beam = BeamKey(params["energy_ev"], params["convergence_mrad"], k, params["detector_pixel_mrad"], params["defocus_nm"])
        side = max(params["fov_nm"][2], params["fov_nm"][3]) / beam.pixel_nm + k
        if not side <= self.settings.max_grid_pixels:
            raise Problem(
                422,
                f"fov_nm: the reconstruction grid would be {side:.0f} pixels across at {beam.pixel_nm:.4g} nm/pixel (max_grid_pixels {self.settings.max_grid_pixels})",
                kind="invalid-request",
            )
        stack = int(params["budget"]) * k * k * 4
        if stack > self.settings.max_session_bytes:
            raise Problem(422, f"budget x detector_pixels^2 needs {stack / 2**30:.1f} GiB of frames (max_session_bytes {self.settings.max_session_bytes / 2**30:.1f} GiB)", kind="invalid-request")

    def delete(self, sid: str) -> dict:
        with self.lock:
            s = self.get(sid)
            if not s.terminal:
                s.state = "stopped"
                try:
                    s.store.set_state("stopped")
                    s.store.flush()
                except StoreError as err:
                    s.error = str(err)
                s.notify()
            self._active_gauge()
            return s.status()

    # --- ask / tell ------------------------------------------------------------------

    def try_ask(self, sid: str, waiter=None) -> dict | None:
        """The batch to acquire now, ``done``, or None (then ``waiter`` = (loop, asyncio.Event) is woken on change)."""
        with self.lock:
            s = self.get(sid)
            if s.state in ("stopped", "failed"):
                raise Problem(409, f"session {sid} is {s.state}" + (f": {s.error}" if s.error else ""), kind="wrong-state")
            if s.state == "done":
                return {"batch_id": None, "positions_nm": [], "done": True}
            b = s.current
            if b is not None and b.status == "issued":
                if s.state == "created":
                    s.state = "acquiring"
                missing = s.missing_slots(b)
                return {"batch_id": b.batch_id, "positions_nm": s.positions_issued[missing].tolist(), "done": False}
            if waiter is not None:
                s.waiters.append(waiter)
            return None

    def tell(self, sid: str, batch_id: int, series: int, measured: list | None) -> tuple[int, dict]:
        with self.lock:
            s = self.get(sid)
            if s.terminal:
                raise Problem(409, f"session {sid} is {s.state}", kind="wrong-state")
            if batch_id >= len(s.batches):
                raise Problem(409, f"batch {batch_id} has not been issued (ask first)", kind="wrong-state")
            b = s.batches[batch_id]
            key = (s.endpoint, series)
            if b.series == series and b.status != "issued":
                return 200, self._tell_body(s, b, True)
            if b.status != "issued":
                raise Problem(409, f"batch {batch_id} is {b.status} (told with series {b.series})", kind="wrong-state")
            bound = self.bindings.get(key)
            if bound is not None and (bound.session_id != sid or bound.batch_id != batch_id or bound.ended):
                raise Problem(409, f"series {series} of {s.endpoint} is already bound to another batch or has ended", kind="series-taken")
            missing = s.missing_slots(b)
            meas = None
            if measured is not None:
                meas = np.asarray(measured, dtype=np.float64).reshape(-1, 2)
                if meas.shape[0] != len(missing):
                    raise Problem(422, f"measured_positions_nm has {meas.shape[0]} rows, the batch has {len(missing)} positions", kind="invalid-request")
            try:
                s.store.bind(missing, series, meas)
            except StoreError as err:
                self._fail(s, err)
                raise Problem(507, str(err), kind="storage-unavailable") from None
            if meas is not None:
                s.positions_used[missing] = meas
            self.bindings[key] = Binding(sid, batch_id, {i: int(slot) for i, slot in enumerate(missing)})
            b.series, b.told_slots, b.status = series, missing, "told"
            if s.state == "created":
                s.state = "acquiring"
            buffered = self.buffer.pop(key, None)
            if buffered is not None:
                self.buffered_frames -= len(buffered.frames)
                self.metrics.buffered_frames.set(self.buffered_frames)
                for kind, msg in buffered.errors:
                    s.note_error(kind, msg)
                for idx in sorted(buffered.frames):
                    self._store_frame(key, idx, buffered.frames[idx], buffered.arrived[idx])
                if buffered.ended:
                    self._series_end(key)
            return 202, self._tell_body(s, b, True)

    @staticmethod
    def _tell_body(s: Session, b: Batch, accepted: bool) -> dict:
        told = b.told_slots if b.told_slots is not None else b.slots
        return {
            "batch_id": b.batch_id,
            "series": b.series,
            "accepted": accepted,
            "frames_expected": len(told),
            "frames_received": int(s.received[told].sum()),
        }

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
                handle_each(events, lambda event: self._apply_event(endpoint, event, t0))
        finally:
            self.metrics.ingest_seconds.observe(time.perf_counter() - t0)

    def _apply_event(self, endpoint: str, event, handled_at: float) -> None:
        if isinstance(event, Frame):
            key = (endpoint, event.series)
            self.last_key[endpoint] = key
            arrived_at = event.received_at if event.received_at is not None else handled_at  # off the socket, per frame
            if key in self.bindings:
                self._store_frame(key, event.frame, event.image, arrived_at, live=True)
            else:
                self._buffer_frame(key, event.frame, event.image, arrived_at)
        elif isinstance(event, StreamError):
            self._stream_error(endpoint, event)
        elif isinstance(event, SeriesEnd):
            key = (endpoint, event.series)
            if key in self.bindings:
                self._series_end(key)
            elif key in self.buffer:
                self.buffer[key].ended = True
        elif isinstance(event, SeriesStart):
            self.last_key[endpoint] = (endpoint, event.series)

    def _stream_error(self, endpoint: str, ev: StreamError) -> None:
        kind = classify_stream_error(ev.reason)
        self.metrics.stream_errors.labels(kind).inc()
        self._logged_errors[endpoint] = n = self._logged_errors.get(endpoint, 0) + 1
        if n <= 100 or n % 1000 == 0:  # a flood of bad input must not flood the log
            log.warning("stream %s: %s%s", endpoint, ev.reason, f" ({n} problems so far)" if n >= 100 else "")
        key = (endpoint, ev.series) if ev.series is not None else self.last_key.get(endpoint)
        if key is not None and key in self.bindings:
            s = self.sessions.get(self.bindings[key].session_id)
            if s is not None:
                s.note_error(kind, f"series {key[1]}: {ev.reason}")
                return
        if ev.series is not None:
            self._buffer_entry((endpoint, ev.series)).errors.append((kind, f"series {ev.series}: {ev.reason}"))
            return
        counts = self.endpoint_errors.setdefault(endpoint, {})
        counts[kind] = counts.get(kind, 0) + 1

    def _buffer_entry(self, key: tuple[str, int]) -> Buffered:
        entry = self.buffer.get(key)
        if entry is None:
            entry = self.buffer[key] = Buffered()
        return entry

    def _buffer_frame(self, key: tuple[str, int], idx: int, image: np.ndarray, arrived_at: float) -> None:
        entry = self._buffer_entry(key)
        if idx in entry.frames:
            entry.errors.append(("duplicated", f"series {key[1]}: duplicated frame {idx} (before tell)"))
            return
        entry.frames[idx] = image
        entry.arrived[idx] = arrived_at
        self.buffered_frames += 1
        while self.buffered_frames > self.settings.max_buffered_frames and self.buffer:
            old_key, old = self.buffer.popitem(last=False)
            self.buffered_frames -= len(old.frames)
            self.metrics.stream_errors.labels("buffer_overflow").inc(len(old.frames))
            counts = self.endpoint_errors.setdefault(old_key[0], {})
            counts["buffer_overflow"] = counts.get("buffer_overflow", 0) + len(old.frames)
            log.warning("ingest buffer full: dropped %d untold frame(s) of series %s on %s", len(old.frames), old_key[1], old_key[0])
        self.metrics.buffered_frames.set(self.buffered_frames)

    def _store_frame(self, key: tuple[str, int], idx: int, image: np.ndarray, arrived_at: float, live: bool = False) -> None:
        """Put one frame into its session's slot; ``live``: it comes straight from the detector (not from the buffer at a tell).

        A chunk completed by a live frame counts its decision latency from that frame's
        arrival; one completed at a tell (its frames were buffered) from the tell.
        """
        bind = self.bindings[key]
        s = self.sessions.get(bind.session_id)
        if s is None:
            return
        slot = bind.frame_to_slot.get(idx)
        if slot is None:
            s.note_error("unexpected", f"series {key[1]}: frame {idx} beyond the {len(bind.frame_to_slot)} positions told")
            self.metrics.stream_errors.labels("unexpected").inc()
            return
        if s.received[slot]:
            s.note_error("duplicated", f"series {key[1]}: frame {idx} already stored")
            self.metrics.stream_errors.labels("duplicated").inc()
            return
        if s.terminal:
            s.note_error("other", f"series {key[1]}: frame {idx} arrived after the session was {s.state}")
            return
        if image.shape != (s.k, s.k):
            s.note_error("malformed", f"series {key[1]}: frame {idx} has shape {image.shape}, expected ({s.k}, {s.k})")
            self.metrics.stream_errors.labels("malformed").inc()
            return
        stored = s.pixel_dtype
        if image.dtype.itemsize > stored.itemsize and (peak := int(image.max())) > np.iinfo(stored).max:
            s.note_error(
                "malformed", f"series {key[1]}: frame {idx} has counts up to {peak}, more than the session file's {stored.name} holds ({np.iinfo(stored).max})"
            )
            self.metrics.stream_errors.labels("malformed").inc()
            return
        try:
            s.store.write_frame(slot, image)
        except StoreError as err:
            self._fail(s, err)
            return
        s.patterns[slot] = image
        s.received[slot] = True
        s.frames_received += 1
        self.metrics.frames.inc()
        self.metrics.bytes.inc(image.nbytes)
        b = s.batches[bind.batch_id]
        b.first_arrival = arrived_at if b.first_arrival is None else min(b.first_arrival, arrived_at)
        b.last_arrival = arrived_at if b.last_arrival is None else max(b.last_arrival, arrived_at)
        if b.status == "told" and s.batch_complete(b):
            b.status = "complete"
            s.last_frame_at = arrived_at if live else time.perf_counter()
            s.state = "reconstructing"
            self.metrics.batches_complete.inc()
            try:
                s.store.flush()
                s.frames_persisted = s.frames_received
            except StoreError as err:
                self._fail(s, err)
                return
            self._enqueue(s)
            s.notify()

    def _series_end(self, key: tuple[str, int]) -> None:
        bind = self.bindings[key]
        bind.ended = True
        s = self.sessions.get(bind.session_id)
        if s is None or s.terminal:
            return
        b = s.batches[bind.batch_id]
        if b.status == "told" and not s.batch_complete(b):
            n = int((~s.received[b.slots]).sum())
            s.note_error("reissued", f"series {key[1]} ended with {n} position(s) of batch {b.batch_id} missing; batch re-issued")
            b.status, b.series = "issued", None
            s.state = "acquiring"
            s.notify()

    def flush_all(self) -> None:
        """Flush every session with unflushed frames (the flusher thread calls this)."""
        with self.lock:
            for s in self.sessions.values():
                if not s.terminal and s.frames_persisted != s.frames_received:
                    try:
                        s.store.flush()
                        s.frames_persisted = s.frames_received
                    except StoreError as err:
                        self._fail(s, err)

    # --- compute worker side -----------------------------------------------------------

    def take_work(self, timeout: float) -> list[WorkItem]:
        """Everything queued, as jobs (waits up to ``timeout`` s for work)."""
        with self.lock:
            if not self.queue:
                self.work_ready.wait(timeout)
            items = []
            now = time.perf_counter()
            for sid in self.queue:
                s = self.sessions.get(sid)
                if s is None or s.terminal:
                    continue
                item = self._work_item(s)
                if item.job is not None and item.last_frame_at is not None:
                    self.metrics.decision_wait_seconds.observe(now - item.last_frame_at)
                items.append(item)
            self.queue.clear()
            self.metrics.recon_queue.set(0)
            return items

    def _work_item(self, s: Session) -> WorkItem:
        b = s.pending_reconstruction()
        job = None
        n = s.n_issued
        if b is not None:
            n = int(b.slots[-1]) + 1
            init = s.potential.copy() if s.potential is not None else None
            # s.patterns[:n] is passed as a view, not copied under the lock: rows of complete batches are
            # never written again (a frame for a received slot is refused as a duplicate) and add_batch
            # replaces the array rather than writing below n_issued.
            x0, y0, w, h = s.fov  # measured positions may stray off the fov: the grid only covers the fov
            pos = np.stack([np.clip(s.positions_used[:n, 0], x0, x0 + w), np.clip(s.positions_used[:n, 1], y0, y0 + h)], axis=1)
            previous = s.batches[b.batch_id - 1] if b.batch_id > 0 else None
            n_old = int(previous.slots[-1]) + 1 if previous is not None and previous.status == "reconstructed" and init is not None else 0
            job = ReconJob(
                s.beam, s.fov, s.patterns[:n], pos, init, n_new=n - n_old, final=n >= s.budget, seed=b.batch_id, acquisition_s=_acquisition_s(b)
            )
        plan = None
        needs_plan = b is not None or not s.batches or s.current.status == "reconstructed"
        if needs_plan and n < s.budget:
            plan = PlanRequest(
                s.fov, s.budget, s.chunk, len(s.batches), s.positions_used[:n].copy(), None,
                n_next=min(s.chunk, s.budget - n), session_id=s.session_id,
            )
        return WorkItem(s.session_id, None if b is None else b.batch_id, job, plan, s.planner.planner, s.last_frame_at)

    def publish(self, item: WorkItem, recon: ReconOutput | None, positions: np.ndarray | None, error: str | None = None) -> None:
        """Apply a worker's result: store the reconstruction, issue the next batch (or finish), wake asks."""
        with self.lock:
            s = self.sessions.get(item.session_id)
            if s is None or s.terminal:
                return
            if error is not None:
                self._fail(s, error)
                return
            try:
                if recon is not None and item.batch_id is not None:
                    b = s.batches[item.batch_id]
                    rec = StoredReconstruction(
                        b.batch_id, recon.potential, recon.origin_nm, recon.pixel_nm, int(b.slots[-1]) + 1, recon.loss_history, s.planner.planner.version
                    )
                    s.store.write_reconstruction(s.n_reconstructed, rec)
                    s.potential, s.grid_origin_nm, s.grid_pixel_nm = recon.potential, recon.origin_nm, recon.pixel_nm
                    s.loss_history = recon.loss_history
                    s.n_reconstructed += 1
                    b.status = "reconstructed"
                if positions is not None and len(positions):
                    s.store.append_batch(len(s.batches), positions)
                    s.add_batch(len(s.batches), positions)
                    self.metrics.batches_issued.inc()
                    if s.state != "created":
                        s.state = "acquiring"
                    if item.last_frame_at is not None:
                        latency = time.perf_counter() - item.last_frame_at
                        self.metrics.decision_seconds.observe(latency)
                        self.decision_samples.append(latency)
                elif s.n_issued >= s.budget and all(b.status == "reconstructed" for b in s.batches):
                    s.state = "done"
                    s.store.set_state("done")
                    self._active_gauge()
                if s.state != "done":
                    s.store.set_state(s.state)
            except StoreError as err:
                self._fail(s, err)
                return
            if s.pending_reconstruction() is not None:
                self._enqueue(s)
            s.notify()

    def restore(self) -> int:
        """Load every session file in storage; resume the unfinished ones. Returns sessions loaded."""
        from service.resume import restore_sessions

        return restore_sessions(self)

    def close(self) -> None:
        with self.lock:
            self.accepting = False
            for s in self.sessions.values():  # SessionStore.close never raises: one full disk must not leave the other files open
                s.notify()
                s.store.close()


def _acquisition_s(b: Batch) -> float | None:
    """How long the microscope took for batch ``b`` (s): first to last frame's arrival, scaled from n - 1 dwell intervals to n."""
    n = len(b.slots)
    if b.first_arrival is None or b.last_arrival is None or n < 2:
        return None
    return max(b.last_arrival - b.first_arrival, 0.0) * n / (n - 1)
