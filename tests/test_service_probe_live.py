"""probe: retrieve, as the scan goes on: after the first retrieval the service refines the probe every
probe_refinement_frames frames, one job at a time; the status and the session file carry the refined probe and its
history; a refinement that fails or diverges keeps the probe in use; a restart keeps the refined probe."""

from __future__ import annotations

import json
import threading

import h5py
import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, Pusher, beams_reconstructed, frames_for, session_body, wait_until

from recon.aberrations import ProbeAberrations
from recon.engine import ScanChunk
from recon.grid import ObjectGrid
from recon.probe_retrieval import RetrievalOptions, retrieve_aberrations
from service.app import create_app
from service.probe_gradient import GradientRefiner
from service.probe_job import ProbeRetriever
from service.probe_live import (
    ABERRATION_KEYS,
    HISTORY_LENGTH,
    landed,
    refinement_due,
    refinement_status,
    retrieval_status,
    with_history,
)
from service.settings import PROBE_REFINEMENT, ServiceSettings
from service.spec import Beam

FOV = [0.0, 0.0, 0.3, 0.3]
RETRIEVED_DEFOCUS = 2.0
STEP = 0.5
"""the fake refinement moves defocus by this much (nm)."""


def _settings(tmp_path, **kw):
    base = {"storage": tmp_path, "api_keys": [KEY], "recon_iterations": 2, "torch_threads": 2, "probe_retrieval_frames": 4,
            "probe_refinement_frames": 4, "recon_converged": False}
    return ServiceSettings(**(base | kw))


def _report(beam: Beam, positions) -> dict:
    return {"source": "retrieved", **beam.aberrations.model_dump(), "loss": 1.0, "positions_used": len(positions), "frames": len(positions),
            "evaluations": 1, "seconds": 0.0}


class FakeProbeJobs:
    """Stands in for ProbeRetriever.__call__: the first retrieval (global_search) gives defocus 2 nm, each refinement adds
    ``step`` nm (or raises ``error``), after ``gate`` is set; counts the refinements and how many ran at once."""

    def __init__(self, step: float = STEP, error: str | None = None) -> None:
        self.step, self.error = step, error
        self.gate = threading.Event()
        self.gate.set()
        self.refinements = 0
        self.running = 0
        self.most_at_once = 0
        self.lock = threading.Lock()
        self.invalid: list[tuple[bool, np.ndarray | None]] = []
        """(first?, the invalid detector pixels it was given) per call."""

    def __call__(self, first: bool, patterns, positions, beam: Beam, fov, pause, invalid_pixels=None):
        self.invalid.append((first, invalid_pixels))
        pause()
        if first:
            new = beam.with_aberrations(beam.aberrations.model_copy(update={"defocus_nm": RETRIEVED_DEFOCUS}))
            return new, _report(new, positions)
        with self.lock:
            self.refinements += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            assert self.gate.wait(30)
            if self.error:
                raise RuntimeError(self.error)
            new = beam.with_aberrations(beam.aberrations.model_copy(update={"defocus_nm": beam.defocus_nm + self.step}))
            return new, _report(new, positions)
        finally:
            with self.lock:
                self.running -= 1


def _install(monkeypatch, fake: FakeProbeJobs) -> None:
    monkeypatch.setattr(ProbeRetriever, "__call__", lambda self, *a: fake(True, *a))
    monkeypatch.setattr(GradientRefiner, "__call__", lambda self, *a: fake(False, *a))


def _status(c, sid):
    return c.get(f"/api/v1/sessions/{sid}").json()


def _chunk(c, pusher, sid, series) -> bool:
    ask = c.post(f"/api/v1/sessions/{sid}/ask", params={"timeout_s": 30}, headers=AUTH).json()
    if ask["done"]:
        return False
    c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH)
    pusher.series(series, frames_for(series, len(ask["positions_nm"])) + 20)
    wait_until(lambda: _status(c, sid)["batches_reconstructed"] >= series + 1 or _status(c, sid)["state"] == "done", timeout=60)
    return True


