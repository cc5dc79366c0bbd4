"""A real LiberTEM-live 0.3 acquisition beside a service session on one simulated detector (opt-in peer test).

``ptychoscan sim-detector`` and ``ptychoscan serve --forward`` run as processes; LiberTEM-live
runs in its own venv (bench/.venvs/libertem-live, built by ``python bench/peer_venv.py
libertem-live``: ~1.4 GB, ~6 min, too heavy for CI) through bench/_libertem_live_worker.py.
Its ``DectrisDetectorConnection`` reads the service's forward endpoint and talks SIMPLON to the
simulated detector. One session of three batches:

1. LiberTEM-live's controller configures and arms the detector (ints, count/frame time,
   ``roi_mode='disabled'``, file writing off); the test tells the service that series and
   triggers. SumUDF and SumSigUDF equal the service's stored frames exactly.
2. The same with the options that used to fail: ``enable_corrections`` (LiberTEM-live reads the
   detector's pixel mask: its correction set excludes exactly the masked pixel),
   ``mask_to_zero`` (the detector zeroes that pixel), ``enable_file_writing`` with a name
   pattern, lz4 compression. LiberTEM-live 0.3.0 does not patch excluded pixels of a DECTRIS
   live acquisition (its partition's ``get_tiles`` never applies the correction set), so its
   sums still equal the service's frames, the zeroed pixel included.
3. Passive mode: LiberTEM-live waits for an arm that the test makes.

Runs only with PTYCHOSCAN_PEER_TESTS=1 and the venv present:

    PTYCHOSCAN_PEER_TESTS=1 python -m pytest -q tests/test_peer_libertem_live.py
"""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

import recon.hdf5_filters  # noqa: F401  (session files' patterns are bitshuffle-LZ4: a reader registers the filter)
from ptychoscan.client import Client
from ptychoscan.net import free_port
from tests.live_stack import LiveStack

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "_libertem_live_worker.py"
VENV_PYTHON = ROOT / "bench" / ".venvs" / "libertem-live" / "bin" / "python"

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(os.environ.get("PTYCHOSCAN_PEER_TESTS") != "1", reason="peer tests are opt-in: PTYCHOSCAN_PEER_TESTS=1"),
    pytest.mark.skipif(not VENV_PYTHON.exists(), reason="no LiberTEM-live venv: run python bench/peer_venv.py libertem-live once"),
]

