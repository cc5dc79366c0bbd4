"""A detector endpoint used again by a new detector (same port) after a session on an earlier one finished.

The latency bench once saw every other frame of such a session go missing (two PULL
connections on one detector: its PUSH deals round-robin). Here the earlier detector is
closed, a new one binds the same port, and a second session must get every frame in
its slot with no stream error, whether it starts before or after the idle connection
is let go (``detector_quiet_s``), with either ``detector_connection``, and whether the
new detector's series numbers go on or start again (a restarted detector, its header
before or after the tell: the finished session's bindings are dropped, its series numbers are free).
"""

from __future__ import annotations

import time

import h5py
import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, Pusher, RecordingBackend, frames_for, session_body, wait_until

from service.app import create_app
from service.settings import ServiceSettings

QUIET_S = 0.2


def run_session(c, endpoint: str, pusher: Pusher, first_series: int, header_first: bool) -> tuple[str, list[np.ndarray]]:
    """A session from create to done: ask, tell and stream each batch (frames whose content names series and index)."""
    sid = c.post("/api/v1/sessions", json=session_body(endpoint, budget=8, chunk=4), headers=AUTH).json()["session_id"]
    series, sent = first_series, []
    while True:
        r = c.post(f"/api/v1/sessions/{sid}/ask", params={"timeout_s": 5}, headers=AUTH)
        assert r.status_code == 200, r.text
        ask = r.json()
        if ask["done"]:
            return sid, sent
        images = frames_for(series, len(ask["positions_nm"]))
        if header_first:
            pusher.series(series, images)
        r = c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH)
        assert r.status_code == 202, r.text
        if not header_first:
            pusher.series(series, images)
        sent.append(images)
        series += 1


@pytest.mark.parametrize("connection", ["in_flight", "always"])
@pytest.mark.parametrize("gap_s", [0.0, 3 * QUIET_S], ids=["before-quiet", "after-quiet"])
@pytest.mark.parametrize(("restarted", "header_first"), [(False, False), (True, True), (True, False)],
                         ids=["series-go-on", "series-again", "series-again-tell-first"])
def test_a_new_detector_on_a_finished_sessions_port_delivers_every_frame(tmp_path, connection, gap_s, restarted, header_first):
    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], ask_timeout_s=5.0, detector_connection=connection, detector_quiet_s=QUIET_S)
    with TestClient(create_app(settings, backend=RecordingBackend())) as c:
        first = Pusher()
        endpoint = first.endpoint
        try:
            run_session(c, endpoint, first, 1, header_first=False)
        finally:
            first.close()
        time.sleep(gap_s)
        ingest = c.app.state.service.ingest
        if gap_s and connection == "in_flight":
            wait_until(lambda: endpoint not in ingest.receiver.endpoints, what="the idle connection let go")
        second = Pusher(first.port)
        try:
            sid, sent = run_session(c, endpoint, second, 1 if restarted else 3, header_first=header_first)
        finally:
            second.close()
        status = c.get(f"/api/v1/sessions/{sid}").json()
        metrics = c.get("/metrics").text
    assert status["state"] == "done" and status["frames_received"] == 8
    assert status["stream_errors"] == {}, status["stream_errors"]
    assert "ptychoscan_ingest_errors_total" in metrics
    assert [line for line in metrics.splitlines() if line.startswith("ptychoscan_ingest_errors_total{") and not line.endswith(" 0.0")] == []
    with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
        np.testing.assert_array_equal(f["patterns"][()], np.concatenate(sent))
