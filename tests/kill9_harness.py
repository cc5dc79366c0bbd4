"""kill -9 property harness: a control-software stand-in runs sessions against a real server subprocess and kills it at random moments.

Kill moments: right after a session is created, after a tell (before its frames), in the
middle of a series, after a whole series and its end (the chunk is being reconstructed),
and between a series and its tell (frames sent first). After each restart the control
software repeats its outstanding tell (200 expected when the tell was recorded), the
detector may continue the interrupted series (late frames), and duplicates of old
frames are sent now and then. Checked: no frame acknowledged (``frames_persisted``)
before a kill is missing after it, every stored frame (series S, index i) sits at the
position the control software was given for (S, i), every session reaches done.

Used by tests/test_service_kill9.py (bounded) and bench/kill9_property.py (>= 50 kills).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import httpx
import numpy as np
import zmq
from service_testing import AUTH, KEY, Pusher, free_port, session_body

ROOT = Path(__file__).resolve().parents[1]
K = 16
MOMENTS = ("after tell", "mid-series", "after series (reconstructing)", "between series and tell")


def image(series: int, index: int) -> np.ndarray:
    """The frame (series, index): its content says which it is."""
    img = np.full((K, K), (series * 7 + index) % 60000, np.uint16)
    img[0, 0], img[0, 1] = series % 60000, index
    return img


class Server:
    """tests/service_server.py in a subprocess on one storage folder; ``kill`` is kill -9, ``start`` a restart."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.proc: subprocess.Popen | None = None
        self.client: httpx.Client | None = None

    def start(self) -> httpx.Client:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [sys.executable, str(ROOT / "tests" / "service_server.py"), str(self.storage), str(port), KEY]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return self.client
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("server did not come up")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        if self.client is not None:
            self.client.close()


@dataclass
class Report:
    kills: int = 0
    kills_by_moment: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    frames_checked: int = 0
    acknowledged_lost: int = 0
    misplaced: int = 0
    repeated_tells: dict[int, int] = field(default_factory=dict)
    """status code -> count of tells repeated after a restart."""
    late_frames_unsent: int = 0
    """late duplicates not sent: no server was listening (restarted after the session was done, it connects to no detector)."""