KEY = "libertem-live-test-key"
K = 16
N = 16  # frames per batch: a 4 x 4 navigation shape for LiberTEM-live
MASKED = (K // 2, K // 2)  # inside the synthetic disc wherever the probe is: its neighbours are bright
D = "/detector/api/1.8.0"


class Worker:
    """The LiberTEM-live worker process and the lines it prints, read in a thread."""

    def __init__(self, job: dict, out: Path) -> None:
        (out / "job.json").write_text(json.dumps(job))
        self.log = open(out / "libertem-live.log", "w")
        self.proc = subprocess.Popen([str(VENV_PYTHON), str(WORKER), str(out / "job.json"), str(out)], stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, cwd=out)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def expect(self, word: str, timeout_s: float = 120.0) -> str:
        """The rest of the next line that starts with ``word``; AssertionError (with the worker's log) if it exits or times out."""
        try:
            line = self.lines.get(timeout=timeout_s)
        except queue.Empty:
            line = "(nothing)"
        if line is None or not line.startswith(word):
            self.log.flush()
            raise AssertionError(f"LiberTEM-live worker: expected {word!r}, got {line!r}: {Path(self.log.name).read_text()[-3000:]}")
        return line[len(word):].strip()

    def close(self) -> None:
        try:
            self.proc.wait(60)  # its executor's workers take a while to stop
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()


def _darray(mask: np.ndarray) -> dict:
    return {"__darray__": [1, 0, 0], "type": mask.dtype.str, "shape": list(mask.shape), "filters": ["base64"], "data": base64.b64encode(mask.tobytes()).decode()}


@pytest.mark.slow
def test_libertem_live_and_a_service_session_both_see_every_frame(tmp_path):
    forward_port = free_port()
    with LiveStack(tmp_path, KEY, real_reconstruction=True, specimen="synthetic", detector_pixels=K, frame_time_s=0.001,
                   extra_detector_args=["--noise", "none"], extra_service_args=["--forward", f"tcp://127.0.0.1:{forward_port}"]) as stack, \
            Client(stack.url, api_key=KEY, ask_wait_s=120.0) as client, httpx.Client(base_url=stack.microscope, timeout=120.0) as rest:
        mask = np.zeros((K, K), np.uint32)
        mask[MASKED] = 2  # a dead pixel, marked in every frame (pixel_mask_applied)
        assert rest.put(f"{D}/config/pixel_mask", json={"value": _darray(mask)}).status_code == 200
        assert rest.put(f"{D}/config/pixel_mask_applied", json={"value": True}).status_code == 200

        body = {"detector_endpoint": f"tcp://127.0.0.1:{stack.zmq_port}", "fov_nm": [0.0, 0.0, 1.0, 1.0], "budget": 3 * N, "chunk": N,
                "strategy": "sparse-grid", "detector_pixels": K, "detector_pixel_mrad": 6.0, "detector_bit_depth": 16}
        sid = client.create_session(body).session_id
        common = {"trigger_mode": "ints", "count_time": 0.001, "frame_time": 0.001}
        job = {"api_host": "127.0.0.1", "api_port": stack.rest_port, "data_host": "127.0.0.1", "data_port": forward_port,
               "bytes_per_frame": 4 * K * K, "timeout_s": 60.0, "acquisitions": [
                   {"mode": "active", "nav_shape": [4, 4], "controller": {**common, "roi_mode": "disabled", "enable_file_writing": False}},
                   {"mode": "active", "nav_shape": [4, 4], "controller": {**common, "compression": "lz4", "enable_corrections": True,
                                                                          "mask_to_zero": True, "enable_file_writing": True,
                                                                          "name_pattern": "libertem_$id", "nimages_per_file": 0}},
                   {"mode": "passive", "nav_shape": [4, 4]},
               ]}
        worker = Worker(job, tmp_path)
        try:
            for i in range(3):
                ask = client.ask(sid)
                assert len(ask.positions_nm) == N
                assert rest.put("/scan/api/1/positions", json={"positions_nm": [list(p) for p in ask.positions_nm]}).status_code == 200
                if job["acquisitions"][i]["mode"] == "passive":
                    worker.expect("waiting")
                    for key, value in {"nimages": N, "ntrigger": 1, "trigger_mode": "ints", "mask_to_zero": False}.items():
                        assert rest.put(f"{D}/config/{key}", json={"value": value}).status_code == 200
                    rest.put(f"{D}/command/arm")
                series = int(worker.expect("armed"))
                client.tell(sid, ask.batch_id, series)
                assert rest.put(f"{D}/command/trigger").status_code == 200
                assert worker.expect("done") == str(i)
            final = client.session(sid)
            for _ in range(600):
                if final.state == "done":
                    break
                time.sleep(0.2)
                final = client.session(sid)
            assert final.state == "done" and final.frames_received == 3 * N
            fw = rest.get("/filewriter/api/1.8.0/config/name_pattern").json()["value"]
        finally:
            worker.close()
        assert worker.proc.returncode == 0
        file = tmp_path / "sessions" / final.file

    with h5py.File(file, "r") as f:
        patterns = f["patterns"][:].astype(np.float64)
        assert f["received"][()].all()
        recorded = f["detector_mask"][()]  # the frames stay as sent (65535 below); the file records the pixel as not a measurement
    assert np.argwhere(recorded).tolist() == [list(MASKED)]
    assert fw == "libertem_$id"  # the controller's file-writing options reached the detector
    results = [np.load(tmp_path / f"acquisition_{i}.npz") for i in range(3)]
    for i in range(3):  # every pixel of every frame exactly as the service stored it
        frames = patterns[i * N:(i + 1) * N]
        np.testing.assert_array_equal(results[i]["sum"], frames.sum(axis=0))
        np.testing.assert_array_equal(results[i]["sumsig"].ravel(), frames.sum(axis=(1, 2)))
        assert frames.sum() > 0 and len(np.unique(frames.reshape(N, -1), axis=0)) > 1, "the frames differ (the check can fail)"
    for i in (0, 2):  # the applied mask without mask_to_zero: the largest count; no corrections asked for
        assert (patterns[i * N:(i + 1) * N, MASKED[0], MASKED[1]] == 65535).all() and not results[i]["excluded"].any()
    assert (patterns[N:2 * N, MASKED[0], MASKED[1]] == 0).all()  # mask_to_zero
    np.testing.assert_array_equal(results[1]["excluded"], mask != 0)  # enable_corrections: the detector's pixel mask, decoded


DEIGER_CALLS = """
import importlib.util, json, sys
import libertem_live, pathlib
path = pathlib.Path(libertem_live.__file__).parent / "detectors" / "dectris" / "DEigerClient.py"
spec = importlib.util.spec_from_file_location("DEigerClient", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
ec = module.DEigerClient(sys.argv[1], port=int(sys.argv[2]))
out = {
    "version": [ec.version(m)["value"] for m in ("detector", "stream", "filewriter", "monitor")],
    "config_keys": ec.listDetectorConfigParams(),
    "config_whole": sorted(ec.detectorConfig()),
    "commands": ec.listDetectorCommands(),
    "status_keys": ec.detectorStatus(),
    "humidity": ec.detectorStatus("humidity"),
    "dropped": ec.streamStatus("dropped"),
    "stream_keys": ec.streamConfig(),
    "filewriter_keys": ec.fileWriterConfig(),
    "monitor_keys": ec.monitorConfig(),
    "changed": ec.setDetectorConfig("threshold_energy", 5000.0),
    "filewriter_mode": ec.setFileWriterConfig("mode", "enabled"),
    "filewriter_state": ec.fileWriterStatus("state")["value"],
    "monitor_mode": ec.setMonitorConfig("mode", "disabled"),
    "described": {k: ec.detectorConfig(k) for k in ("threshold_energy", "photon_energy", "nexpi", "countrate_correction_count_cutoff",
                                                    "mask_to_zero", "roi_mode", "count_time")},
    "status_update": ec.sendDetectorCommand("status_update"),
    "clear": [ec.sendFileWriterCommand("clear"), ec.sendMonitorCommand("clear")],
    "arm": ec.sendDetectorCommand("arm"),
    "disarm": ec.sendDetectorCommand("disarm"),
}
print(json.dumps(out))
"""


def test_dectris_deigerclient_calls_are_answered(sim_detector):
    """DECTRIS's own DEigerClient (as LiberTEM-live 0.3 ships it) against the stand-in: every call LiberTEM-live or a script makes."""
    _, url, _ = sim_detector
    host, port = url.removeprefix("http://").split(":")
    run = subprocess.run([str(VENV_PYTHON), "-c", DEIGER_CALLS, host, port], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert out["version"] == ["1.8.0"] * 4
    assert {"pixel_mask", "mask_to_zero", "roi_mode", "threshold_energy", "nimages"} <= set(out["config_keys"])
    assert out["config_whole"] == sorted(out["config_keys"])
    assert {"arm", "trigger", "disarm", "status_update"} <= set(out["commands"])
    assert "humidity" in out["status_keys"] and out["humidity"]["value_type"] == "float"
    assert out["dropped"]["value"] == 0 and "header_detail" in out["stream_keys"]
    assert {"mode", "name_pattern", "nimages_per_file"} <= set(out["filewriter_keys"]) and "mode" in out["monitor_keys"]
    assert out["changed"] == ["threshold_energy"] and out["filewriter_mode"] == ["mode"] and out["filewriter_state"] == "ready"
    described = out["described"]
    assert described["threshold_energy"]["value"] == 5000.0 and described["threshold_energy"]["unit"] == "eV"
    assert described["mask_to_zero"] == {"value": False, "value_type": "bool", "access_mode": "rw"}
    assert described["roi_mode"]["allowed_values"] == ["disabled"] and described["count_time"]["unit"] == "s"
    assert described["countrate_correction_count_cutoff"]["access_mode"] == "r" and described["nexpi"]["value_type"] == "uint"
    assert out["arm"]["sequence id"] == out["disarm"]["sequence id"] >= 1
