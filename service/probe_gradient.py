"""A live session's probe refined by gradient steps on its coefficients (``recon.probe_refinement``), for the service.

The alternative to the local Nelder-Mead of ``service.probe_job.ProbeRetriever`` with
``global_search`` off: a short reconstruction of the positions nearest the field's centre
from the probe in use, alternating blocks of object passes with Adam steps on
(defocus, C12a, C12b, Cs), the object held (``reconstruct_refining_aberrations``). Same
call shape as ``ProbeRetriever`` (``service.probe_job.RetrieveProbe``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.probe_job import frames_chunk
from service.spec import Beam


class GradientRefinementOptions(BaseModel):
    """How much a gradient refinement does. The coefficients' own step sizes: ``refinement`` (``ProbeRefinementOptions``)."""

    model_config = ConfigDict(extra="forbid")

    passes: int = Field(20, ge=2, description="object passes in all (a probe update after each block but the last)")
    max_positions: int = Field(256, ge=4, description="positions reconstructed (nearest the field's centre)")
    refinement: dict[str, Any] = Field(
        default_factory=lambda: {"passes_per_block": 5}, description="recon.probe_refinement.ProbeRefinementOptions fields"
    )


class GradientRefiner:
    """``reconstruct_refining_aberrations`` for the service: its options, checked at start-up, and device."""

    def __init__(self, options: dict[str, Any] | None = None, device: str = "auto") -> None:
        from recon.probe_refinement import ProbeRefinementOptions

        self.options = GradientRefinementOptions(**(options or {}))
        self.refinement = ProbeRefinementOptions(**self.options.refinement)  # a bad option fails at start-up
        self.device = device

    def __call__(self, patterns: np.ndarray, positions: np.ndarray, beam: Beam, fov_nm: tuple[float, float, float, float],
                 pause: Callable[[], None], invalid_pixels: np.ndarray | None = None) -> tuple[Beam, dict]:
        from recon.device import pick_device
        from recon.options import ReconOptions
        from recon.probe_refinement import reconstruct_refining_aberrations
        from recon.probe_retrieval import central_indices

        t0 = time.perf_counter()
        pick = central_indices(positions, self.options.max_positions)
        chunk = frames_chunk(patterns[pick], positions[pick], beam, fov_nm, invalid_pixels)
        device = pick_device(self.device)
        result = reconstruct_refining_aberrations(chunk, beam.aberrations, energy_ev=beam.energy_ev, convergence_mrad=beam.convergence_mrad,
                                                  options=ReconOptions(iterations=self.options.passes), refinement=self.refinement,
                                                  device=device, between=pause)
        loss = result.result.loss_history[-1] if result.result.loss_history else float("nan")
        if not math.isfinite(loss):
            raise RuntimeError(f"probe refinement: the reconstruction did not converge (loss {loss}); keeping the probe in use")
        report = {"source": "retrieved", **result.aberrations.model_dump(), "loss": float(loss), "positions_used": len(pick),
                  "frames": len(positions), "evaluations": len(result.history), "seconds": round(time.perf_counter() - t0, 3)}
        return beam.with_aberrations(result.aberrations), report
