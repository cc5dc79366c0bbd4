"""A service, a ``sim-detector`` and a ``sim-scan`` as separate processes, and headless Chromium: the live view end to end.

Shared by the browser test (``tests/test_live_view_browser.py``) and the screenshot
script (``bench/live_view_screenshots.py``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ptychoscan.net import free_port
from tests.subprocess_env import REPO, repo_env

CHROMIUM = os.environ.get("PTYCHOSCAN_CHROMIUM", "/usr/bin/chromium")
"""Debian's chromium (``apt-get install chromium``); Playwright's own browser download is not used."""
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def browser_unavailable() -> str | None:
    """Why the browser test cannot run here (None: it can): Playwright not installed or no Chromium executable."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set PTYCHOSCAN_CHROMIUM)"
    return None


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
    """Wait until ``url`` answers (any status) while ``proc`` runs; RuntimeError with the log's tail if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s: {log.read_text()[-2000:]}")


class LiveStack:
    """The processes of one live-view run, in ``out``: service, detector, (later) the scan; each one's output in a log file there.

    ``real_reconstruction``: ``ptychoscan serve`` with the torch reconstructor (slow on a
    2-core machine, a real phase image); otherwise ``tests/service_server.py`` with the
    tests' recording backend (fast, the 'phase' a histogram of the positions).
    """

    def __init__(self, out: Path, key: str, *, real_reconstruction: bool = False, specimen: str = "synthetic", detector_pixels: int = 16,
                 frame_time_s: float = 0.05, open_reads: bool = False, extra_detector_args: list[str] | None = None,
                 extra_service_args: list[str] | None = None) -> None:
        self.out = Path(out)
        self.key = key
        self.real = real_reconstruction
        self.specimen = specimen
        self.k = detector_pixels
        self.frame_time_s = frame_time_s
        self.open_reads = open_reads
        self.extra_detector_args = list(extra_detector_args or [])
        self.extra_service_args = list(extra_service_args or [])
        if self.extra_service_args and not real_reconstruction:
            raise ValueError("extra_service_args are options of ptychoscan serve (real_reconstruction=True)")
        self.port, self.zmq_port, self.rest_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.microscope = f"http://127.0.0.1:{self.rest_port}"
        self.procs: list[subprocess.Popen] = []
        self.scan: subprocess.Popen | None = None

    def _spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen:
        with open(self.out / f"{name}.log", "w") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=repo_env(**env), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> LiveStack:
        self.out.mkdir(parents=True, exist_ok=True)
        storage = self.out / "sessions"
        env = {"PTYCHOSCAN_OPEN_READS": "true" if self.open_reads else "false"}
        try:
            if self.real:
                service = self._spawn("service", ["-m", "ptychoscan.cli", "serve", "--port", str(self.port), "--storage", str(storage),
                                                  "--api-key", self.key, "--log-level", "warning", *self.extra_service_args], **env)
            else:
                service = self._spawn("service", [str(REPO / "tests" / "service_server.py"), str(storage), str(self.port), self.key], **env)
            detector = self._spawn("sim-detector", [
                "-m", "ptychoscan.cli", "sim-detector", "--specimen", self.specimen, "--detector-pixels", str(self.k),
                "--port", str(self.zmq_port), "--rest-port", str(self.rest_port), "--frame-time", str(self.frame_time_s),
                *self.extra_detector_args,
            ])
            wait_http(f"{self.url}/healthz", service, self.out / "service.log")
            wait_http(f"{self.microscope}/detector/api/version/", detector, self.out / "sim-detector.log")
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_scan(self, budget: int, chunk: int, strategy: str = "sparse-grid", fov_nm: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)) -> None:
        """Run ``ptychoscan sim-scan`` against the service and detector (in the background)."""
        self.scan = self._spawn("sim-scan", [
            "-m", "ptychoscan.cli", "sim-scan", "--service", self.url, "--microscope", self.microscope, "--api-key", self.key,
            "--detector-endpoint", f"tcp://127.0.0.1:{self.zmq_port}", "--budget", str(budget), "--chunk", str(chunk),
            "--strategy", strategy, "--detector-pixels", str(self.k), "--frame-time", str(self.frame_time_s),
            "--fov-nm", *(str(v) for v in fov_nm),
        ])

    def __exit__(self, *exc) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


def launch_chromium(playwright):
    """Headless Debian Chromium under Playwright (a fresh profile: Playwright makes one per launch)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
