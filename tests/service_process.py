"""The service as a child process (``tests/service_server.py``) on a free loopback port, for tests of real HTTP clients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from service_testing import KEY, wait_until
from subprocess_env import REPO, repo_env

from ptychoscan.net import free_port


class ServiceProcess:
    """``with ServiceProcess(storage) as svc: svc.url``: started and healthy on enter, terminated on exit."""

    def __init__(self, storage: Path, key: str = KEY) -> None:
        self.storage, self.key = storage, key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServiceProcess:
        cmd = [sys.executable, str(REPO / "tests" / "service_server.py"), str(self.storage), str(self.port), self.key]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=repo_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            assert self.proc.poll() is None, f"service exited with {self.proc.returncode}"
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=60.0, interval=0.2, what="service process ready")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
