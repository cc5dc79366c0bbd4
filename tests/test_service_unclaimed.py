"""Frames from a detector no session reads are not held in silence: a warning per series and a counter."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, RecordingBackend, frames_for, session_body, wait_until

from service.app import create_app
from service.settings import ServiceSettings


def test_frames_no_session_reads_are_logged_and_counted(tmp_path, pushers, caplog):
    configured, other = pushers
    # connected always: the default (in_flight) would not listen to a detector no session has a batch in flight on at all
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], detectors=[configured.endpoint], ask_timeout_s=1.0, detector_connection="always")
    caplog.set_level(logging.WARNING, logger="service.manager")
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        manager = c.app.state.service.manager
        sid = c.post("/api/v1/sessions", json=session_body(other.endpoint, budget=6, chunk=3), headers=AUTH).json()["session_id"]
        wait_until(lambda: c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).status_code == 200, what="first batch")
        configured.series(1, frames_for(1, 3))  # the detector the service listens to, which the session does not name
        wait_until(lambda: manager.buffered_frames == 3, what="frames held")
        other.series(7, frames_for(7, 3))  # the session's own detector, before the tell: held as usual, not unclaimed
        wait_until(lambda: manager.buffered_frames == 6, what="frames held")
        metrics = c.get("/metrics").text
    assert "ptychoscan_ingest_unclaimed_frames_total 3.0" in metrics
    warnings = [r.getMessage() for r in caplog.records if "no session in progress reads" in r.getMessage()]
    assert warnings == [f"frames of series 1 arrive from {configured.endpoint}, but no session in progress reads that stream; they are held for a tell"]