def _idle(c, sid):
    """The probe once no probe job of the session is queued or running."""
    return wait_until(lambda: (p := _status(c, sid)["probe"]).get("state") in ("done", "failed")
                      and (p.get("refinement") or {}).get("state") not in ("queued", "running") and p, timeout=60, what="probe jobs idle")


# --- the status dict, alone ---------------------------------------------------------------------------------


def test_a_refinement_is_due_every_n_new_frames_after_the_retrieval_one_at_a_time_and_at_most_max():
    done = retrieval_status({"state": "done", "defocus_nm": 2.0, "frames": 100, "positions_used": 100})
    assert not refinement_due(None, 500, 150, 8) and not refinement_due({"state": "running"}, 500, 150, 8), "not before the retrieval is done"
    assert not refinement_due(retrieval_status({"state": "failed", "error": "x"}), 500, 150, 8), "nor after it failed"
    assert not refinement_due(done, 249, 150, 8) and refinement_due(done, 250, 150, 8)
    assert not refinement_due(done, 10_000, None, 8), "None: never"
    queued = refinement_status(done, {"state": "queued", "frames": 250})
    assert not refinement_due(queued, 10_000, 150, 8), "one at a time"
    assert not refinement_due(refinement_status(queued, {"state": "running", "frames": 250}), 10_000, 150, 8)
    failed = refinement_status(queued, {"state": "failed", "frames": 250, "error": "boom"})
    assert not refinement_due(failed, 399, 150, 8) and refinement_due(failed, 400, 150, 8), "a failure waits for n more frames too"
    assert not refinement_due(failed, 10_000, 150, 1), "at most max, failures counted"


def test_a_done_refinement_replaces_the_aberrations_and_a_failed_one_keeps_them_both_in_the_history():
    probe = retrieval_status({"state": "done", "source": "retrieved", "defocus_nm": 2.0, "astigmatism_nm": 1.0, "astigmatism_angle_deg": 0.0,
                              "cs_um": 0.0, "loss": 3.0, "frames": 100, "positions_used": 100})
    done = refinement_status(probe, {"state": "done", "defocus_nm": 2.5, "astigmatism_nm": 1.2, "astigmatism_angle_deg": 10.0,
                                     "cs_um": 1.0, "loss": 2.0, "frames": 250, "positions_used": 250})
    assert (done["defocus_nm"], done["cs_um"], done["frames"], done["refinements"]) == (2.5, 1.0, 250, 1)
    failed = refinement_status(done, {"state": "failed", "frames": 400, "error": "RuntimeError: diverged"})
    assert (failed["defocus_nm"], failed["refinements"], failed["frames"]) == (2.5, 1, 250)
    assert failed["refinement"] == {"state": "failed", "frames": 400, "error": "RuntimeError: diverged"}
    assert [(e["kind"], e["state"], e["frames"]) for e in failed["history"]] == [
        ("retrieval", "done", 100), ("refinement", "done", 250), ("refinement", "failed", 400)]
    long = with_history([{"kind": "retrieval"}], {"kind": "refinement", "frames": 0})
    for i in range(1, 3 * HISTORY_LENGTH):
        long = with_history(long, {"kind": "refinement", "frames": i})
    assert len(long) == HISTORY_LENGTH and long[0] == {"kind": "retrieval"} and long[-1]["frames"] == 3 * HISTORY_LENGTH - 1


