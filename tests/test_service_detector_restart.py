"""A restarted detector numbers its series from 1 again: its new header starts a new run of that series number.

The next session takes the new series (no 409), frames of the earlier run never land in
the new run's slots, and a session whose series is cut by the restart gets its missing
positions re-issued instead of the new run's frames.
"""

from __future__ import annotations

import threading
import time

import h5py
import numpy as np
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, RecordingBackend, frames_for, session_body, wait_until

from service.app import create_app
from service.settings import ServiceSettings


def client(tmp_path) -> TestClient:
    return TestClient(create_app(ServiceSettings(storage=tmp_path, api_keys=[KEY], ask_timeout_s=5.0), backend=RecordingBackend()))


def run_batch(c, sid, pusher, series, images, manager, tell_first=False) -> dict:
    """Ask, then (as sim-scan does) arm/trigger (header + frames) and tell; returns the tell's answer."""
    ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
    assert len(ask["positions_nm"]) == len(images)
    held = manager.buffered_frames
    pusher.series(series, images)
    wait_until(lambda: manager.buffered_frames == held + len(images), what="frames before the tell")
    r = c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH)
    assert r.status_code == 202, r.text
    return r.json()


def test_restarted_detector_series_numbers_start_a_new_run(tmp_path, pushers):
    pusher = pushers[0]
    with client(tmp_path) as c:
        manager = c.app.state.service.manager
        first = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=6, chunk=3), headers=AUTH).json()["session_id"]
        for series in (1, 2):
            run_batch(c, first, pusher, series, frames_for(series, 3), manager)
        wait_until(lambda: c.post(f"/api/v1/sessions/{first}/ask", headers=AUTH).json().get("done"), what="first session done")
        pusher.series(3, frames_for(3, 3))  # armed and triggered, never told: held in the buffer
        wait_until(lambda: manager.buffered_frames == 3, what="untold series 3")

        # the detector restarts: series 1, 2, 3 again, with other frames
        second = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=9, chunk=3), headers=AUTH).json()["session_id"]
        sent = []
        for series in (1, 2, 3):
            images = frames_for(500 + series, 3)
            held = manager.buffered_frames
            ask = c.post(f"/api/v1/sessions/{second}/ask", headers=AUTH).json()
            pusher.series(series, images)
            expect = held + 3 if series < 3 else 3  # the earlier run's untold series 3 is dropped when the new one starts
            if series == 3:  # (the 3 held frames of the earlier run met `expect` at once: the tell raced the new header)
                wait_until(lambda: manager.endpoint_errors.get(pusher.endpoint, {}).get("stale_series") == 3, what="earlier run dropped")
            wait_until(lambda expect=expect: manager.buffered_frames == expect, what="new run's frames")
            r = c.post(f"/api/v1/sessions/{second}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH)
            assert r.status_code == 202, r.text
            assert r.json()["frames_received"] == 3
            sent.append(images)
        wait_until(lambda: c.post(f"/api/v1/sessions/{second}/ask", headers=AUTH).json().get("done"), what="second session done")
        assert c.get(f"/api/v1/sessions/{second}").json()["frames_received"] == 9
    with h5py.File(tmp_path / f"{second}.h5", "r") as f:
        np.testing.assert_array_equal(f["patterns"][()], np.concatenate(sent).astype(f["patterns"].dtype))


def test_detector_restart_mid_series_reissues_the_cut_batch(tmp_path, pushers):
    pusher = pushers[0]
    with client(tmp_path) as c:
        manager = c.app.state.service.manager
        sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=6, chunk=3), headers=AUTH).json()["session_id"]
        ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        old = frames_for(4, 3)
        pusher.start(4, 3)
        pusher.frame(4, 0, old[0])  # the detector dies after one frame (no series end)
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 4}, headers=AUTH)
        wait_until(lambda: c.get(f"/api/v1/sessions/{sid}").json()["frames_received"] == 1, what="first frame")
        new = frames_for(900, 3)
        pusher.series(4, new)  # restarted, it reaches series number 4 again before this session tells anything new
        again = wait_until(lambda: (a := c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()).get("positions_nm") and a, what="re-issued batch")
        assert again["batch_id"] == ask["batch_id"] and len(again["positions_nm"]) == 2
        status = c.get(f"/api/v1/sessions/{sid}").json()
        assert status["frames_received"] == 1  # none of the new run's frames went into the cut batch's slots
        wait_until(lambda: manager.buffered_frames == 3, what="the new run's series 4 held")
        later = frames_for(901, 2)  # the scan of the re-issued positions: a series armed after the re-ask
        pusher.series(5, later)
        wait_until(lambda: manager.buffered_frames == 5, what="series 5 held for its tell")
        r = c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 5}, headers=AUTH)
        assert r.status_code == 202 and r.json()["frames_received"] == 2
    with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
        patterns = f["patterns"][()]
    np.testing.assert_array_equal(patterns[:3], np.stack([old[0], later[0], later[1]]).astype(patterns.dtype))


def test_frames_taken_before_a_reissued_batch_was_asked_for_are_not_its_frames(tmp_path, pushers):
    """The new run's series 4 was acquired before the client had the re-issued positions: telling it for them stores nothing."""
    pusher = pushers[0]
    with client(tmp_path) as c:
        manager = c.app.state.service.manager
        sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=6, chunk=3), headers=AUTH).json()["session_id"]
        ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        pusher.start(4, 3)
        pusher.frame(4, 0, frames_for(4, 3)[0])
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 4}, headers=AUTH)
        wait_until(lambda: c.get(f"/api/v1/sessions/{sid}").json()["frames_received"] == 1, what="first frame")
        pusher.series(4, frames_for(900, 3))  # the restarted detector's series 4, before the re-ask
        wait_until(lambda: manager.buffered_frames == 3, what="the new run's series 4 held")
        wait_until(lambda: c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json().get("positions_nm"), what="re-issued batch")
        r = c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 4}, headers=AUTH)
        assert r.status_code == 202 and r.json()["frames_received"] == 0  # (was 2: frames taken elsewhere stored at these positions)
        assert c.get(f"/api/v1/sessions/{sid}").json()["frames_received"] == 1


def test_tell_that_overtakes_the_new_runs_header_waits_for_it(tmp_path, pushers):
    pusher = pushers[0]
    with client(tmp_path) as c:
        manager = c.app.state.service.manager
        first = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=3, chunk=3), headers=AUTH).json()["session_id"]
        run_batch(c, first, pusher, 1, frames_for(1, 3), manager)
        second = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=3, chunk=3), headers=AUTH).json()["session_id"]
        ask = c.post(f"/api/v1/sessions/{second}/ask", headers=AUTH).json()
        answers = []
        teller = threading.Thread(target=lambda: answers.append(
            c.post(f"/api/v1/sessions/{second}/tell", json={"batch_id": ask["batch_id"], "series": 1}, headers=AUTH)))
        teller.start()  # the tell reaches the service before the restarted detector's header of series 1
        time.sleep(0.3)
        pusher.series(1, frames_for(501, 3))
        teller.join(10)
        assert answers and answers[0].status_code == 202, answers and answers[0].text
        wait_until(lambda: c.get(f"/api/v1/sessions/{second}").json()["frames_received"] == 3, what="new run's frames stored")
