"""CLI: sim-detector serves REST + stream in its own process; sim-scan rejects bad options in one line."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from ptychoscan.cli import main
from ptychoscan.net import free_port
from tests.subprocess_env import repo_env


def test_sim_detector_process_serves_simplon(tmp_path):
    port, rest = free_port(), free_port()
    env = repo_env()
    cmd = [sys.executable, "-m", "ptychoscan.cli", "sim-detector", "--specimen", "synthetic", "--detector-pixels", "16",
           "--port", str(port), "--rest-port", str(rest), "--frame-time", "0.002"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, version = time.monotonic() + 30, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                version = httpx.get(f"http://127.0.0.1:{rest}/detector/api/version/", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert version == {"value": "1.8.0", "value_type": "string"}
        desc = httpx.get(f"http://127.0.0.1:{rest}/detector/api/1.8.0/config/frame_time").json()
        assert desc["value"] == 0.002
        assert httpx.get(f"http://127.0.0.1:{rest}/detector/api/1.8.0/config/x_pixels_in_detector").json()["value"] == 16
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_sim_scan_bad_option_and_unreachable_service(capsys):
    args = ["sim-scan", "--service", "http://127.0.0.1:9", "--microscope", "http://127.0.0.1:9", "--api-key", "k"]
    assert main([*args, "--budget", "0"]) == 2
    assert "invalid sim-scan option: budget" in capsys.readouterr().err
    assert main(args) == 2
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_sim_detector_bad_option(capsys):
    assert main(["sim-detector", "--dose", "0", "--port", "0", "--rest-port", "0"]) == 2
    assert "--dose > 0" in capsys.readouterr().err
