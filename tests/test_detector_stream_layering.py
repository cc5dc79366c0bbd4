"""``detector_stream`` sits below both the service and the simulator: neither it nor the simulated detector imports the service."""

from __future__ import annotations

import subprocess
import sys

from tests.subprocess_env import REPO, repo_env

CHILD = """
import sys
import detector_stream.receiver, detector_stream.decoder, sim_microscope.detector
print(sorted(m for m in sys.modules if m == "service" or m.startswith("service.")))
"""


def test_the_stream_package_and_the_simulated_detector_do_not_import_the_service():
    run = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_each_module_stays_small():
    for path in sorted((REPO / "detector_stream").glob("*.py")):
        assert len(path.read_text().splitlines()) <= 400, path.name
