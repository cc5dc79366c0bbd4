"""Every CLI error path the issue lists ends with one ``error:`` line on stderr and exit code 2, no traceback."""

from __future__ import annotations

import socket

import pytest
import torch

from ptychoscan.cli import main


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture
def busy_port():
    """A loopback port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_device_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["serve", "--device", "cuda", "--storage", str(tmp_path), "--port", "0"]) == 2
    assert "CUDA" in one_error_line(capsys)


def test_serve_unknown_device(tmp_path, capsys):
    assert main(["serve", "--device", "gpu", "--storage", str(tmp_path), "--port", "0"]) == 2
    assert "gpu" in one_error_line(capsys)


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["train", "pretrain"], ["evaluate", "--datasets", "x.h5", "--json", "o.json"]])
def test_malformed_yaml_config(tmp_path, capsys, command):
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage: [out\n  port: 8000:\n")
    assert main([*command, "--config", str(bad)]) == 2
    assert "bad.yaml" in one_error_line(capsys)


def test_serve_storage_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "sessions"
    path.write_text("not a folder")
    assert main(["serve", "--storage", str(path), "--port", "0"]) == 2
    assert "sessions" in one_error_line(capsys)


def test_serve_port_in_use(tmp_path, capsys, busy_port):
    assert main(["serve", "--storage", str(tmp_path), "--port", str(busy_port)]) == 2
    assert str(busy_port) in one_error_line(capsys)


def test_sim_scan_url_that_is_not_http(capsys):
    assert main(["sim-scan", "--service", "localhost:8000", "--microscope", "http://127.0.0.1:9", "--api-key", "k"]) == 2
    assert "service" in one_error_line(capsys)


def test_sim_detector_ports_in_use(capsys, busy_port):
    assert main(["sim-detector", "--port", str(busy_port), "--rest-port", "0"]) == 2
    assert str(busy_port) in one_error_line(capsys)
    assert main(["sim-detector", "--port", "0", "--rest-port", str(busy_port)]) == 2
    assert str(busy_port) in one_error_line(capsys)
