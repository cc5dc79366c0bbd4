"""Ingest: frames pushed over ZeroMQ (stream v1) land in the right session and slot; bad input is counted, never fatal."""

from __future__ import annotations

import json

import h5py
import numpy as np
from fastapi.testclient import TestClient
from service_testing import AUTH, KEY, RecordingBackend, frames_for, session_body, wait_until

from detector_stream.messages import image_parts
from service.app import create_app
from service.settings import ServiceSettings


def _client(tmp_path, **kw):
    settings = ServiceSettings(storage=tmp_path / "sessions", api_keys=[KEY], ask_timeout_s=5.0, **kw)
    backend = RecordingBackend()
    c = TestClient(create_app(settings, backend=backend))
    c.backend = backend
    return c


def _status(c, sid):
    return c.get(f"/api/v1/sessions/{sid}").json()


def test_two_sessions_same_series_number_never_mix_and_files_hold_every_frame(tmp_path, pushers):
    with _client(tmp_path) as c:
        sids = [c.post("/api/v1/sessions", json=session_body(p.endpoint, budget=6, chunk=3), headers=AUTH).json()["session_id"] for p in pushers]
        sent = {sid: [] for sid in sids}
        for round_ in range(2):
            for n, (sid, p) in enumerate(zip(sids, pushers, strict=True)):
                ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
                series = 40 + round_  # the same series numbers on both detectors
                images = frames_for(series + 100 * n, len(ask["positions_nm"]))
                if n == 0:  # frames first, tell afterwards: buffered until the tell
                    p.series(series, images)
                    wait_until(lambda p=p: c.app.state.service.manager.buffered_frames >= 3 or None, what="buffered frames")
                    r = c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH)
                    assert r.json()["frames_received"] == 3
                else:
                    c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH)
                    p.series(series, images)
                sent[sid].append(images)
        for sid in sids:
            assert c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()["done"] is True
            st = _status(c, sid)
            assert st["frames_received"] == 6 and st["stream_errors"] == {}
        assert c.app.state.service.manager.buffered_frames == 0
    for sid in sids:
        with h5py.File(tmp_path / "sessions" / f"{sid}.h5", "r") as f:
            np.testing.assert_array_equal(f["patterns"][()], np.concatenate(sent[sid]).astype(np.uint32))
            assert f["received"][()].all() and f.attrs["state"] == "done"
            assert len(f["reconstructions"]) == 2
            assert json.loads(f.attrs["session_params"])["detector_endpoint"] in [p.endpoint for p in pushers]
    from recon.dataset import read_dataset

    ds = read_dataset(tmp_path / "sessions" / f"{sids[0]}.h5")
    assert ds.patterns.shape == (6, 16, 16) and ds.positions_nm.shape == (6, 2)


def test_duplicated_out_of_order_malformed_truncated_are_counted(tmp_path, pushers):
    p = pushers[0]
    with _client(tmp_path) as c:
        sid = c.post("/api/v1/sessions", json=session_body(p.endpoint, budget=5, chunk=5), headers=AUTH).json()["session_id"]
        ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 9}, headers=AUTH)
        images = frames_for(9, 5)
        p.start(9, 6)  # the detector announces one frame more than the batch has
        p.frame(9, 0, images[0])
        p.raw([b"\x00garbage"])  # not JSON
        p.raw([b'{"htype":"dimage-1.0","series":9,"frame":1}', b"{}"])  # truncated: 2 parts
        bad = image_parts(9, 1, images[1], "bs16-lz4<", 0, 1, 1)
        bad[2] = bad[2][:-7]  # truncated blob
        p.raw(bad)
        corrupt = image_parts(9, 1, images[1], "bs16-lz4<", 0, 1, 1)
        corrupt[0] = json.dumps({"htype": "dimage-1.0", "series": 9, "frame": 1, "hash": "0" * 32}).encode()
        p.raw(corrupt)
        for i in (2, 1, 1, 3, 4):  # out of order and a duplicate
            p.frame(9, i, images[i])
        p.frame(9, 5, np.zeros((8, 8), np.uint16))  # beyond the batch (and the wrong shape)
        p.end(9)
        st = wait_until(lambda: (s := _status(c, sid))["frames_received"] == 5 and "unexpected" in s["stream_errors"] and s, what="all frames")
        errors = st["stream_errors"]
        assert errors.get("duplicated", 0) >= 1
        assert errors.get("out_of_order", 0) >= 1
        assert errors.get("malformed", 0) >= 1
        assert errors.get("unexpected", 0) == 1
        assert errors.get("truncated", 0) >= 2
        assert errors.get("corrupt", 0) >= 1
        assert st["recent_errors"]
        assert c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()["done"] is True
        metrics = c.get("/metrics").text
        assert 'ptychoscan_ingest_errors_total{kind="duplicated"}' in metrics
        with h5py.File(tmp_path / "sessions" / f"{sid}.h5", "r") as f:
            np.testing.assert_array_equal(f["patterns"][()], images.astype(np.uint32))


