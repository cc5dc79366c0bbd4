"""The compute worker: one thread that reconstructs every queued chunk of all sessions in one batched call, then plans.

Per round: take everything queued, reconstruct (one ``ReconBackend.reconstruct``
call, which batches per beam setting), run each planner once over its sessions, and
publish the next batches. A flusher thread flushes received frames to disk every
``flush_interval_s``. Neither thread touches the asyncio loop.

A session's last chunk gets a full reconstruction (every position, all passes) on
which no decision waits, and which takes many times a decision's compute. It runs a
slice at a time (``service.final_run``: with the torch backend one mini-batch step, the
scans prepared once), in between other sessions' chunks: at least one slice per round,
more while nothing else is queued. A decision then waits for at most one slice of one
session's final reconstruction instead of all of it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from detector_stream.codec_threads import set_codec_threads
from service.compute import ReconBackend, ReconOutput
from service.final_run import FinalRun
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.planner import PlanRequest
from service.spec import clip_to_fov
from service.work import WorkItem

log = logging.getLogger(__name__)


@dataclass
class _Finishing:
    """A session's final reconstruction in progress (``service.final_run``)."""

    item: WorkItem
    run: FinalRun


class Scheduler:
    def __init__(
        self, manager: SessionManager, backend: ReconBackend, metrics: ServiceMetrics, *, flush_interval_s: float = 0.2, final_slice_s: float = 0.005
    ) -> None:
        self.manager = manager
        self.backend = backend
        self.metrics = metrics
        self.flush_interval_s = flush_interval_s
        self.final_slice_s = final_slice_s
        """A final reconstruction advances at least this long (s) per round (whole slices), so that it finishes also while
        chunks keep arriving; a chunk that completes meanwhile waits at most this and one slice."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.busy = False
        self.rounds = 0
        self._finishing: list[_Finishing] = []

    def start(self) -> None:
        for target, name in ((self._run, "compute-worker"), (self._flush_loop, "store-flusher")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the round (or final reconstruction slice) in flight; its results are published and flushed.

        Final reconstructions still in progress are dropped: their chunks stay complete
        but unreconstructed in the session files, and a restart reconstructs them again.
        """
        self._stop.set()
        with self.manager.lock:
            self.manager.work_ready.notify_all()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        if self._finishing:
            log.warning(
                "stopping with %d final reconstruction(s) unfinished (%s); they run again after a restart",
                len(self._finishing), ", ".join(f.item.session_id for f in self._finishing),
            )
        self.manager.flush_all()

    def _flush_loop(self) -> None:
        try:  # a flush may compress (frames HDF5's filter takes): one OpenMP thread, as in the ingest (detector_stream.codec_threads)
            set_codec_threads(1)
        except Exception as err:
            log.warning("store flusher: could not set the codec's OpenMP threads (%s)", err)
        while not self._stop.wait(self.flush_interval_s):
            self.manager.flush_all()
            self.manager.reissue_stalled()

    @property
    def finishing(self) -> int:
        """Sessions whose final reconstruction is in progress."""
        return len(self._finishing)

    def _run(self) -> None:
        while not self._stop.is_set():
            items = self.manager.take_work(timeout=0.0 if self._finishing else 0.2)
            if not items and not self._finishing:
                continue
            self.busy = True
            try:
                if items:
                    self.run_round(items)
                else:
                    self.finish_pending()
            except Exception:  # a defect outside the round's own containment: logged, and the worker serves the next round
                log.exception("compute worker: a round broke off")
            finally:
                self.busy = False

    def run_round(self, items: list[WorkItem]) -> None:
        """Reconstruct the items' chunks together, plan, publish; then advance final reconstructions. Never raises.

        Sessions' last chunks (no decision waits on them) join the final reconstructions
        in progress, which advance by at least one slice (``service.final_run``) per round and go on while no
        other session's chunk is queued.
        """
        self.rounds += 1
        try:
            urgent = [it for it in items if it.job is None or not it.job.final]
            self._finishing += [_Finishing(it, self.backend.start_final(it.job)) for it in items if it.job is not None and it.job.final]
            self.metrics.finals_pending.set(len(self._finishing))
            if urgent:
                self._round(urgent)
            self.finish_pending()
        except Exception as err:  # a defect, not one session's bad job or plan (those fail alone, in _round): the worker goes on
            log.exception("compute round failed")
            finishing = {id(f.item) for f in self._finishing}  # finals started go on (finish_pending), whoever raised
            for it in items:
                if id(it) not in finishing:
                    self.manager.fail_unserved(it, f"internal error in the compute worker: {type(err).__name__}: {err}")

    def finish_pending(self) -> None:
        """Advance the oldest final reconstruction by at least one slice, more while no other chunk waits; publish those completed.

        Finals whose session ended (stopped, failed, deleted) are dropped before every slice, also those waiting behind the
        oldest: their jobs hold the session's frames, and the pending gauge counts only finals still wanted."""
        first = True
        while True:
            self._finishing = [f for f in self._finishing if self.manager.is_active(f.item.session_id)]
            if not self._finishing or self._stop.is_set() or (not first and self.manager.has_work()):
                break
            first = False
            f = self._finishing[0]
            try:
                self._advance_final(f)
            except Exception as err:  # a defect (the reconstruction's own errors fail the session in _advance_final)
                log.exception("finishing session %s failed", f.item.session_id)
                if f in self._finishing:
                    self._finishing.remove(f)
                self.manager.fail_unserved(f.item, f"internal error in the compute worker: {type(err).__name__}: {err}")
        self.metrics.finals_pending.set(len(self._finishing))

    def _advance_final(self, f: _Finishing) -> None:
        """One ``advance`` of the final ``f`` (its session active); published and dequeued once complete or failed."""
        sid = f.item.session_id
        start = time.perf_counter()

        def stop() -> bool:  # one that ends while this runs is not run to its end: dropped after the step in flight (its memory let go)
            if self._stop.is_set() or not self.manager.is_active(sid):
                return True
            return time.perf_counter() - start >= self.final_slice_s and self.manager.has_work()

        try:
            output = f.run.advance(stop)
        except Exception as err:
            log.exception("final reconstruction failed")
            self._finishing.remove(f)
            self.manager.publish(f.item, None, None, error=f"reconstruction failed: {type(err).__name__}: {err}")
            return
        if output is not None:
            self._finishing.remove(f)
            self.manager.publish(f.item, output, None)

    def _round(self, items: list[WorkItem]) -> None:
        """Reconstruct the items' chunks in one batched call, plan, publish. A session whose job or plan raises fails alone."""
        outputs: list[ReconOutput | None] = [None] * len(items)
        failed: dict[int, str] = {}
        recon_idx = [i for i, it in enumerate(items) if it.job is not None]
        if recon_idx:
            t0 = time.perf_counter()
            reduced_before = getattr(self.backend, "reduced_updates", 0)
            results, errors = self._isolated(lambda idx: self.backend.reconstruct([items[i].job for i in idx]), recon_idx, "reconstruction")
            self.metrics.recon_seconds.observe(time.perf_counter() - t0)
            self.metrics.recon_sessions.observe(len(recon_idx))
            self.metrics.recon_reduced.inc(getattr(self.backend, "reduced_updates", 0) - reduced_before)
            for i, res in results.items():
                outputs[i] = res
            failed.update(errors)
        positions = self._plan(items, outputs, failed)
        try:
            for i, it in enumerate(items):  # every next batch out first; the reconstructions (a file write each) after them
                if i in failed:
                    self.manager.publish(it, None, None, error=failed[i])
                else:
                    self.manager.publish(it, outputs[i], positions.get(i), hold_reconstruction=True)
        finally:  # a publish that raised must not leave the others' reconstructions only in memory
            for i, it in enumerate(items):
                if i not in failed:
                    self.manager.write_held(it.session_id)

    @staticmethod
    def _isolated(call, idx: list[int], what: str) -> tuple[dict[int, object], dict[int, str]]:
        """``call(idx)`` -> one result per index; if it raises, each index is retried alone so that only the culprits fail.

        Returns (results by index, error message by index).
        """
        try:
            return dict(zip(idx, call(idx), strict=True)), {}
        except Exception as err:
            if len(idx) == 1:
                log.exception("%s failed", what)
                return {}, {idx[0]: f"{what} failed: {type(err).__name__}: {err}"}
            log.warning("batched %s of %d sessions failed (%s: %s); retrying each alone", what, len(idx), type(err).__name__, err)
        results: dict[int, object] = {}
        errors: dict[int, str] = {}
        for i in idx:
            res, err = Scheduler._isolated(call, [i], what)
            results.update(res)
            errors.update(err)
        return results, errors

    def _plan(self, items: list[WorkItem], outputs: list[ReconOutput | None], failed: dict[int, str]) -> dict[int, np.ndarray]:
        """Next positions by item index, one planner call per planner; a failing plan fails its session (into ``failed``)."""
        requests: dict[int, PlanRequest] = {}
        groups: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            if it.plan is None or i in failed:
                continue
            res = outputs[i]
            requests[i] = it.plan if res is None else dataclasses.replace(it.plan, potential=res.potential, grid_origin_nm=res.origin_nm, grid_pixel_nm=res.pixel_nm)
            groups.setdefault(id(it.planner), []).append(i)
        out: dict[int, np.ndarray] = {}
        for idx in groups.values():
            planner = items[idx[0]].planner
            t0 = time.perf_counter()
            planned, errors = self._isolated(lambda sel, planner=planner: planner.plan([requests[i] for i in sel]), idx, "planner")
            self.metrics.policy_seconds.observe(time.perf_counter() - t0)
            failed.update(errors)
            for i, pos in planned.items():
                try:  # a planner must not drive the probe off the field; its malformed output fails its session alone
                    out[i] = clip_to_fov(pos, requests[i].fov_nm)
                except Exception as err:
                    log.exception("planner output for session %s", items[i].session_id)
                    failed[i] = f"planner failed: {type(err).__name__}: {err}"
        return out

