"""A live probe retrieval that fails after its session ended is now written into the closed file; the converged
reconstruction then retrieves the probe itself (and the status says so), but a restart must not go back to the failure."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient
from service_testing import AUTH, Pusher, session_body, wait_until
from test_service_probe_live import FOV, RETRIEVED_DEFOCUS, _chunk, _report, _settings, _status

from service.app import create_app
from service.probe_gradient import GradientRefiner
from service.probe_job import ProbeRetriever
from service.spec import Beam


class FailFirstRetrieval:
    """The first retrieval (the live one) waits for ``gate`` and fails; later retrievals (the converged job's) give defocus
    ``RETRIEVED_DEFOCUS`` nm, and refinements keep the probe they get."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    def __call__(self, first: bool, patterns, positions, beam: Beam, fov, pause, invalid_pixels=None):
        pause()
        if not first:
            return beam, _report(beam, positions)
        self.calls += 1
        if self.calls == 1:
            assert self.gate.wait(30)
            raise RuntimeError("no minimum in the search range")
        new = beam.with_aberrations(beam.aberrations.model_copy(update={"defocus_nm": RETRIEVED_DEFOCUS}))
        return new, _report(new, positions)


def test_a_late_failed_retrieval_does_not_hide_the_converged_retrieval_after_a_restart(tmp_path, monkeypatch):
    """The live retrieval queued at 4 frames fails once the session is done; the converged reconstruction retrieves the probe
    (status: retrieved, defocus 2 nm). After a restart the status must say the same, not the failed live retrieval."""
    fake = FailFirstRetrieval()
    monkeypatch.setattr(ProbeRetriever, "__call__", lambda self, *a: fake(True, *a))
    monkeypatch.setattr(GradientRefiner, "__call__", lambda self, *a: fake(False, *a))
    pusher = Pusher()
    try:
        with TestClient(create_app(_settings(tmp_path, recon_converged=True))) as c:
            sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=8, chunk=4, fov_nm=FOV, probe="retrieve"),
                         headers=AUTH).json()["session_id"]
            assert _chunk(c, pusher, sid, 0)
            wait_until(lambda: fake.calls == 1, timeout=30)
            assert _chunk(c, pusher, sid, 1)
            wait_until(lambda: _status(c, sid)["state"] == "done", timeout=60)
            fake.gate.set()
            wait_until(lambda: (_status(c, sid).get("converged_reconstruction") or {}).get("state") in ("done", "failed"), timeout=120)
            before = _status(c, sid)
            assert before["converged_reconstruction"]["state"] == "done", before["converged_reconstruction"]
            assert (before["probe"]["state"], before["probe"]["source"], before["probe"]["defocus_nm"]) == ("done", "retrieved", RETRIEVED_DEFOCUS)
        with TestClient(create_app(_settings(tmp_path, recon_converged=True))) as c:
            after = _status(c, sid)["probe"]
        assert (after["state"], after.get("source"), after["defocus_nm"]) == ("done", "retrieved", RETRIEVED_DEFOCUS), after
    finally:
        fake.gate.set()
        pusher.close()