class Control:
    """The control software and the detector: one session at a time, kills at random moments until ``kills`` is reached."""

    def __init__(self, storage: Path, kills: int, seed: int, p_kill: float = 0.5) -> None:
        self.server = Server(storage)
        self.rng = random.Random(seed)
        self.target = kills
        self.p_kill = p_kill
        self.report = Report()
        self.pusher = Pusher()
        self.pusher.sock.setsockopt(zmq.SNDTIMEO, 20_000)
        self.next_series = 1
        self.planned = ""
        """the moment at which the current batch may be killed."""
        self.told: dict[int, list] = {}
        """series -> positions (nm) the control software was given for its frames 0..n-1."""

    @property
    def c(self) -> httpx.Client:
        return self.server.client

    def maybe_kill(self, sid: str, moment: str) -> bool:
        """At the batch's planned moment, with probability p_kill (while kills remain): note what is acknowledged, kill -9,
        restart, check nothing acknowledged is lost."""
        if moment != self.planned or self.report.kills >= self.target or self.rng.random() > self.p_kill:
            return False
        time.sleep(self.rng.uniform(0.0, 0.12))
        acked = self.c.get(f"/api/v1/sessions/{sid}").json()["frames_persisted"]
        self.server.kill()
        self.report.kills += 1
        self.report.kills_by_moment[moment] = self.report.kills_by_moment.get(moment, 0) + 1
        self.server.start()
        after = self.c.get(f"/api/v1/sessions/{sid}").json()["frames_received"]
        self.report.acknowledged_lost += max(0, acked - after)
        return True

    def send(self, series: int, indices: list[int], end: bool, n: int) -> None:
        if indices and indices[0] == 0:
            self.pusher.start(series, n, K)
        for i in indices:
            self.pusher.frame(series, i, image(series, i))
        if end:
            self.pusher.end(series)

    def ask(self, sid: str) -> dict:
        while True:
            r = self.c.post(f"/api/v1/sessions/{sid}/ask", params={"timeout_s": 5}, headers=AUTH)
            if r.status_code == 200:
                return r.json()
            assert r.status_code == 503, r.text

    def tell(self, sid: str, batch_id: int, series: int) -> httpx.Response:
        return self.c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": batch_id, "series": series}, headers=AUTH)

    def run_session(self, budget: int = 24, chunk: int = 8) -> str:
        # every other session 16-bit, as the uint16 frames sent: rows go to the file with pwritev (service.row_writer); the others
        # are 32-bit files, written through HDF5 (a conversion): a kill must lose nothing acknowledged on either path
        body = session_body(self.pusher.endpoint, budget=budget, chunk=chunk) | {"detector_bit_depth": 16 if self.report.sessions % 2 else 32}
        sid = self.c.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
        self.report.sessions += 1
        self.planned = "created"
        self.maybe_kill(sid, "created")
        while True:
            self.planned = self.rng.choice(MOMENTS)
            ask = self.ask(sid)
            if ask["done"]:
                return sid
            series, self.next_series = self.next_series, self.next_series + 1
            positions = ask["positions_nm"]
            n = len(positions)
            self.told[series] = positions
            if self.planned == "between series and tell" or self.rng.random() < 0.1:  # the series first, its tell afterwards (frames wait untold)
                self.send(series, list(range(n)), True, n)
                if self.maybe_kill(sid, "between series and tell"):
                    continue  # untold frames died with the process: ask again, acquire again
                assert self.tell(sid, ask["batch_id"], series).status_code == 202
                self.maybe_late_frame(sid)
                continue
            assert self.tell(sid, ask["batch_id"], series).status_code == 202
            if self.maybe_kill(sid, "after tell"):
                self.repeat_tell(sid, ask["batch_id"], series)
                self.send(series, list(range(n)), True, n)
                continue
            cut = self.rng.randrange(1, n) if n > 1 else 1
            self.send(series, list(range(cut)), False, n)
            if self.maybe_kill(sid, "mid-series"):
                self.repeat_tell(sid, ask["batch_id"], series)
                if self.rng.random() < 0.6:  # the detector goes on with its series (frames after the restart)
                    self.send(series, list(range(cut, n)), True, n)
                continue  # else its last frames never come: the batch is re-issued after resume_told_timeout_s
            self.send(series, list(range(cut, n)), True, n)
            if self.maybe_kill(sid, "after series (reconstructing)"):
                self.repeat_tell(sid, ask["batch_id"], series)
            self.maybe_late_frame(sid)

    def repeat_tell(self, sid: str, batch_id: int, series: int) -> None:
        r = self.tell(sid, batch_id, series)
        code = r.status_code
        if code != 200 and os.environ.get("PTYCHOSCAN_KILL9_DEBUG"):
            print(f"repeated tell ({self.planned}): {code} {r.text}")
        self.report.repeated_tells[code] = self.report.repeated_tells.get(code, 0) + 1
        assert code == 200, f"a repeated tell after a restart answered {code}: {r.text}"

    def maybe_late_frame(self, sid: str) -> None:
        """Now and then a late duplicate of an old frame (it must be refused, never stored elsewhere).

        Not sent when no server listens: one restarted after session ``sid`` (the only one)
        was done connects to no detector, and a PUSH with no peer blocks until SNDTIMEO.
        """
        if self.rng.random() < 0.3:
            old = self.rng.choice(list(self.told))
            idx = self.rng.randrange(len(self.told[old]))
            if not self.pusher.sock.poll(5000, zmq.POLLOUT):
                assert self.c.get(f"/api/v1/sessions/{sid}").json()["state"] == "done", "no server listens to the detector mid-session"
                self.report.late_frames_unsent += 1
                return
            self.pusher.frame(old, idx, image(old, idx))

    def check_file(self, sid: str) -> None:
        """Every slot holds frame (S, i) of its binding, and sits at the position given for (S, i)."""
        with h5py.File(self.server.storage / f"{sid}.h5", "r") as f:
            assert f.attrs["state"] == "done", f.attrs["state"]
            received, series, frame = f["received"][()].astype(bool), f["slot_series"][()], f["slot_frame"][()]
            patterns, issued = f["patterns"][()], f["positions_issued_nm"][()]
        assert received.all()
        for slot in range(len(received)):
            s, i = int(series[slot]), int(frame[slot])
            self.report.frames_checked += 1
            if not (np.array_equal(patterns[slot], image(s, i)) and np.allclose(issued[slot], self.told[s][i])):
                self.report.misplaced += 1

    def run(self) -> Report:
        self.server.start()
        try:
            while self.report.kills < self.target:
                sid = self.run_session()
                st = self.c.get(f"/api/v1/sessions/{sid}").json()
                assert st["state"] == "done", st
                self.check_file(sid)
        finally:
            self.server.stop()
            self.pusher.close()
        return self.report
