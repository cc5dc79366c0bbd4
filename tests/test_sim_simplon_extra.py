"""The SIMPLON calls LiberTEM-live's controller and DEigerClient make, answered by the stand-in (they answered 404)."""

from __future__ import annotations

import base64

import numpy as np

D = "/detector/api/1.8.0"


def test_pixel_mask_round_trips_in_dectris_encoded_array_form(sim_detector):
    _, _, client = sim_detector
    got = client.get(f"{D}/config/pixel_mask").json()["value"]
    assert got["__darray__"] == [1, 0, 0] and got["filters"] == ["base64"] and got["shape"] == [64, 64] and got["type"] == "<u4"
    mask = np.zeros((64, 64), np.uint32)
    mask[3, 5] = 1
    body = {"__darray__": [1, 0, 0], "type": "<u4", "shape": [64, 64], "filters": ["base64"], "data": base64.b64encode(mask.tobytes()).decode()}
    assert client.put(f"{D}/config/pixel_mask", json={"value": body}).status_code == 200
    back = client.get(f"{D}/config/pixel_mask").json()["value"]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(back["data"]), dtype=back["type"]).reshape(back["shape"]), mask)
    assert client.put(f"{D}/config/pixel_mask", json={"value": [[0, 1]]}).status_code == 400  # wrong shape


def test_keys_status_commands_and_modules_that_were_missing(sim_detector):
    _, _, client = sim_detector
    for key, value in {"threshold_energy": 5000.0, "photon_energy": 10000.0, "nexpi": 2}.items():
        assert client.put(f"{D}/config/{key}", json={"value": value}).status_code == 200
        assert client.get(f"{D}/config/{key}").json()["value"] == value
    assert client.get(f"{D}/config/countrate_correction_count_cutoff").json()["value_type"] == "uint"
    keys = client.get(f"{D}/config/keys").json()
    assert {"pixel_mask", "threshold_energy", "nimages", "trigger_mode"} <= set(keys)
    assert "humidity" in client.get(f"{D}/status/keys").json()
    assert client.get(f"{D}/status/humidity").json()["unit"] == "%"
    assert client.put(f"{D}/command/status_update").status_code == 200
    assert client.get("/stream/api/version/").json()["value"] == "1.8.0"
    assert client.get("/stream/api/1.8.0/status/dropped").json()["value"] == 0
    assert "header_detail" in client.get("/stream/api/1.8.0/config/keys").json()
    for module in ("filewriter", "monitor"):
        for mode in ("disabled", "enabled"):
            assert client.put(f"/{module}/api/1.8.0/config/mode", json={"value": mode}).status_code == 200
            assert client.get(f"/{module}/api/1.8.0/config/mode").json()["value"] == mode
        assert client.put(f"/{module}/api/1.8.0/config/mode", json={"value": "sometimes"}).status_code == 400
        assert "mode" in client.get(f"/{module}/api/1.8.0/config/keys").json()


def test_corrections_can_be_switched_as_libertem_live_does(sim_detector):
    _, _, client = sim_detector
    for key in ("countrate_correction_applied", "flatfield_correction_applied", "pixel_mask_applied"):
        assert client.put(f"{D}/config/{key}", json={"value": True}).status_code == 200
        assert client.get(f"{D}/config/{key}").json()["value"] is True


def _series_frames(detector, client, n: int) -> np.ndarray:
    """Arm and trigger one ints series of ``n`` frames; the frames as received on the stream."""
    import time

    from detector_stream.events import Frame, SeriesEnd
    from detector_stream.receiver import StreamReceiver

    events = []
    with StreamReceiver([detector.endpoint], lambda ep, e: events.append(e)):
        for key, value in {"nimages": n, "frame_time": 0.0, "trigger_mode": "ints"}.items():
            assert client.put(f"{D}/config/{key}", json={"value": value}).status_code == 200
        client.put(f"{D}/command/arm")
        client.put(f"{D}/command/trigger")
        deadline = time.monotonic() + 10
        while not any(isinstance(e, SeriesEnd) for e in events) and time.monotonic() < deadline:
            time.sleep(0.01)
    return np.stack([e.image for e in events if isinstance(e, Frame)])


