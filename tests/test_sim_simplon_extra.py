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
    assert {"pixel_mask", "threshold_energy", "nimages", "trigger_mode"} <= set(keys) and client.get(f"{D}/config/").json() == keys
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
        assert client.get(f"/{module}/api/1.8.0/config/keys").json() == ["mode"]


def test_corrections_can_be_switched_as_libertem_live_does(sim_detector):
    _, _, client = sim_detector
    for key in ("countrate_correction_applied", "flatfield_correction_applied", "pixel_mask_applied"):
        assert client.put(f"{D}/config/{key}", json={"value": True}).status_code == 200
        assert client.get(f"{D}/config/{key}").json()["value"] is True