def test_series_ending_early_reissues_the_missing_positions(tmp_path, pushers):
    p = pushers[0]
    with _client(tmp_path) as c:
        sid = c.post("/api/v1/sessions", json=session_body(p.endpoint, budget=4, chunk=4), headers=AUTH).json()["session_id"]
        ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": 0, "series": 1}, headers=AUTH)
        images = frames_for(1, 4)
        p.start(1, 4)
        p.frame(1, 0, images[0])
        p.frame(1, 2, images[2])
        p.end(1)
        again = wait_until(lambda: (a := c.post(f"/api/v1/sessions/{sid}/ask", params={"timeout_s": 0.2}, headers=AUTH)).status_code == 200 and a.json(), what="re-issue")
        assert again["batch_id"] == 0
        np.testing.assert_allclose(again["positions_nm"], np.asarray(ask["positions_nm"])[[1, 3]])
        errors = _status(c, sid)["stream_errors"]
        assert errors["incomplete_series"] == 1 and errors["reissued"] == 1
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": 0, "series": 2}, headers=AUTH)
        p.series(2, images[[1, 3]])
        assert c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()["done"] is True
        with h5py.File(tmp_path / "sessions" / f"{sid}.h5", "r") as f:
            np.testing.assert_array_equal(f["patterns"][()], images.astype(np.uint32))
            assert list(f["slot_series"][()]) == [1, 2, 1, 2]


def test_untold_frames_are_bounded(tmp_path, pushers):
    p = pushers[0]
    with _client(tmp_path, max_buffered_frames=4) as c:
        c.post("/api/v1/sessions", json=session_body(p.endpoint), headers=AUTH)
        p.series(5, frames_for(5, 3))
        p.series(6, frames_for(6, 3))
        m = c.app.state.service.manager
        # series 5 is evicted when series 6's second frame arrives; wait for series 6's third too
        wait_until(
            lambda: (m.endpoint_errors.get(p.endpoint, {}).get("buffer_overflow") == 3 and m.buffered_frames == 3) or None,
            what="overflow counted and series 6 buffered",
        )
        assert m.buffered_frames == 3 and list(m.buffer) == [(p.endpoint, 6)]


def test_session_file_keeps_the_detectors_pixel_type_and_refuses_counts_it_cannot_hold(tmp_path, pushers):
    p = pushers[0]
    with _client(tmp_path) as c:
        for bits in (12, 64):  # not a stream v1 pixel type
            r = c.post("/api/v1/sessions", json=session_body(p.endpoint) | {"detector_bit_depth": bits}, headers=AUTH)
            assert r.status_code == 422 and "detector_bit_depth" in r.text
        body = session_body(p.endpoint, budget=3, chunk=3) | {"detector_bit_depth": 16}
        sid = c.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
        ask = c.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 5}, headers=AUTH)
        images = frames_for(5, 3).astype(np.uint32)
        p.start(5, 3)
        p.frame(5, 0, images[0], "bs32-lz4<")  # 32-bit frames whose counts fit 16 bits: stored
        too_bright = images[1].copy()
        too_bright[3, 3] = 70_000
        p.frame(5, 1, too_bright, "bs32-lz4<")  # refused, never wrapped round to 4464
        p.frame(5, 2, images[2].astype(np.uint16))
        p.end(5)
        st = wait_until(lambda: (s := _status(c, sid))["stream_errors"].get("malformed") and s["frames_received"] == 2 and s, what="the refused frame and the two others")
        assert st["stream_errors"]["malformed"] == 1
        assert any("70000" in e["detail"] and "uint16" in e["detail"] for e in st["recent_errors"]), st["recent_errors"]
        c.app.state.service.manager.flush_all()
        with h5py.File(tmp_path / "sessions" / f"{sid}.h5", "r") as f:
            assert f["patterns"].dtype == np.uint16
            assert list(f["received"][()]) == [1, 0, 1]
            np.testing.assert_array_equal(f["patterns"][[0, 2]], images[[0, 2]])