def _darray(mask: np.ndarray) -> dict:
    return {"__darray__": [1, 0, 0], "type": mask.dtype.str, "shape": list(mask.shape), "filters": ["base64"], "data": base64.b64encode(mask.tobytes()).decode()}


def test_applied_pixel_mask_marks_masked_pixels_in_frames_and_mask_to_zero_zeroes_them(sim_detector):
    """LiberTEM-live's ``mask_to_zero`` (PUT config/mask_to_zero) answered 400 'unknown', and the stored mask never reached a frame."""
    detector, _, client = sim_detector
    mask = np.zeros((64, 64), np.uint32)
    mask[10, 20] = 2  # a dead pixel (DECTRIS's mask bits: any nonzero is masked)
    mask[40, 7] = 16  # a noisy one
    assert client.put(f"{D}/config/pixel_mask", json={"value": _darray(mask)}).status_code == 200
    plain = _series_frames(detector, client, 3)
    assert plain[:, 10, 20].max() < 65535  # not applied yet: the pattern's own counts

    assert client.put(f"{D}/config/pixel_mask_applied", json={"value": True}).status_code == 200
    marked = _series_frames(detector, client, 3)
    assert (marked[:, 10, 20] == 65535).all() and (marked[:, 40, 7] == 65535).all() and marked.dtype == np.uint16
    assert client.get(f"{D}/config/mask_to_zero").json() == {"value": False, "value_type": "bool", "access_mode": "rw"}
    assert client.put(f"{D}/config/mask_to_zero", json={"value": True}).status_code == 200
    zeroed = _series_frames(detector, client, 3)
    assert (zeroed[:, 10, 20] == 0).all() and (zeroed[:, 40, 7] == 0).all()
    unmasked = np.ones((64, 64), bool)
    unmasked[10, 20] = unmasked[40, 7] = False
    assert (zeroed[:, unmasked] != 65535).all() and zeroed[:, unmasked].sum() > 0  # the rest untouched


def test_boolean_keys_take_json_booleans_only(sim_detector):
    """``bool("false")`` is True: a string value switched a correction on instead of being refused."""
    _, _, client = sim_detector
    r = client.put(f"{D}/config/pixel_mask_applied", json={"value": "false"})
    assert r.status_code == 400 and "true or false" in r.json()["error"]
    assert client.get(f"{D}/config/pixel_mask_applied").json()["value"] is False
    assert client.put(f"{D}/config/mask_to_zero", json={"value": 1}).status_code == 400


def test_roi_mode_disabled_is_accepted_and_other_modes_refused(sim_detector):
    """LiberTEM-live's ``roi_mode='disabled'`` answered 400 (unknown key); the stand-in has no ROI readout, so only 'disabled'."""
    _, _, client = sim_detector
    assert client.get(f"{D}/config/roi_mode").json()["allowed_values"] == ["disabled"]
    assert client.put(f"{D}/config/roi_mode", json={"value": "disabled"}).status_code == 200
    r = client.put(f"{D}/config/roi_mode", json={"value": "merge2x2"})
    assert r.status_code == 400 and "must be one of ['disabled']" in r.json()["error"]
    assert "roi_mode" in client.get(f"{D}/config/keys").json()


def test_filewriter_takes_the_keys_libertem_live_sets_when_file_writing_is_enabled(sim_detector):
    """``enable_file_writing=True`` sets mode, name_pattern and nimages_per_file; only mode existed (404 for the others)."""
    _, _, client = sim_detector
    fw = "/filewriter/api/1.8.0/config"
    for key, value in {"mode": "enabled", "name_pattern": "scan_$id", "nimages_per_file": 0, "image_nr_start": 1}.items():
        assert client.put(f"{fw}/{key}", json={"value": value}).status_code == 200, key
        assert client.get(f"{fw}/{key}").json()["value"] == value
    assert client.get(f"{fw}/nimages_per_file").json()["value_type"] == "uint"
    assert client.get("/filewriter/api/1.8.0/status/state").json()["value"] == "ready"
    assert client.put(f"{fw}/nimages_per_file", json={"value": -1}).status_code == 400
    assert client.put(f"{fw}/name_pattern", json={"value": ""}).status_code == 400
    assert client.put(f"{fw}/compression", json={"value": "x"}).status_code == 404
    assert set(client.get(f"{fw}/keys").json()) == {"mode", "name_pattern", "nimages_per_file", "image_nr_start"}
    assert client.put("/monitor/api/1.8.0/config/buffer_size", json={"value": 1}).status_code == 200


