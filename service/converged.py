"""Converged end-of-session reconstructions: every frame of a done session once more, with the evaluation's final recipe.

The live reconstruction a session ends on is the planner's working image (a few
mini-batch passes, warm-started chunk by chunk): it shows where the scan went more than
the specimen. When a session is done, a background job (``service.background``)
reconstructs all its frames from zero with the recipe ``ptychoscan evaluate`` and
``ptychoscan reconstruct --converged`` use (full-batch gradient descent with Nesterov
momentum, passes set by the position count, a diverged run retried with half the step)
and stores it beside the session file (``service.converged_store``). The reconstruction
route then serves it. With the session's probe to be retrieved (``probe: retrieve``), it
uses the probe retrieved during the scan, or retrieves it first from all the frames.

A job dropped at shutdown is made again after a restart: a done session without its
converged file is queued when the service starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from service.background import BackgroundJob, Stopped
from service.compute import ReconJob, ReconOutput
from service.converged_store import ConvergedReconstruction, read_measured, write_converged
from service.probe_job import RetrieveProbe
from service.spec import Beam, clip_to_fov

log = logging.getLogger(__name__)


class ConvergedState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class ConvergedRequest:
    """A done session to reconstruct: its file (closed), beam and field of view (nm)."""

    session_id: str
    session_file: Path
    beam: Beam
    """the probe to use: the nominal beam, or the one retrieved during the scan."""
    fov_nm: tuple[float, float, float, float]
    retrieve: bool = False
    """retrieve the probe from all the frames first (asked for, and not retrieved during the scan)."""
    correct_positions: bool = False
    """refine the positions with the object (the session's ``position_correction``)."""
    probe_source: str = "nominal"
    """where ``beam``'s aberrations come from: nominal (the request's) or retrieved (during the scan)."""


ConvergedRun = Callable[[ReconJob, Callable[[int], None]], tuple[ReconOutput, dict]]
"""(the job, a callback after every pass) -> (the output, the recipe used); ``TorchReconBackend.converged``."""


def converged_job(
    request_now: Callable[[], ConvergedRequest], run: ConvergedRun, on_state: Callable[[str, dict], None], retrieve: RetrieveProbe | None = None
) -> BackgroundJob:
    """The background job making a done session's converged reconstruction; ``request_now()`` says what, when it starts
    (a probe retrieval queued before it may have finished meanwhile).

    ``on_state(session id, status)`` is told ``running``, then ``done`` (with ``passes``,
    ``final_loss``, ``seconds`` and the ``probe`` used) or ``failed`` (with ``error``), or
    ``queued`` again when the service stops first.
    """
    request = request_now()
    sid = request.session_id

    def work(pause: Callable[[], None]) -> None:
        from recon.convergence import diverged  # torch: imported when the first job runs, not with the service

        request = request_now()
        on_state(sid, {"state": ConvergedState.RUNNING.value})
        t0 = time.perf_counter()
        try:
            pause()
            patterns, measured, invalid = read_measured(request.session_file)
            positions = clip_to_fov(measured, request.fov_nm)  # as the live reconstructions had them
            if len(positions) == 0:
                raise ValueError("the session has no frames")
            beam, probe = request.beam, None
            if request.retrieve:
                beam, probe = _retrieved_or_nominal(retrieve, patterns, positions, request, pause, invalid)
            job = ReconJob(beam, request.fov_nm, patterns, positions, None, final=True, correct_positions=request.correct_positions,
                           invalid_pixels=invalid)
            output, recipe = run(job, lambda _pass: pause())
            if diverged(output.loss_history):
                raise RuntimeError(f"the reconstruction diverged (final loss {output.loss_history[-1]}); nothing stored")
            moved = None if output.positions_nm is None else position_summary(positions, output.positions_nm, output.scan_matrix)
            rec = ConvergedReconstruction(
                output.potential, output.origin_nm, output.pixel_nm, len(positions), len(output.loss_history), output.loss_history,
                recipe | {"probe_aberrations": beam.aberrations.model_dump(),
                          "probe_source": probe["source"] if probe is not None else request.probe_source,
                          "positions_moved": moved},  # the status's account, read back after a restart
                output.positions_nm, output.scan_matrix,
            )
            write_converged(request.session_file, rec)
        except Stopped:
            raise
        except Exception as err:  # this session's failure, reported in its status
            log.exception("converged reconstruction of %s failed", sid)
            on_state(sid, {"state": ConvergedState.FAILED.value, "error": f"{type(err).__name__}: {err}"})
            return
        seconds = time.perf_counter() - t0
        log.info("converged reconstruction of %s: %d positions, %d passes in %.1f s", sid, len(positions), rec.passes, seconds)
        info = {"state": ConvergedState.DONE.value, "passes": rec.passes, "final_loss": rec.loss_history[-1] if rec.loss_history else None,
                "seconds": round(seconds, 3), "probe": probe or {"source": request.probe_source, **beam.aberrations.model_dump()}}
        if moved is not None:
            info["positions"] = moved
        on_state(sid, info)

    return BackgroundJob(f"converged:{sid}", work, urgent=False, on_dropped=lambda: on_state(sid, {"state": ConvergedState.QUEUED.value}))


def _retrieved_or_nominal(retrieve: RetrieveProbe | None, patterns, positions, request: ConvergedRequest,
                          pause: Callable[[], None], invalid_pixels: np.ndarray | None) -> tuple[Beam, dict]:
    """(beam, probe report) retrieved from every frame; the request's beam, with the failure in the report, when that fails
    (the converged image with the nominal probe is still worth having: the live ones used it too)."""
    try:
        if retrieve is None:
            raise ValueError("probe retrieval is not available in this service")
        return retrieve(patterns, positions, request.beam, request.fov_nm, pause, invalid_pixels)
    except Stopped:
        raise
    except Exception as err:
        log.warning("probe retrieval for the converged reconstruction of %s failed (%s); using the nominal probe", request.session_id, err)
        return request.beam, {"state": "failed", "source": "nominal", "error": f"{type(err).__name__}: {err}",
                              **request.beam.aberrations.model_dump()}


def position_summary(measured_nm: np.ndarray, corrected_nm: np.ndarray, scan_matrix: np.ndarray | None) -> dict:
    """A status's account of position correction: how far the positions moved (rms and largest, nm) and the fitted
    scan matrix I + D (rows x, y), rounded for reading."""
    shift = np.linalg.norm(np.asarray(corrected_nm) - np.asarray(measured_nm), axis=1)
    return {"corrected": len(shift), "rms_shift_nm": round(float(np.sqrt((shift**2).mean())), 5),
            "max_shift_nm": round(float(shift.max()), 5),
            "scan_matrix": None if scan_matrix is None else np.round(np.asarray(scan_matrix, np.float64), 5).tolist()}
