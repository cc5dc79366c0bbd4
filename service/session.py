"""One acquisition session in memory: its batches, slots, frames, counters and latest reconstruction.

A *slot* is one position index of the session (0..budget-1). A batch is a run of
slots issued together. ``tell`` binds the batch's slots still missing a frame to a
detector series (frame i -> i-th missing slot). When every slot of a batch holds a
frame the batch is complete and waits for the compute worker. All methods are called
with the manager's lock held.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from service.compute import ReconOutput
from service.detector_mask import DetectorMask
from service.errors import ErrorKind, SessionError
from service.planner import PlannerChoice
from service.spec import Beam, SessionSpec, clip_to_fov
from service.store import SESSION_SUFFIX, SessionStore, StoredReconstruction, StoreError


class SessionState(StrEnum):
    """Where a session is: created -> acquiring <-> reconstructing -> done | stopped | failed."""

    CREATED = "created"
    ACQUIRING = "acquiring"
    RECONSTRUCTING = "reconstructing"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


class BatchStatus(StrEnum):
    """Where a batch is: issued (awaiting tell) -> told (awaiting frames) -> complete (awaiting reconstruction) -> reconstructed.

    A told batch whose series ended with positions missing goes back to issued.
    """

    ISSUED = "issued"
    TOLD = "told"
    COMPLETE = "complete"
    RECONSTRUCTED = "reconstructed"


TERMINAL = (SessionState.DONE, SessionState.STOPPED, SessionState.FAILED)
ERROR_KINDS = ("malformed", "truncated", "corrupt", "duplicated", "out_of_order", "missing", "unexpected", "incomplete_series", "reissued", "other")


@dataclass
class Binding:
    """Detector series (endpoint, series) -> one batch of one session: frame index -> slot.

    A series is bound once (at its tell) and never re-bound: frame i of series S is
    always stored at the slot bound to (S, i).
    """

    session_id: str
    batch_id: int
    frame_to_slot: dict[int, int]
    ended: bool = False
    run_begun: bool = False
    """a frame of its series has come through it (or it was restored with frames received): a later header of the same
    series number is a new detector run, not the start of the run its tell named (a tell may come before the header)."""


UNKNOWN_HAND_OUT = float("-inf")
"""``Batch.handed_out_at`` of a batch restored after a restart: when its positions were handed out is not known."""


@dataclass
class Batch:
    batch_id: int
    slots: np.ndarray
    """global slot indices of this batch."""
    status: BatchStatus = BatchStatus.ISSUED
    series: int | None = None
    told_slots: np.ndarray | None = None
    """slots bound by the last tell (frame i -> told_slots[i])."""
    issued_at: float = field(default_factory=time.monotonic)
    first_arrival: float | None = None
    """perf_counter() when the earliest of the batch's frames arrived (at ingest, even if it was buffered until the tell)."""
    last_arrival: float | None = None
    """perf_counter() when the latest of them arrived (last - first: the chunk's acquisition time)."""
    stall_deadline: float | None = None
    """monotonic() after which a told batch resumed from a restart, still missing frames, is re-issued
    (its series' last frames may have died with the old process); None: no deadline."""
    handed_out_at: float | None = None
    """perf_counter() when an ask first handed this batch out since it was (re-)issued: no frame of it can arrive earlier;
    None before that; ``UNKNOWN_HAND_OUT`` for a batch restored after a restart (the client may hold its positions from
    before: no frame is judged too early) until it is re-issued."""
    decision_latency_s: float | None = None
    """last frame of this batch received -> the next batch issued, s (set by the manager; None before, and for the last batch)."""
    update_shrunk: bool | None = None
    """this batch's reconstruction was shrunk to meet the deadline (``service.deadline``); None until it is reconstructed."""

    @property
    def acquisition_s(self) -> float | None:
        """How long the microscope took for this batch (s): first to last frame's arrival, scaled from n - 1 dwell intervals to n."""
        n = len(self.slots)
        if self.first_arrival is None or self.last_arrival is None or n < 2:
            return None
        return max(self.last_arrival - self.first_arrival, 0.0) * n / (n - 1)

    def timeline(self) -> dict:
        """This chunk for the live view: positions, status, acquisition time (s), ingest rate (frames/s), decision latency (s)."""
        acq = self.acquisition_s
        return {
            "batch_id": self.batch_id,
            "positions": len(self.slots),
            "status": str(self.status),
            "acquisition_s": acq,
            "frames_per_s": len(self.slots) / acq if acq else None,
            "decision_latency_s": self.decision_latency_s,
            "update_shrunk": self.update_shrunk,
        }