def test_descriptions_follow_the_dcu_bools_without_allowed_values_and_si_units(sim_detector):
    """A bool described with ``allowed_values`` [true, false] reads as an enum to clients that key on that field (areaDetector's
    ADEiger), which then write the enum's string back; a DCU describes bools by value_type alone. Lengths are in metres."""
    _, _, client = sim_detector
    for key in ("pixel_mask_applied", "countrate_correction_applied", "flatfield_correction_applied", "mask_to_zero"):
        desc = client.get(f"{D}/config/{key}").json()
        assert desc["value_type"] == "bool" and "allowed_values" not in desc and "min" not in desc, key
    for key in ("x_pixel_size", "y_pixel_size", "sensor_thickness"):
        assert client.get(f"{D}/config/{key}").json()["unit"] == "m", key
    assert client.get(f"{D}/config/count_time").json()["unit"] == "s"
    assert client.get(f"{D}/config/photon_energy").json()["unit"] == "eV"


def test_bare_config_is_the_whole_configuration_and_commands_are_listed_as_deigerclient_documents(sim_detector):
    """DEigerClient: ``detectorConfig()`` (bare ``config/``) is the full configuration, not the key list; ``listDetectorCommands()``
    reads ``command/keys``; arm and trigger answer with the sequence id; filewriter/monitor ``command/clear`` exist."""
    detector, _, client = sim_detector
    whole = client.get(f"{D}/config/").json()
    assert sorted(whole) == client.get(f"{D}/config/keys").json()
    assert whole["nimages"] == client.get(f"{D}/config/nimages").json() and whole["pixel_mask"]["value"]["__darray__"] == [1, 0, 0]
    assert {"arm", "trigger", "disarm", "initialize"} <= set(client.get(f"{D}/command/keys").json())
    frames = _series_frames(detector, client, 2)
    assert len(frames) == 2
    client.put(f"{D}/config/nimages", json={"value": 1})
    sequence = client.put(f"{D}/command/arm").json()["sequence id"]
    from detector_stream.receiver import StreamReceiver

    with StreamReceiver([detector.endpoint], lambda ep, e: None):
        assert client.put(f"{D}/command/trigger").json()["sequence id"] == sequence
    for module in ("filewriter", "monitor"):
        assert client.put(f"/{module}/api/1.8.0/command/clear").status_code == 200
    assert client.put("/stream/api/1.8.0/command/initialize").status_code == 200  # restarts the stream interface, disabled
    assert client.get("/stream/api/1.8.0/config/mode").json()["value"] == "disabled"


def test_header_detail_all_carries_the_configured_pixel_mask(sim_detector):
    """The stream's dpixelmask part was all zeros whatever mask the detector had."""
    import json

    import zmq

    detector, _, client = sim_detector
    mask = np.zeros((64, 64), np.uint32)
    mask[5, 9] = 4
    client.put(f"{D}/config/pixel_mask", json={"value": _darray(mask)})
    client.put("/stream/api/1.8.0/config/header_detail", json={"value": "all"})
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(detector.endpoint)
    try:
        client.put(f"{D}/command/arm")
        assert pull.poll(5000)
        parts = pull.recv_multipart()
    finally:
        client.put(f"{D}/command/disarm")
        pull.close(0)
        ctx.term()
    htypes = [json.loads(p).get("htype") if p.startswith(b"{") else None for p in parts]
    at = htypes.index("dpixelmask-1.0")
    np.testing.assert_array_equal(np.frombuffer(parts[at + 1], "<u4").reshape(64, 64), mask)
