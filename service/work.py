"""Work for the compute worker, built from a session under the manager's lock: a reconstruction job and/or a plan request."""

from __future__ import annotations

from dataclasses import dataclass

from service.compute import ReconJob
from service.planner import PlanRequest
from service.session import Batch, BatchStatus, Session
from service.spec import clip_to_fov


@dataclass
class WorkItem:
    """One session's work: reconstruct batch ``batch_id`` (``job``), then plan the next batch (``plan``) with ``planner``."""

    session_id: str
    batch_id: int | None
    job: ReconJob | None
    plan: PlanRequest | None
    planner: object | None
    last_frame_at: float | None
    """perf_counter() (s) of the frame that completed the batch (decision latency is measured from it)."""


def work_item(s: Session) -> WorkItem:
    """The compute worker's work for session ``s``: its oldest complete batch's reconstruction (if any) and the next batch's plan (if due)."""
    b = s.pending_reconstruction()
    job = None
    n = s.n_issued
    used = s.positions_used  # derived from issued and measured: once per item
    if b is not None:
        n = int(b.slots[-1]) + 1
        init = s.potential.copy() if s.potential is not None else None
        # s.patterns[:n] is passed as a view, not copied under the lock: rows of complete batches are
        # never written again (a frame for a received slot is refused as a duplicate) and add_batch
        # replaces the array rather than writing below n_issued.
        pos = clip_to_fov(used[:n], s.fov)
        previous = s.batches[b.batch_id - 1] if b.batch_id > 0 else None
        n_old = int(previous.slots[-1]) + 1 if previous is not None and previous.status == BatchStatus.RECONSTRUCTED and init is not None else 0
        job = ReconJob(
            s.beam, s.fov, s.patterns[:n], pos, init, n_new=n - n_old, final=n >= s.budget, seed=b.batch_id, acquisition_s=acquisition_s(b),
            invalid_pixels=s.detector_mask.invalid,
        )
    plan = None
    # a complete batch followed by an issued one (its reconstruction was held back when a restart came: ``Session.record_result``)
    # is reconstructed again, but its next batch is not planned twice
    needs_plan = b is s.current if b is not None else not s.batches or s.current.status == BatchStatus.RECONSTRUCTED
    if needs_plan and n < s.budget:
        plan = PlanRequest(
            s.fov, s.budget, s.chunk, len(s.batches), used[:n].copy(), None,
            n_next=min(s.chunk, s.budget - n), session_id=s.session_id,
        )
    return WorkItem(s.session_id, None if b is None else b.batch_id, job, plan, s.planner.planner, s.last_frame_at)


def acquisition_s(b: Batch) -> float | None:
    """How long the microscope took for batch ``b`` (s): first to last frame's arrival, scaled from n - 1 dwell intervals to n."""
    return b.acquisition_s


def served(s: Session, item: WorkItem) -> bool:
    """The compute worker did all of ``item``'s work for ``s``: its batch reconstructed (if it had one) and the next batch
    issued (if it planned one). Asked after a round broke off: a session's ``awaits_work`` alone cannot tell, its next chunk
    may have completed since."""
    if item.batch_id is not None and s.batches[item.batch_id].status != BatchStatus.RECONSTRUCTED:
        return False
    return item.plan is None or len(s.batches) > item.plan.batch_index
