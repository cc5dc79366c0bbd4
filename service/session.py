"""One acquisition session in memory: its batches, slots, frames, counters and latest reconstruction.

A *slot* is one position index of the session (0..budget-1). A batch is a run of
slots issued together. ``tell`` binds the batch's slots still missing a frame to a
detector series (frame i -> i-th missing slot). When every slot of a batch holds a
frame the batch is complete and waits for the compute worker. All methods are called
with the manager's lock held.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from detector_stream.events import StreamError
from service.planner import PlannerChoice
from service.spec import Beam, SessionSpec
from service.store import SessionStore


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
    """(capacity, K, K) float32 frames by slot; capacity >= n_issued (the whole budget: untouched rows cost no memory)."""
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
    needs_plan: bool = False
    spec: SessionSpec = field(init=False, repr=False)
    """``params`` read once, typed (``params`` is kept verbatim: the file and the status report carry it)."""

    def __post_init__(self) -> None:
        self.spec = SessionSpec.from_params(self.params)

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
        return self.spec.beam

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
            grown = np.zeros((max(self.budget, self.n_issued), self.k, self.k), np.float32)
            if self.patterns is not None:
                grown[:n0] = self.patterns[:n0]
            self.patterns = grown
        batch = Batch(batch_id, slots)
        self.batches.append(batch)
        return batch

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
            "created_unix": self.created_unix,
            "file": self.store.path.name,
        }
