"""The converged fallback's two-stage probe retrieval (service.probe_job.StagedRetriever)."""

from __future__ import annotations

import numpy as np

from service.probe_job import StagedRetriever
from service.spec import Beam

BEAM = Beam(60_000.0, 33.0, 16, 6.0, 0.0)
FOV = (0.0, 0.0, 0.3, 0.3)


def _first(patterns, positions, beam, fov_nm, pause, invalid_pixels=None):
    coarse = beam.with_aberrations(beam.aberrations.model_copy(update={"defocus_nm": 9.0}))
    return coarse, {"source": "retrieved", "defocus_nm": 9.0, "loss": 1.0, "positions_used": len(positions), "evaluations": 37, "seconds": 1.0}


def _failing_refinement(patterns, positions, beam, fov_nm, pause, invalid_pixels=None):
    raise RuntimeError("probe refinement: the reconstruction did not converge (loss nan); keeping the probe in use")


def _diverging_refinement(patterns, positions, beam, fov_nm, pause, invalid_pixels=None):
    far = beam.with_aberrations(beam.aberrations.model_copy(update={"defocus_nm": 60.0}))
    return far, {"source": "retrieved", "defocus_nm": 60.0, "loss": 0.5, "positions_used": len(positions), "evaluations": 5, "seconds": 1.0}


def test_a_failed_refinement_stage_keeps_the_first_stages_probe():
    """The live path keeps the probe in use when a refinement fails; the converged fallback's second stage failing must not throw
    away the first stage's retrieval (today the whole call raises and the converged reconstruction falls back to the nominal probe)."""
    staged = StagedRetriever(_first, _failing_refinement)
    beam, report = staged(np.ones((4, 16, 16), np.float32), np.zeros((4, 2)), BEAM, FOV, lambda: None)
    assert beam.defocus_nm == 9.0 and report["defocus_nm"] == 9.0


def test_a_diverging_refinement_stage_is_not_taken():
    """The live refinement refuses a jump larger than probe_refinement_max_change (a divergence, not a refinement); the converged
    fallback's second stage is the same local search and should be held to the same bound (the service's default 3 nm defocus)."""
    staged = StagedRetriever(_first, _diverging_refinement)
    beam, _ = staged(np.ones((4, 16, 16), np.float32), np.zeros((4, 2)), BEAM, FOV, lambda: None)
    assert abs(beam.defocus_nm - 9.0) <= 3.0