def test_local_search_scores_its_start_first_and_never_returns_worse():
    rng = np.random.default_rng(0)
    grid = ObjectGrid.covering((0.0, 0.0, 0.3, 0.3), Beam(60_000.0, 33.0, 16, 6.0, 0.0).pixel_nm, 16)
    positions = rng.uniform(0.0, 0.3, (12, 2))
    chunk = ScanChunk(rng.poisson(50, (12, 16, 16)).astype(np.float32), positions, grid)
    start = ProbeAberrations(defocus_nm=3.0, astigmatism_nm=1.0, astigmatism_angle_deg=40.0, cs_um=1.0)
    options = RetrievalOptions(global_search=False, refine_evaluations=6, iterations=2, max_positions=12)
    result = retrieve_aberrations(chunk, energy_ev=60_000.0, convergence_mrad=33.0, start=start, options=options)
    assert result.evaluations[0][0] == start, "the start is scored first (the grids are skipped, its astigmatism kept)"
    assert 2 <= len(result.evaluations) <= 8 and result.loss <= result.evaluations[0][1]


# --- in the service -------------------------------------------------------------------------------------------


def test_refinements_are_queued_every_n_frames_one_at_a_time_used_recorded_and_kept_after_a_restart(tmp_path, monkeypatch):
    fake = FakeProbeJobs()
    _install(monkeypatch, fake)
    beams = beams_reconstructed(monkeypatch)
    pusher = Pusher()
    body = session_body(pusher.endpoint, budget=40, chunk=4, fov_nm=FOV, probe="retrieve")
    try:
        with TestClient(create_app(_settings(tmp_path, probe_refinements_max=3))) as c:
            sid = c.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
            assert _chunk(c, pusher, sid, 0)
            assert _idle(c, sid)["defocus_nm"] == RETRIEVED_DEFOCUS
            fake.gate.clear()  # the first refinement hangs while three more chunks come in
            for series in (1, 2, 3):
                assert _chunk(c, pusher, sid, series)
            wait_until(lambda: fake.refinements == 1, timeout=30)
            probe = _status(c, sid)["probe"]
            assert probe["refinement"]["state"] == "running" and probe["defocus_nm"] == RETRIEVED_DEFOCUS
            assert fake.refinements == 1, "no second refinement queued while one runs"
            fake.gate.set()
            probe = _idle(c, sid)
            assert probe["refinements"] == 1 and probe["defocus_nm"] == RETRIEVED_DEFOCUS + STEP
            assert probe["frames"] == 8 and [e["kind"] for e in probe["history"]] == ["retrieval", "refinement"]
            n_before = len(beams)
            assert _chunk(c, pusher, sid, 4)  # 20 frames: 12 since the refinement's 8: the next one is due
            probe = wait_until(lambda: (p := _idle(c, sid))["refinements"] == 2 and p, timeout=30)
            assert probe["defocus_nm"] == RETRIEVED_DEFOCUS + 2 * STEP and probe["frames"] == 20
            assert all(b.defocus_nm >= RETRIEVED_DEFOCUS + STEP for b in beams[n_before:] if b.detector_pixels == 16), "live recon uses it"
            assert fake.most_at_once == 1
        with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
            stored = json.loads(f.attrs["probe"])
        assert stored["defocus_nm"] == RETRIEVED_DEFOCUS + 2 * STEP and stored["refinements"] == 2 and len(stored["history"]) == 3
        beams.clear()
        with TestClient(create_app(_settings(tmp_path, probe_refinements_max=3))) as c:  # restart: the refined probe is the session's
            probe = _status(c, sid)["probe"]
            assert probe["defocus_nm"] == RETRIEVED_DEFOCUS + 2 * STEP and probe["refinements"] == 2
            assert _chunk(c, pusher, sid, 5)
            assert [b for b in beams if b.detector_pixels == 16]
            assert all(b.defocus_nm >= RETRIEVED_DEFOCUS + 2 * STEP for b in beams if b.detector_pixels == 16), beams
            for series in range(6, 10):
                _chunk(c, pusher, sid, series)
            probe = _idle(c, sid)
            assert probe["refinement_attempts"] == 3, "at most probe_refinements_max, counted across the restart"
    finally:
        fake.gate.set()
        pusher.close()