@dataclass
class Session:
    session_id: str
    params: dict
    planner: PlannerChoice
    store: SessionStore
    state: SessionState = SessionState.CREATED
    error: str | None = None
    created_unix: float = field(default_factory=time.time)
    positions_issued: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """(n_issued, 2) positions (x, y) the planner issued, nm, by slot."""
    positions_measured: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """(n_issued, 2) positions (x, y) the scan reported reaching (a tell's measured_positions_nm), nm; NaN where none was
    reported. Kept as the session file keeps them; ``positions_used`` is derived."""
    received: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    patterns: np.ndarray | None = None
    """(capacity, K, K) frames by slot, in the session file's pixel type (``pixel_dtype``: what the detector sent, as the file
    holds it; the reconstruction converts to float32 in the compute worker, off the ingest path); capacity >= n_issued (the
    whole budget: untouched rows cost no memory)."""
    batches: list[Batch] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    recent_errors: deque = field(default_factory=lambda: deque(maxlen=20))
    frames_received: int = 0
    frames_persisted: int = 0
    potential: np.ndarray | None = None
    grid_origin_nm: tuple[float, float] | None = None
    grid_pixel_nm: float | None = None
    loss_history: list[float] = field(default_factory=list)
    n_reconstructed: int = 0
    last_frame_at: float | None = None
    version: int = 0
    waiters: list = field(default_factory=list)
    on_change: Callable[[], None] | None = field(default=None, repr=False)
    """called (lock held, any thread; must not block) each time ``notify`` runs: the live view's change feed."""
    on_rows: Callable[[np.ndarray, int, int], None] | None = field(default=None, repr=False)
    """callback(patterns, lo, hi) when rows lo:hi of the frame memory were issued (the manager has them made resident: ``service.prefault``)."""
    held_reconstruction: tuple[int, StoredReconstruction] | None = field(default=None, repr=False)
    """(chunk index, reconstruction) recorded in memory but not yet in the file (``record_result(hold_reconstruction=True)``)."""
    probe: dict | None = None
    """the probe retrieval's state and outcome (``service.probe_job``); None until one is queued (and for a nominal probe)."""
    retrieved_beam: Beam | None = None
    """the beam with the retrieved aberrations, once retrieved: the session's reconstructions use it from then on."""
    spec: SessionSpec = field(init=False, repr=False)
    """``params`` read once, typed (``params`` is kept verbatim: the file and the status report carry it)."""
    detector_mask: DetectorMask = field(init=False, repr=False)
    """the detector pixels that are not measurements (``service.detector_mask``), learnt from the stream; the file keeps them."""

    def __post_init__(self) -> None:
        self.spec = SessionSpec.from_params(self.params)
        self.detector_mask = DetectorMask(self.spec.k)

    @classmethod
    def create(cls, storage: Path, params: dict, planner: PlannerChoice, compressed: bool = False) -> Session:
        """A new session with a new id and its file in ``storage`` (StoreError if the file cannot be created); ``compressed``:
        its patterns bitshuffle-LZ4 (``ServiceSettings.compressed_patterns``)."""
        sid = uuid.uuid4().hex[:16]
        p = planner
        info = {"requested": p.requested, "used": p.planner.name, "version": p.planner.version, "fallback": p.fallback}
        return cls(sid, params, planner, SessionStore.create(Path(storage) / f"{sid}{SESSION_SUFFIX}", sid, params, info, compressed))

    # --- derived ---------------------------------------------------------------------

    @property
    def budget(self) -> int:
        return self.spec.budget

    @property
    def chunk(self) -> int:
        return self.spec.chunk

    @property
    def endpoint(self) -> str:
        return self.spec.endpoint

    @property
    def fov(self) -> tuple[float, float, float, float]:
        return self.spec.fov

    @property
    def k(self) -> int:
        return self.spec.k

    @property
    def pixel_dtype(self) -> np.dtype:
        """Pixel type of the counts in the session file (``service.store.pixel_dtype``)."""
        return self.spec.pixel_dtype

    @property
    def beam(self) -> Beam:
        """The beam the session is reconstructed with: the retrieved one once there is one, else the request's."""
        return self.retrieved_beam or self.spec.beam

    def wants_probe_retrieval(self, after_frames: int) -> bool:
        """Asked for (``probe: retrieve``), never queued yet, still running, and ``after_frames`` frames (or the whole budget) are in."""
        return self.spec.retrieve_probe and self.probe is None and not self.terminal and self.frames_received >= min(after_frames, self.budget)

    def measured_frames(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of (patterns (N, K, K) in the file's pixel type, positions used (N, 2) nm) of every received frame, clipped to the
        fov (called under the manager's lock: the float32 copy a job needs is made by the job, ``probe_job.frames_chunk``)."""
        n = self.n_issued
        keep = np.flatnonzero(self.received[:n])
        return self.patterns[keep], clip_to_fov(self.positions_used[keep], self.fov)

    def probe_status(self) -> dict:
        """The status's ``probe``: the retrieval's state and outcome, or the request's aberrations (source nominal)."""
        return dict(self.probe) if self.probe is not None else self.spec.beam.report("nominal")

    @property
    def positions_used(self) -> np.ndarray:
        """(n_issued, 2) positions (x, y) the frames were taken at, nm: the measured one where reported, else the issued one."""
        return np.where(np.isnan(self.positions_measured), self.positions_issued, self.positions_measured)

    @property
    def n_issued(self) -> int:
        return int(self.positions_issued.shape[0])

    @property
    def current(self) -> Batch | None:
        return self.batches[-1] if self.batches else None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def missing_slots(self, batch: Batch) -> np.ndarray:
        return batch.slots[~self.received[batch.slots]]

    def batch_complete(self, batch: Batch) -> bool:
        """All of the batch's frames are in (called per frame: a slice, as a batch's slots are one contiguous run)."""
        first, last = int(batch.slots[0]), int(batch.slots[-1])
        if last - first + 1 == len(batch.slots):
            return bool(self.received[first : last + 1].all())
        return bool(self.received[batch.slots].all())

    def pending_reconstruction(self) -> Batch | None:
        """The oldest batch whose frames are all in but is not reconstructed."""
        for b in self.batches:
            if b.status == BatchStatus.COMPLETE:
                return b
        return None

    # --- mutation helpers ------------------------------------------------------------

    def add_batch(self, batch_id: int, positions: np.ndarray) -> Batch:
        n0 = self.n_issued
        slots = np.arange(n0, n0 + positions.shape[0])
        self.positions_issued = np.concatenate([self.positions_issued, positions])
        self.positions_measured = np.concatenate([self.positions_measured, np.full(positions.shape, np.nan)])
        self.received = np.concatenate([self.received, np.zeros(len(slots), bool)])
        if self.patterns is None or len(self.patterns) < self.n_issued:
            # Allocated once for the whole budget (np.zeros pages are only backed when written), and
            # replaced, never written into below n0: reconstruction jobs hold views of rows < n0.
            grown = np.zeros((max(self.budget, self.n_issued), self.k, self.k), self.pixel_dtype)
            if self.patterns is not None:
                grown[:n0] = self.patterns[:n0]
            self.patterns = grown
        batch = Batch(batch_id, slots)
        self.batches.append(batch)
        if self.on_rows is not None:
            self.on_rows(self.patterns, n0, n0 + len(slots))
        return batch

    def set_stall_deadline(self, deadline: float) -> None:
        """Told batches (resumed after a restart) must see a frame of their series by ``deadline`` (monotonic()), else they are re-issued."""
        for b in self.batches:
            if b.status == BatchStatus.TOLD:
                b.stall_deadline = deadline

    @property
    def awaits_work(self) -> bool:
        """The compute worker has something to do for it: a complete batch to reconstruct, or the next batch to plan."""
        cur = self.current
        return self.pending_reconstruction() is not None or cur is None or (cur.status == BatchStatus.RECONSTRUCTED and self.n_issued < self.budget)

    def stalled_batches(self, now: float) -> list[Batch]:
        """Told batches resumed after a restart whose stall deadline passed before ``now`` (each deadline is cleared: reported once)."""
        stalled = []
        for b in self.batches:
            if b.stall_deadline is not None and b.stall_deadline < now:
                b.stall_deadline = None
                if b.status == BatchStatus.TOLD:
                    stalled.append(b)
        return stalled

    def short_of(self, batch_id: int, series: int) -> np.ndarray | None:
        """The slots batch ``batch_id`` still misses if it is told as ``series`` and incomplete (that series ended short), else None."""
        b = self.batches[batch_id]
        if b.status == BatchStatus.TOLD and b.series == series and not self.batch_complete(b):
            return self.missing_slots(b)
        return None

    def reissue(self, batch_id: int) -> None:
        """Batch ``batch_id``, its series ended short and its missing slots unbound, is to be told again: back to issued."""
        b = self.batches[batch_id]
        b.status, b.series, b.handed_out_at = BatchStatus.ISSUED, None, None
        self.state = SessionState.ACQUIRING

    # --- the file ----------------------------------------------------------------------

    @property
    def unflushed(self) -> bool:
        """In progress with frames received since the last flush."""
        return not self.terminal and self.frames_persisted != self.frames_received

    def learn_invalid_pixels(self, images: list[np.ndarray] = (), header_mask: np.ndarray | None = None, stack: np.ndarray | None = None, marked: list | None = None) -> None:
        """Flag the detector pixels the detector's ``header_mask`` masks and those that read the largest count in ``images`` (frames as
        stored; ``stack``: the same as one array, if they are one; ``marked``: per image, how many pixels read it, where known:
        ``DetectorMask.observe``); new ones are recorded in the file (StoreError if it fails). The frames themselves are not changed."""
        changed = header_mask is not None and self.detector_mask.from_header(header_mask)
        changed = self.detector_mask.observe(list(images), stack=stack, marked=marked) or changed
        if changed:
            self.store.set_detector_mask(self.detector_mask.flags)

    def flush_frames(self) -> None:
        """Make every frame received durable (``frames_persisted``); StoreError if the file fails."""
        self.store.flush()
        self.frames_persisted = self.frames_received

    def close(self) -> None:
        """It has ended (and left its summary): its file is closed, its frames and potential leave memory."""
        self.store.close()
        self.patterns = None
        self.potential = None

    def stop(self) -> None:
        """Stopped by its client: the file says so and holds every frame received and every reconstruction counted (if it fails,
        ``error`` says why)."""
        self.state = SessionState.STOPPED
        try:
            self.store.set_state(SessionState.STOPPED)
            self.write_held_reconstruction()  # stopped between a round's next batch and its write: the status counted it
            self.store.flush()
        except StoreError as err:
            self.error = str(err)

    def fail(self, message: str) -> None:
        """Failed for ``message``: so in memory, and in the file as far as it can still be written."""
        self.state, self.error = SessionState.FAILED, message
        try:
            self.store.set_state(SessionState.FAILED, message)
            self.write_held_reconstruction()
        except StoreError:
            pass

    # --- ask / tell / results --------------------------------------------------------

    def reconstruction(self) -> tuple[np.ndarray, tuple[float, float], float, int]:
        """(a copy of the latest potential (rad), grid origin (nm), pixel (nm), reconstructions so far); refused (wrong-state) if none yet."""
        if self.potential is None:
            raise SessionError(ErrorKind.WRONG_STATE, f"session {self.session_id} has no reconstruction yet")
        return self.potential.copy(), self.grid_origin_nm, self.grid_pixel_nm, self.n_reconstructed

    def ask(self) -> dict | None:
        """The answer to an ask: the batch to acquire now (its positions still missing a frame), ``done``, or None (none yet).

        Refused (wrong-state) for a stopped or failed session.
        """
        if self.state in (SessionState.STOPPED, SessionState.FAILED):
            raise SessionError(ErrorKind.WRONG_STATE, f"session {self.session_id} is {self.state}" + (f": {self.error}" if self.error else ""))
        if self.state == SessionState.DONE:
            return {"batch_id": None, "positions_nm": [], "done": True}
        b = self.current
        if b is not None and b.status == BatchStatus.ISSUED:
            if self.state == SessionState.CREATED:
                self.state = SessionState.ACQUIRING
            if b.handed_out_at is None:
                b.handed_out_at = time.perf_counter()
            return {"batch_id": b.batch_id, "positions_nm": self.positions_issued[self.missing_slots(b)].tolist(), "done": False}
        return None

    def record_result(self, batch_id: int | None, recon: ReconOutput | None, positions: np.ndarray | None, hold_reconstruction: bool = False) -> None:
        """Apply the compute worker's result, each step to the file first: store batch ``batch_id``'s reconstruction
        (``recon``), then issue the next batch (``positions``) or, with the budget issued and every batch
        reconstructed, finish (state done). ``StoreError`` if the file fails (the caller fails the session).

        ``hold_reconstruction``: when a next batch is issued, the reconstruction goes to the file at
        ``write_held_reconstruction`` instead (a round's batches are issued first). Until then the file has the
        next batch but not this reconstruction; a restart finds the batch complete and reconstructs it again.
        """
        if recon is not None and batch_id is not None:
            b = self.batches[batch_id]
            rec = StoredReconstruction(
                b.batch_id, recon.potential, recon.origin_nm, recon.pixel_nm, int(b.slots[-1]) + 1, recon.loss_history, self.planner.planner.version
            )
            if hold_reconstruction and positions is not None and len(positions):
                self.held_reconstruction = (self.n_reconstructed, rec)
            else:
                self.store.write_reconstruction(self.n_reconstructed, rec)
            self.potential, self.grid_origin_nm, self.grid_pixel_nm = recon.potential, recon.origin_nm, recon.pixel_nm
            self.loss_history = recon.loss_history
            self.n_reconstructed += 1
            b.status = BatchStatus.RECONSTRUCTED
            b.update_shrunk = recon.shrunk
        if positions is not None and len(positions):
            self.store.append_batch(len(self.batches), positions)
            self.add_batch(len(self.batches), positions)
            if self.state != SessionState.CREATED:
                self.state = SessionState.ACQUIRING
        elif self.n_issued >= self.budget and all(b.status == BatchStatus.RECONSTRUCTED for b in self.batches):
            self.state = SessionState.DONE
            self.store.set_state(SessionState.DONE)
            self.store.flush()
        elif recon is not None and self.pending_reconstruction() is None:  # a batch reconstructed again after a restart
            self.state = SessionState.ACQUIRING  # its next batch was issued before: the session waits for that one's frames
        if self.state != SessionState.DONE:
            self.store.set_state(self.state)

    def write_held_reconstruction(self) -> None:
        """Write the reconstruction ``record_result`` held back, if any (``StoreError`` if the file fails)."""
        held, self.held_reconstruction = self.held_reconstruction, None
        if held is not None:
            self.store.write_reconstruction(*held)

    # --- notes and notices -----------------------------------------------------------

    def note_error(self, kind: str, message: str) -> None:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        self.recent_errors.append({"kind": kind, "detail": message, "at_unix": round(time.time(), 3)})

    def notify(self) -> None:
        """Wake every ask long-polling on this session (called with the lock held, from any thread)."""
        self.version += 1
        waiters, self.waiters = self.waiters, []
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # loop closed
                pass
        if self.on_change is not None:
            self.on_change()

    def status(self) -> dict:
        cur = self.current
        return {
            "session_id": self.session_id,
            "state": str(self.state),
            "error": self.error,
            "params": self.params,
            "strategy": {
                "requested": self.planner.requested,
                "used": self.planner.planner.name,
                "planner_version": self.planner.planner.version,
                "fallback": self.planner.fallback,
            },
            "budget": self.budget,
            "positions_issued": self.n_issued,
            "frames_received": self.frames_received,
            "frames_persisted": self.frames_persisted,
            "batches_issued": len(self.batches),
            "batches_reconstructed": self.n_reconstructed,
            "current_batch": None
            if cur is None
            else {
                "batch_id": cur.batch_id,
                "status": str(cur.status),
                "series": cur.series,
                "size": len(cur.slots),
                "frames_missing": int((~self.received[cur.slots]).sum()),
            },
            "chunks": [b.timeline() for b in self.batches],
            "stream_errors": {k: v for k, v in self.counters.items() if v},
            "recent_errors": list(self.recent_errors),
            "reconstruction": None
            if self.potential is None
            else {
                "shape": list(self.potential.shape),
                "pixel_nm": self.grid_pixel_nm,
                "origin_nm": list(self.grid_origin_nm or (0.0, 0.0)),
                "final_loss": self.loss_history[-1] if self.loss_history else None,
            },
            "probe": self.probe_status(),
            "created_unix": self.created_unix,
            "file": self.store.path.name,
        }
