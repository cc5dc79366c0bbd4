"""A probe refinement that lands after its session ended is kept across a restart (state in memory vs in the file)."""

from __future__ import annotations

import json

import h5py
from fastapi.testclient import TestClient
from service_testing import AUTH, Pusher, session_body, wait_until
from test_service_probe_live import FOV, RETRIEVED_DEFOCUS, STEP, FakeProbeJobs, _chunk, _install, _settings, _status


def test_a_refinement_landing_after_the_session_ended_survives_a_restart(tmp_path, monkeypatch):
    """The refinement running when the last chunk ends the session lands in the finished session's summary (the status, the
    converged reconstruction use it), but the file is closed and never told: after a restart the status (and a converged
    reconstruction queued again) goes back to the older probe."""
    fake = FakeProbeJobs()
    _install(monkeypatch, fake)
    pusher = Pusher()
    try:
        with TestClient(create_app_for(tmp_path)) as c:
            sid = end_with_a_refinement_running(c, pusher, fake)
            fake.gate.set()
            before = wait_until(lambda: (p := _status(c, sid)["probe"]).get("refinements") == 1 and p, timeout=60)
            assert before["defocus_nm"] == RETRIEVED_DEFOCUS + STEP  # in use for the session from now on (its summary)
        with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
            stored = json.loads(f.attrs["probe"])
        with TestClient(create_app_for(tmp_path)) as c:
            after = _status(c, sid)["probe"]
        assert (after["defocus_nm"], after.get("refinements")) == (before["defocus_nm"], 1), (after, stored)
    finally:
        fake.gate.set()
        pusher.close()


def create_app_for(tmp_path):
    from service.app import create_app

    return create_app(_settings(tmp_path))


def end_with_a_refinement_running(c, pusher, fake: FakeProbeJobs) -> str:
    """A 12-position ``probe: retrieve`` session run to done while the refinement queued at 8 frames hangs on ``fake.gate``
    (cleared here; the caller sets it); the session id."""
    sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=12, chunk=4, fov_nm=FOV, probe="retrieve"),
                 headers=AUTH).json()["session_id"]
    assert _chunk(c, pusher, sid, 0)
    wait_until(lambda: _status(c, sid)["probe"].get("state") == "done", timeout=60)
    fake.gate.clear()
    assert _chunk(c, pusher, sid, 1)
    wait_until(lambda: fake.refinements == 1, timeout=30)
    assert _chunk(c, pusher, sid, 2)
    wait_until(lambda: _status(c, sid)["state"] == "done", timeout=60)
    return sid