@pytest.mark.parametrize(("fake", "why"), [(FakeProbeJobs(error="no overlap"), "no overlap"), (FakeProbeJobs(step=50.0), "diverged")],
                         ids=["fails", "diverges"])
def test_a_refinement_that_fails_or_diverges_keeps_the_probe_in_use_and_says_why(tmp_path, monkeypatch, fake, why):
    _install(monkeypatch, fake)
    beams = beams_reconstructed(monkeypatch)
    pusher = Pusher()
    try:
        with TestClient(create_app(_settings(tmp_path))) as c:
            sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=12, chunk=4, fov_nm=FOV, probe="retrieve"),
                         headers=AUTH).json()["session_id"]
            assert _chunk(c, pusher, sid, 0)
            _idle(c, sid)
            assert _chunk(c, pusher, sid, 1)
            probe = wait_until(lambda: (p := _idle(c, sid)).get("refinement") and p, timeout=30)
            assert _chunk(c, pusher, sid, 2)
            status = _status(c, sid)
        with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
            stored = json.loads(f.attrs["probe"])
    finally:
        pusher.close()
    assert probe["refinement"]["state"] == "failed" and why in probe["refinement"]["error"], probe
    assert probe["defocus_nm"] == RETRIEVED_DEFOCUS and probe["refinements"] == 0 and probe["state"] == "done"
    assert probe["history"][-1]["state"] == "failed" and why in probe["history"][-1]["error"]
    assert stored["defocus_nm"] == RETRIEVED_DEFOCUS and stored["refinement"]["state"] == "failed"
    assert status["state"] == "done" and all(b.defocus_nm == RETRIEVED_DEFOCUS for b in beams[-1:]), "the last chunk used the probe kept"


def test_the_gradient_refiner_refines_from_the_probe_in_use_and_reports_like_a_retrieval():
    rng = np.random.default_rng(1)
    beam = Beam(60_000.0, 33.0, 16, 6.0, 2.0, 1.0, 30.0, 1.0)
    refiner = GradientRefiner({"passes": 4, "max_positions": 8, "refinement": {"passes_per_block": 2, "steps_per_block": 2}}, "cpu")
    patterns = rng.poisson(50, (12, 16, 16)).astype(np.float32)
    paused = []
    new, report = refiner(patterns, rng.uniform(0.0, 0.3, (12, 2)), beam, (0.0, 0.0, 0.3, 0.3), lambda: paused.append(1))
    assert report["positions_used"] == 8 and report["frames"] == 12 and report["evaluations"] == 1 and np.isfinite(report["loss"])
    assert new != beam and abs(new.defocus_nm - 2.0) < 1.0, "a few small Adam steps from the probe in use"
    assert (new.energy_ev, new.convergence_mrad, new.detector_pixels) == (beam.energy_ev, beam.convergence_mrad, 16)
    assert len(paused) >= 3, "it pauses between its blocks for the decisions"
    with pytest.raises(ValueError):
        GradientRefiner({"passes_per_blok": 2})


def test_probe_jobs_are_given_the_sessions_invalid_detector_pixels(tmp_path, monkeypatch):
    # a pixel at the frame type's largest count in every frame (a DECTRIS-masked pixel): the retrieval and each refinement
    # leave it out of their losses, as the live reconstruction does (it was given to the reconstruction only)
    fake = FakeProbeJobs()
    _install(monkeypatch, fake)
    pusher = Pusher()
    body = session_body(pusher.endpoint, budget=12, chunk=4, fov_nm=FOV, probe="retrieve")
    original = pusher.series

    def with_marked_pixel(series, frames, *a, **kw):
        frames = np.array(frames)
        frames[:, 3, 5] = np.iinfo(frames.dtype).max
        return original(series, frames, *a, **kw)

    pusher.series = with_marked_pixel
    try:
        with TestClient(create_app(_settings(tmp_path))) as c:
            sid = c.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
            for series in range(3):
                _chunk(c, pusher, sid, series)
                if series == 0:  # a refinement is considered only after a later chunk's round: not if the retrieval ends after it
                    _idle(c, sid)
            wait_until(lambda: any(not first for first, _ in fake.invalid), timeout=30, what="a refinement")
            _idle(c, sid)
    finally:
        pusher.close()
    assert {first for first, _ in fake.invalid} == {True, False}
    for _, invalid in fake.invalid:
        assert invalid is not None and invalid.shape == (16, 16) and invalid[3, 5] and invalid.sum() == 1


