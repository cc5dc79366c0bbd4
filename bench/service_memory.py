"""Service memory: RSS after N sessions vs after 2, and a restart on a folder of finished sessions vs a fresh start.

    PYTHONPATH=$PWD .venv/bin/python bench/service_memory.py --sessions 10 --frames 1000

A real server subprocess (tests/service_server.py: the recording test backend, so the
figures are the service's own memory, not the reconstructor's) runs sessions of
``--frames`` 64x64 frames in chunks of 100 fed by a stream v1 PUSH sender. Prints RSS
(MiB, from /proc) after 2 and after N sessions and their ratio (goal: within 25 %), and
RSS of a restart on the folder of finished sessions minus a fresh start on an empty
folder (goal: within 150 MB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def run_session(c, pusher, series0: int, frames: int, chunk: int) -> int:
    from kill9_harness import image
    from service_testing import AUTH, session_body

    body = session_body(pusher.endpoint, budget=frames, chunk=chunk, detector_pixels=64, detector_pixel_mrad=1.68)
    sid = c.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
    series = series0
    while True:
        ask = c.post(f"/api/v1/sessions/{sid}/ask", params={"timeout_s": 60}, headers=AUTH).json()
        if ask["done"]:
            return series
        n = len(ask["positions_nm"])
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH).raise_for_status()
        pusher.start(series, n, 64)
        for i in range(n):
            pusher.frame(series, i, image(series, i).repeat(4, 0).repeat(4, 1))
        pusher.end(series)
        series += 1


def settled_rss(pid: int) -> float:
    time.sleep(1.0)
    return rss_mib(pid)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=100)
    args = p.parse_args()
    from kill9_harness import Server
    from service_testing import Pusher

    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp) / "sessions"
        pusher = Pusher()
        server = Server(storage)
        c = server.start()
        series, rss = 1, {}
        try:
            for n in range(1, args.sessions + 1):
                series = run_session(c, pusher, series, args.frames, args.chunk)
                if n in (2, args.sessions):
                    rss[n] = settled_rss(server.proc.pid)
                    print(f"RSS after {n} sessions of {args.frames} 64x64 frames: {rss[n]:.0f} MiB", flush=True)
        finally:
            server.stop()
            pusher.close()
        ratio = rss[args.sessions] / rss[2]
        print(f"ratio RSS({args.sessions}) / RSS(2) = {ratio:.3f} (goal <= 1.25)")

        restarted = Server(storage)
        restarted.start()
        rss_restart = settled_rss(restarted.proc.pid)
        n_sessions = len(restarted.client.get("/api/v1/sessions").json()["sessions"])
        restarted.stop()
        fresh = Server(Path(tmp) / "empty")
        fresh.start()
        rss_fresh = settled_rss(fresh.proc.pid)
        fresh.stop()
    print(f"restart on {n_sessions} finished sessions: {rss_restart:.0f} MiB; fresh start: {rss_fresh:.0f} MiB; "
          f"difference {rss_restart - rss_fresh:+.0f} MiB (goal <= 150 MB)")
    print(f"wall {time.perf_counter() - t0:.1f} s, CPU (this process) {time.process_time() - c0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
