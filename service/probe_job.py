"""A session's probe retrieved from its own patterns (``probe: retrieve``), in the background.

A real probe is never the nominal one: residual defocus, two-fold astigmatism and Cs of a
few nm / um are normal after alignment, and with a wrong probe the live reconstruction
(and so the planner) sees noise. For a session created with ``probe: retrieve``, once
``probe_retrieval_positions`` of its positions are reconstructed the service retrieves
the aberrations from their patterns (``recon.probe_retrieval.retrieve_aberrations``:
a defocus grid, a polar astigmatism grid, then Nelder-Mead over defocus, C12 and Cs, each
point scored by the loss of a short reconstruction), starting from the request's beam.
It runs as an urgent background job (``service.background``), pausing between its short
reconstructions while a decision is computed. From the next chunk on, the session is
reconstructed with the retrieved probe; the status's ``probe`` and the session file's
``probe`` attribute say what it is. A retrieval that fails leaves the nominal probe (the
status says why); one dropped at shutdown runs again after the restart.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from service.background import BackgroundJob, Stopped
from service.spec import Beam

log = logging.getLogger(__name__)

class RetrieveProbe(Protocol):
    """(patterns (N, K, K), positions (N, 2) nm, starting beam, fov nm, pause, invalid detector pixels ((K, K) bool, True = not a
    measurement, left out of every loss; None: none)) -> (the beam with the retrieved aberrations, a report)."""

    def __call__(self, patterns: np.ndarray, positions: np.ndarray, beam: Beam, fov_nm: tuple[float, float, float, float],
                 pause: Callable[[], None], invalid_pixels: np.ndarray | None = None) -> tuple[Beam, dict]: ...


def frames_chunk(patterns: np.ndarray, positions: np.ndarray, beam: Beam, fov_nm: tuple[float, float, float, float],
                 invalid_pixels: np.ndarray | None = None):
    """A session's frames as a reconstruction input (``recon.engine.ScanChunk``: float32 patterns, float64 positions in nm) on
    the grid covering ``fov_nm`` at the beam's pixel size; what a probe job reconstructs."""
    import torch

    from recon.engine import ScanChunk
    from recon.grid import ObjectGrid

    grid = ObjectGrid.covering(fov_nm, beam.pixel_nm, beam.detector_pixels)
    return ScanChunk(torch.from_numpy(np.asarray(patterns, np.float32)), torch.from_numpy(np.asarray(positions, np.float64)), grid,
                     invalid_pixels=invalid_pixels)


