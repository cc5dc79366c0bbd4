"""Abandoning a batch (DELETE /api/v1/sessions/{id}/batches/{batch_id}): its missing positions are issued again, and a late
frame of the abandoned series is refused, never stored at a re-issued position (regressions for issue 17's abandon endpoint)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, RecordingBackend, frames_for, session_body, wait_until

from service.app import create_app
from service.settings import ServiceSettings

SESSIONS = "/api/v1/sessions"


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(ServiceSettings(storage=tmp_path / "sessions", api_keys=[KEY], ask_timeout_s=5.0), backend=RecordingBackend())) as c:
        yield c


def _status(client, sid):
    return client.get(f"{SESSIONS}/{sid}").json()


def _ask(client, sid):
    return wait_until(lambda: (r := client.post(f"{SESSIONS}/{sid}/ask", headers=AUTH)).status_code == 200 and r, what="a batch").json()


def test_abandoned_batch_is_reissued_and_late_frames_of_its_series_are_refused(client, pusher):
    sid = client.post(SESSIONS, json=session_body(pusher.endpoint), headers=AUTH).json()["session_id"]
    first = _ask(client, sid)
    assert first["batch_id"] == 0 and len(first["positions_nm"]) == 5
    assert client.post(f"{SESSIONS}/{sid}/tell", json={"batch_id": 0, "series": 1}, headers=AUTH).status_code == 202
    old = frames_for(1, 5)
    pusher.start(1, 5)
    for i in (0, 1):
        pusher.frame(1, i, old[i])
    wait_until(lambda: _status(client, sid)["frames_received"] == 2, what="2 frames of series 1")

    r = client.delete(f"{SESSIONS}/{sid}/batches/0", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"batch_id": 0, "series": 1, "positions_reissued": 3, "frames_kept": 2}
    again = _ask(client, sid)
    assert again["batch_id"] == 0 and again["positions_nm"] == first["positions_nm"][2:]  # the missing ones, same positions

    pusher.frame(1, 2, old[2])  # late frames of the abandoned series
    pusher.frame(1, 3, old[3])
    wait_until(lambda: _status(client, sid)["stream_errors"].get("unexpected", 0) == 2, what="late frames refused")
    assert _status(client, sid)["frames_received"] == 2
    # a repeat of the abandoned tell changes nothing (a series is bound once)
    assert client.post(f"{SESSIONS}/{sid}/tell", json={"batch_id": 0, "series": 1}, headers=AUTH).status_code == 200
    assert _ask(client, sid)["positions_nm"] == first["positions_nm"][2:]

    assert client.post(f"{SESSIONS}/{sid}/tell", json={"batch_id": 0, "series": 2}, headers=AUTH).json()["frames_expected"] == 3
    new = frames_for(2, 3)
    pusher.start(2, 3)
    pusher.frame(2, 0, new[0])
    pusher.frame(1, 4, old[4])  # the last late frame of series 1, while series 2 fills the same batch
    for i in (1, 2):
        pusher.frame(2, i, new[i])
    pusher.end(2)
    wait_until(lambda: _status(client, sid)["batches_reconstructed"] == 1, what="batch 0 reconstructed")
    manager = client.app.state.service.manager
    with manager.lock:
        s = manager.sessions[sid]
        stored = s.patterns[:5].copy()
        assert s.received[:5].all() and s.frames_received == 5
    np.testing.assert_array_equal(stored[:2], old[:2])  # kept, at their own positions
    np.testing.assert_array_equal(stored[2:], new)  # the re-issued positions hold series 2's frames, never series 1's
    assert _status(client, sid)["stream_errors"]["unexpected"] == 3

    r = client.delete(f"{SESSIONS}/{sid}/batches/0", headers=AUTH)
    assert r.status_code == 409 and r.json()["type"].endswith("/wrong-state")  # every frame is in
    nxt = _ask(client, sid)
    r = client.delete(f"{SESSIONS}/{sid}/batches/{nxt['batch_id']}", headers=AUTH)  # issued, not told: nothing to cut off
    assert r.json() == {"batch_id": nxt["batch_id"], "series": None, "positions_reissued": len(nxt["positions_nm"]), "frames_kept": 0}
    assert _ask(client, sid) == nxt


def test_abandon_refusals(client, pusher):
    sid = client.post(SESSIONS, json=session_body(pusher.endpoint), headers=AUTH).json()["session_id"]
    _ask(client, sid)
    for path, status, kind in (
        (f"{SESSIONS}/nope/batches/0", 404, "unknown-session"),
        (f"{SESSIONS}/{sid}/batches/7", 409, "wrong-state"),
        (f"{SESSIONS}/{sid}/batches/-1", 422, "invalid-request"),
    ):
        r = client.delete(path, headers=AUTH)
        assert r.status_code == status and r.json()["type"].endswith(kind), r.text
    assert client.delete(f"{SESSIONS}/{sid}/batches/0").status_code == 401  # control scope
    client.delete(f"{SESSIONS}/{sid}", headers=AUTH)
    r = client.delete(f"{SESSIONS}/{sid}/batches/0", headers=AUTH)
    assert r.status_code == 409 and "stopped" in r.json()["detail"]
