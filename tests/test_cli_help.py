"""A newcomer's CLI: --help shows defaults, sim-detector takes --defocus-nm and prints its field of view, sim-scan says how to fetch the result."""

from __future__ import annotations

import pytest
import uvicorn

import sim_microscope.control_loop
import sim_microscope.frame_source
from ptychoscan.cli import COMMAND_MODULES, main

COMMANDS = [name.rsplit(".", 1)[1].replace("_", "-") for name in COMMAND_MODULES]


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_help_shows_defaults(command, capsys):
    assert "default" in help_text(command, capsys)


def test_help_names_the_defaults_of_the_simulated_microscope(capsys):
    detector = help_text("sim-detector", capsys)
    for option in ("--port PORT ZeroMQ PUSH port (stream v1) (default: 9999)", "--defocus-nm DEFOCUS_NM", "(default: 60000.0)", "(default: 64)"):
        assert option in detector
    scan = help_text("sim-scan", capsys)
    assert "positions in total (paper: 250-500) (default: 250)" in scan and "(default: (0.0, 0.0, 2.0, 2.0))" in scan
    assert "(default: None)" not in detector + scan


class FakeSpecimen:
    def __init__(self, kind, size_nm, **options):
        FakeSpecimen.made = (kind, size_nm, options)
        self.detector_pixels = options["detector_pixels"]
        self.extent_nm = (-0.25, -0.25, 3.5, 3.5)


def test_sim_detector_defocus_and_field_of_view(monkeypatch, capsys):
    monkeypatch.setattr(sim_microscope.frame_source, "SpecimenSource", FakeSpecimen)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    assert main(["sim-detector", "--specimen", "mos2", "--defocus-nm", "12", "--port", "0", "--rest-port", "0"]) == 0
    assert FakeSpecimen.made[2]["defocus_nm"] == 12.0
    out = capsys.readouterr().out
    assert "field of view: x0 -0.250 nm, y0 -0.250 nm, 3.500 x 3.500 nm (sim-scan --fov-nm -0.250 -0.250 3.500 3.500 or inside it)" in out


def test_sim_detector_defocus_needs_a_specimen(capsys):
    assert main(["sim-detector", "--defocus-nm", "12", "--port", "0", "--rest-port", "0"]) == 2
    assert "--defocus-nm applies to --specimen" in capsys.readouterr().err
    # the synthetic pattern has no probe to defocus: it was ignored silently (review)
    assert main(["sim-detector", "--specimen", "synthetic", "--defocus-nm", "12", "--port", "0", "--rest-port", "0"]) == 2
    assert "--defocus-nm applies to --specimen" in capsys.readouterr().err


def test_sim_scan_says_how_to_fetch_the_result(monkeypatch, capsys):
    monkeypatch.setattr(sim_microscope.control_loop, "run_scan", lambda config: {"session_id": "abc123", "batches": 1, "frames": 5})
    assert main(["sim-scan", "--service", "http://127.0.0.1:8000/", "--microscope", "http://127.0.0.1:8080", "--api-key", "k"]) == 0
    err = capsys.readouterr().err
    assert "curl -o recon.png -H 'Accept: image/png' http://127.0.0.1:8000/api/v1/sessions/abc123/reconstruction" in err
    assert "abc123.h5" in err