class ProbeRetriever:
    """``retrieve_aberrations`` for the service: its options (``RetrievalOptions`` fields) and device, checked at start-up."""

    def __init__(self, options: dict[str, Any] | None = None, device: str = "auto") -> None:
        from recon.probe_retrieval import RetrievalOptions

        self.options = RetrievalOptions(**(options or {}))  # a bad option fails at start-up, not at a session's first retrieval
        self.device = device

    def __call__(self, patterns: np.ndarray, positions: np.ndarray, beam: Beam, fov_nm: tuple[float, float, float, float],
                 pause: Callable[[], None], invalid_pixels: np.ndarray | None = None) -> tuple[Beam, dict]:
        from recon.device import pick_device
        from recon.probe_retrieval import retrieve_aberrations

        t0 = time.perf_counter()
        chunk = frames_chunk(patterns, positions, beam, fov_nm, invalid_pixels)
        device = pick_device(self.device)
        result = retrieve_aberrations(chunk, energy_ev=beam.energy_ev, convergence_mrad=beam.convergence_mrad, start=beam.aberrations,
                                      options=self.options, device=device, between=pause)
        if not math.isfinite(result.loss):
            raise RuntimeError(f"probe retrieval: no evaluation converged (best loss {result.loss}); keeping the probe in use")
        report = {
            "source": "retrieved",
            **result.aberrations.model_dump(),
            "loss": result.loss,
            "positions_used": result.positions_used,
            "frames": len(positions),
            "evaluations": len(result.evaluations),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return beam.with_aberrations(result.aberrations), report


class StagedRetriever:
    """A retrieval in the service's two stages at once: the first (coarse) retrieval, then one refinement from it on the same
    frames (for a session that ended before its live retrieval: its converged reconstruction retrieves the probe so). As in
    the live path, a refinement that fails, or moves an aberration by more than ``max_change`` (defocus nm, |C12| nm, Cs um),
    leaves the first stage's probe (the report says why, under ``refinement_error``)."""

    def __init__(self, first: RetrieveProbe, refine: RetrieveProbe, max_change: tuple[float, float, float] = (3.0, 3.0, 10.0)) -> None:
        self.first, self.refine, self.max_change = first, refine, max_change

    def __call__(self, patterns: np.ndarray, positions: np.ndarray, beam: Beam, fov_nm: tuple[float, float, float, float],
                 pause: Callable[[], None], invalid_pixels: np.ndarray | None = None) -> tuple[Beam, dict]:
        coarse, first = self.first(patterns, positions, beam, fov_nm, pause, invalid_pixels)
        try:
            refined, report = self.refine(patterns, positions, coarse, fov_nm, pause, invalid_pixels)
            check_change(coarse, refined, self.max_change)
        except Stopped:
            raise
        except Exception as err:  # the coarse retrieval stands
            log.warning("probe refinement after the retrieval failed (%s); keeping the retrieved probe", err)
            return coarse, {**first, "refinement_error": f"{type(err).__name__}: {err}"}
        return refined, {**report, "evaluations": first["evaluations"] + report["evaluations"],
                         "seconds": round(first["seconds"] + report["seconds"], 3)}


def probe_job(
    session_id: str,
    patterns: np.ndarray,
    positions: np.ndarray,
    beam: Beam,
    fov_nm: tuple[float, float, float, float],
    retrieve: RetrieveProbe,
    on_result: Callable[[str, Beam | None, dict], None],
    invalid_pixels: np.ndarray | None = None,
    wanted: Callable[[str], bool] | None = None,
) -> BackgroundJob:
    """The urgent background job retrieving a live session's probe from ``patterns`` at ``positions`` (copies, taken when queued);
    ``invalid_pixels`` (K, K) bool: the session's detector pixels that are not measurements (``service.detector_mask``), None: none.
    ``wanted(session id)``: asked when the job's turn comes; False (the session was deleted meanwhile) skips it, unreported.

    ``on_result(session id, beam or None, status)``: ``running``; then ``done`` with the
    retrieved beam, or ``failed`` (beam None, with ``error``); ``dropped`` (beam None) if
    the service stops first.
    """

    def work(pause: Callable[[], None]) -> None:
        on_result(session_id, None, {"state": "running"})
        try:
            new_beam, report = retrieve(patterns, positions, beam, fov_nm, pause, invalid_pixels)
        except Stopped:
            raise
        except Exception as err:  # this session keeps its nominal probe; its status says why
            log.exception("probe retrieval of %s failed", session_id)
            on_result(session_id, None, {"state": "failed", "source": "nominal", **beam.aberrations.model_dump(),
                                         "error": f"{type(err).__name__}: {err}"})
            return
        log.info("probe of %s retrieved from %d positions in %.1f s: %s", session_id, report["positions_used"], report["seconds"],
                 new_beam.aberrations)
        on_result(session_id, new_beam, {"state": "done", **report})

    return BackgroundJob(f"probe:{session_id}", work, urgent=True, on_dropped=lambda: on_result(session_id, None, {"state": "dropped"}),
                         wanted=None if wanted is None else lambda: wanted(session_id))


def refinement_job(
    session_id: str,
    patterns: np.ndarray,
    positions: np.ndarray,
    beam: Beam,
    fov_nm: tuple[float, float, float, float],
    refine: RetrieveProbe,
    max_change: tuple[float, float, float],
    on_result: Callable[[str, Beam | None, dict], None],
    invalid_pixels: np.ndarray | None = None,
    wanted: Callable[[str], bool] | None = None,
) -> BackgroundJob:
    """The urgent background job refining a live session's probe (``beam``: the one in use) on ``patterns`` at ``positions``
    (``invalid_pixels`` and ``wanted`` as for ``probe_job``).

    ``on_result(session id, beam or None, status)``: ``running``; ``done`` with the refined
    beam; ``failed`` (beam None, with ``error``) if the refinement raised, or if it moved
    defocus, |C12 - C12 before| or Cs by more than ``max_change`` (nm, nm, um): a jump
    that large from a local search is a divergence, not a refinement; ``dropped`` (beam
    None) if the service stops first. Same key as the retrieval: one probe job per session.
    """

    def work(pause: Callable[[], None]) -> None:
        on_result(session_id, None, {"state": "running", "frames": len(positions)})
        try:
            new_beam, report = refine(patterns, positions, beam, fov_nm, pause, invalid_pixels)
            check_change(beam, new_beam, max_change)
        except Stopped:
            raise
        except Exception as err:  # the session keeps the probe in use; its status says why
            log.warning("probe refinement of %s failed: %s", session_id, err)
            on_result(session_id, None, {"state": "failed", "frames": len(positions), "error": f"{type(err).__name__}: {err}"})
            return
        log.info("probe of %s refined on %d positions in %.1f s: %s", session_id, report["positions_used"], report["seconds"], new_beam.aberrations)
        on_result(session_id, new_beam, {**report, "state": "done", "frames": len(positions)})

    return BackgroundJob(f"probe:{session_id}", work, urgent=True, on_dropped=lambda: on_result(session_id, None, {"state": "dropped"}),
                         wanted=None if wanted is None else lambda: wanted(session_id))


def check_change(before: Beam, after: Beam, max_change: tuple[float, float, float]) -> None:
    """RuntimeError if a refinement moved defocus, |C12 - C12 before| or Cs by more than ``max_change`` (nm, nm, um): a jump that
    large from a local search is a divergence, not a refinement."""
    moved = aberration_change(before, after)
    if any(m > limit for m, limit in zip(moved, max_change, strict=True)):
        raise RuntimeError(f"diverged: moved defocus {moved[0]:.2f} nm, astigmatism {moved[1]:.2f} nm, Cs {moved[2]:.2f} um in one "
                           f"refinement (at most {max_change[0]:g} nm, {max_change[1]:g} nm, {max_change[2]:g} um); keeping the probe in use")


def aberration_change(before: Beam, after: Beam) -> tuple[float, float, float]:
    """(|defocus change| nm, |C12 after - C12 before| nm as complex numbers, |Cs change| um) between two beams."""
    a, b = before.aberrations, after.aberrations
    (a1, a2), (b1, b2) = a.astigmatism_cartesian_nm, b.astigmatism_cartesian_nm
    return abs(b.defocus_nm - a.defocus_nm), math.hypot(b1 - a1, b2 - a2), abs(b.cs_um - a.cs_um)
