"""The README's service walk-through (section "Acquisition service") as commands the CLI accepts, with one beam.

Issue 17: followed literally, the walk-through must end on a converged PNG that shows the MoS2 lattice. At its density
(250 positions on 2 x 2 nm) that needs a defocused probe, on the simulated beam (sim-detector) and in the probe the
service reconstructs with (sim-scan) alike; with the flag on one of them only, the PNG is noise (bench/RESULTS.md,
"Walk-through reconstruction"). The full run is bench/walkthrough_recon.sh (about a minute); this checks the text, and that the bluesky section's
example (the same field and budget) uses the same defocused beam.
"""

from __future__ import annotations

import ast
import itertools
import re
import shlex
from pathlib import Path

from ptychoscan.cli import build_parser
from service.models import SessionCreate

ROOT = Path(__file__).resolve().parents[1]


def walkthrough_commands() -> dict[str, list[str]]:
    """The ptychoscan commands of the README's walk-through block, by subcommand (argv after ``ptychoscan``)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Acquisition service"):]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    block = next(b for b in blocks if "sim-detector --specimen mos2" in b)
    commands: dict[str, list[str]] = {}
    for line in block.splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0] == "ptychoscan":
            commands[argv[1]] = argv[1:]
    return commands


def test_walkthrough_parses_and_uses_one_defocused_beam() -> None:
    commands = walkthrough_commands()
    assert {"sim-detector", "sim-scan"} <= commands.keys()
    parser = build_parser()
    detector = parser.parse_args(commands["sim-detector"])
    scan = parser.parse_args(commands["sim-scan"])
    assert detector.specimen == "mos2"
    assert detector.defocus_nm >= 10.0, "in focus, 250 positions on 2 x 2 nm show isolated columns, not the lattice"
    assert scan.probe == "retrieve" or scan.defocus_nm == detector.defocus_nm, "the service must reconstruct with the beam's defocus"
    assert scan.budget / (scan.fov_nm[2] * scan.fov_nm[3]) <= 125.0, "the walk-through stays within the product's density"


def test_walkthrough_picture_is_there_and_small() -> None:
    readme = (ROOT / "README.md").read_text()
    names = re.findall(r"\((docs/walkthrough_[a-z_]+\.png)\)", readme)
    assert names, "the walk-through shows its picture"
    for name in names:
        path = ROOT / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 60_000


def bluesky_example() -> tuple[list[str], dict]:
    """The bluesky section's example: the sim-detector command in its comments (argv after ``ptychoscan``) and the session
    body it starts (the literal fields only)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## bluesky drives a session"):]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    line = next(line for line in block.splitlines() if line.startswith("# ptychoscan sim-detector"))
    detector = list(itertools.takewhile(lambda arg: not arg.startswith("("), shlex.split(line.lstrip("# "), comments=True)))  # no remark
    start = next(node for node in ast.walk(ast.parse(block))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "start")
    body = {ast.literal_eval(k): ast.literal_eval(v) for k, v in zip(start.args[1].keys, start.args[1].values, strict=True)
            if isinstance(v, (ast.Constant, ast.List))}
    return detector[1:], body


def test_bluesky_example_uses_the_walkthroughs_defocused_beam() -> None:
    """The example scanned in focus at 62.5 positions per nm^2, where the reconstruction shows isolated columns only."""
    argv, body = bluesky_example()
    detector = build_parser().parse_args(argv)
    assert detector.specimen == "mos2"
    assert detector.defocus_nm >= 10.0, "in focus, 250 positions on 2 x 2 nm show isolated columns, not the lattice"
    assert body.get("defocus_nm", 0.0) == detector.defocus_nm, "the service must reconstruct with the beam's defocus"
    SessionCreate(**body)  # a body the service takes
    fov = body["fov_nm"]
    assert body["budget"] / (fov[2] * fov[3]) <= 125.0