class GatedRetrieval:
    """Stands in for ProbeRetriever.__call__ (the first retrieval): waits for ``gate``, then gives defocus 2 nm; counts its calls."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    def __call__(self, patterns, positions, beam: Beam, fov, pause, invalid_pixels=None):
        self.calls += 1
        assert self.gate.wait(30)
        pause()
        new = beam.with_aberrations(beam.aberrations.model_copy(update={"defocus_nm": RETRIEVED_DEFOCUS}))
        return new, _report(new, positions)


def test_a_probe_job_of_a_deleted_session_is_skipped_if_queued_and_its_result_discarded_if_running(tmp_path, monkeypatch, caplog):
    """Regression: a deleted session's queued probe retrieval still ran (minutes of a shared CPU) and its result, or a running
    one's, was written beside the stopped session's file."""
    retrieval = GatedRetrieval()
    monkeypatch.setattr(ProbeRetriever, "__call__", lambda self, *a: retrieval(*a))
    pushers = [Pusher(), Pusher()]
    try:
        app = create_app(_settings(tmp_path))
        with TestClient(app) as c:
            running, queued = (c.post("/api/v1/sessions", json=session_body(p.endpoint, budget=12, chunk=4, fov_nm=FOV, probe="retrieve"),
                                      headers=AUTH).json()["session_id"] for p in pushers)
            assert _chunk(c, pushers[0], running, 0)
            wait_until(lambda: _status(c, running)["probe"].get("state") == "running", timeout=30, what="the first retrieval running")
            assert _chunk(c, pushers[1], queued, 0)
            assert _status(c, queued)["probe"] == {"state": "queued"}, "waits behind the running one"
            for sid in (queued, running):
                assert c.delete(f"/api/v1/sessions/{sid}", headers=AUTH).json()["state"] == "stopped"
            retrieval.gate.set()
            background = app.state.service.background
            wait_until(lambda: background.pending == 0, timeout=30, what="the background queue empty")
            statuses = {sid: _status(c, sid) for sid in (running, queued)}
        assert retrieval.calls == 1 and background.skipped == 1, "the deleted session's queued retrieval did not run"
        for sid, status in statuses.items():
            assert status["probe"]["source"] == "nominal" and "state" not in status["probe"], (sid, status["probe"])
            assert not (tmp_path / f"{sid}.probe.json").exists(), "nothing recorded for a deleted session"
            with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
                assert "probe" not in f.attrs
        assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text
    finally:
        retrieval.gate.set()
        for p in pushers:
            p.close()


def test_a_refinement_running_when_its_session_is_deleted_is_discarded(tmp_path, monkeypatch):
    fake = FakeProbeJobs()
    _install(monkeypatch, fake)
    pusher = Pusher()
    try:
        with TestClient(create_app(_settings(tmp_path))) as c:
            sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=16, chunk=4, fov_nm=FOV, probe="retrieve"),
                         headers=AUTH).json()["session_id"]
            assert _chunk(c, pusher, sid, 0)
            retrieved = _idle(c, sid)
            fake.gate.clear()
            assert _chunk(c, pusher, sid, 1)
            wait_until(lambda: fake.refinements == 1, timeout=30, what="the refinement running")
            c.delete(f"/api/v1/sessions/{sid}", headers=AUTH)
            fake.gate.set()
            wait_until(lambda: fake.running == 0, timeout=30)
            wait_until(lambda: c.app.state.service.background.pending == 0, timeout=30)
            probe = _status(c, sid)["probe"]
        assert probe == {k: v for k, v in retrieved.items() if k != "refinement"}, "the retrieved probe stays, the refinement is forgotten"
        assert not (tmp_path / f"{sid}.probe.json").exists()
        with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
            assert json.loads(f.attrs["probe"])["defocus_nm"] == RETRIEVED_DEFOCUS
    finally:
        fake.gate.set()
        pusher.close()


def test_the_probe_has_one_shape_after_the_retrieval_and_after_a_refinement_by_either_method():
    """Regression: after the first retrieval the status's probe had no ``refinement_attempts``, after a refinement its
    ``landed_frames`` was still the retrieval's, and no history entry said how many evaluations its job made."""
    rng = np.random.default_rng(2)
    beam = Beam(60_000.0, 33.0, 16, 6.0, 2.0, 1.0, 30.0, 1.0)
    patterns, positions, fov = rng.poisson(50, (12, 16, 16)).astype(np.float32), rng.uniform(0.0, 0.3, (12, 2)), (0.0, 0.0, 0.3, 0.3)
    cheap = {"max_positions": 8, "iterations": 2}
    retrieved, report = ProbeRetriever(cheap | {"global_search": False, "refine_evaluations": 2}, "cpu")(patterns, positions, beam, fov, lambda: None)
    status = retrieval_status(landed({"state": "done", **report}, 12))
    refiners = {"gradient": GradientRefiner({"passes": 4, "max_positions": 8, "refinement": {"passes_per_block": 2}}, "cpu"),
                "nelder-mead": ProbeRetriever(PROBE_REFINEMENT | cheap | {"refine_evaluations": 2}, "cpu")}
    for method, refiner in refiners.items():
        _, refined_report = refiner(patterns, positions, retrieved, fov, lambda: None)
        assert set(refined_report) == set(report), method
        refined = refinement_status(status, landed({**refined_report, "state": "done", "frames": 12}, 16))
        assert set(refined) == set(status) | {"refinement"}, method
        assert refined["landed_frames"] == 16 and refined["evaluations"] == refined_report["evaluations"], method
        first, last = refined["history"]
        assert set(first) == set(last) == {"kind", "state", "frames", "landed_frames", *ABERRATION_KEYS, "loss", "positions_used",
                                           "evaluations", "seconds"}, method
        assert {k: last[k] for k in last if k not in ("kind",)} == {k: refined[k] for k in last if k != "kind"}, method
        failed = refinement_status(refined, landed({"state": "failed", "frames": 20, "error": "RuntimeError: x"}, 24))
        assert set(failed) == set(refined) and failed["landed_frames"] == 16, "a failure leaves the probe in use as it was"


def test_the_session_files_probe_after_the_first_retrieval_is_the_statuss(tmp_path, monkeypatch):
    """Regression: the file recorded the retrieval's bare report (no history, no refinements), so after a restart the status
    said less and the next refinement's history started without the retrieval."""
    fake = FakeProbeJobs()
    _install(monkeypatch, fake)
    pusher = Pusher()
    try:
        with TestClient(create_app(_settings(tmp_path, probe_refinement_frames=None))) as c:
            sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=12, chunk=4, fov_nm=FOV, probe="retrieve"),
                         headers=AUTH).json()["session_id"]
            assert _chunk(c, pusher, sid, 0)
            probe = _idle(c, sid)
        with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
            stored = json.loads(f.attrs["probe"])
        assert stored == probe and [e["kind"] for e in stored["history"]] == ["retrieval"]
        with TestClient(create_app(_settings(tmp_path))) as c:
            assert _status(c, sid)["probe"] == probe
            assert _chunk(c, pusher, sid, 1)
            after = wait_until(lambda: (p := _idle(c, sid)).get("refinements") and p, timeout=30, what="a refinement")
        assert [e["kind"] for e in after["history"]] == ["retrieval", "refinement"]
    finally:
        pusher.close()
