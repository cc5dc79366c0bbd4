"""Ingest frames/s of the whole service against the libertem-dectris receiver, on the same Rust sender.

libertem-dectris's ``DectrisSim`` (Rust) replays one dump of N 64x64 uint16 bs16-lz4
frames (stream v1, series 1; written by bench/detector_rate.py's ``write_dump``) twice:

1. into libertem-dectris's own receiver (``DectrisConnection``, frames decoded into a
   numpy buffer in Python): the peer;
2. into the service (``service.app``, in this process, on a free loopback port): a
   session of budget N and one batch is told series 1 before the frames arrive, so
   each frame goes the whole ingest path: ZeroMQ PULL, stream v1 decode, matching to
   the session's slot, the session's frame stack and its HDF5 file (flushed).

Timed from the first message sent to the last frame counted by the session (its
``frames_received``, read in-process every 2 ms and checked once through REST at the end) and, separately, to the frames being flushed to the session file.
Reconstruction is replaced by a no-op backend (this is an ingest benchmark). Prints
frames/s of both, wall and CPU time, and the ratio service / libertem. Usage:

    PYTHONPATH=$PWD python bench/ingest_rate.py [--frames 20000] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from detector_rate import libertem_sim_into_libertem, write_dump  # noqa: E402
from service_latency import AUTH, KEY, OverheadOnlyBackend  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sim_into_service(n: int, tmp: str) -> dict:
    """DectrisSim replaying the dump into the service's ingest; seconds to counted and to flushed."""
    import libertem_dectris as ld
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    dump = os.path.join(tmp, "dump.bin")
    if not os.path.exists(dump):
        write_dump(dump, n)
    sim = ld.DectrisSim("tcp://127.0.0.1", dump, random_port=True)
    storage = Path(tmp) / "sessions"
    settings = ServiceSettings(storage=storage, api_keys=[KEY], max_budget=n, max_buffered_frames=n, flush_interval_s=0.2)
    body = {"detector_endpoint": sim.get_uri(), "fov_nm": [0.0, 0.0, 2.0, 2.0], "budget": n, "chunk": n, "strategy": "sparse-grid"}
    with TestClient(create_app(settings, backend=OverheadOnlyBackend())) as client:
        sid = client.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
        ask = client.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        assert len(ask["positions_nm"]) == n, ask
        client.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 1}, headers=AUTH).raise_for_status()
        time.sleep(0.5)  # let the PULL socket connect
        t0, c0 = time.perf_counter(), _cpu()
        threading.Thread(target=lambda: (sim.send_headers(), sim.send_frames(), sim.send_footer()), daemon=True).start()
        session = client.app.state.service.manager.sessions[sid]
        deadline = time.monotonic() + 300
        while session.frames_received < n:  # read in-process: REST polling would compete with the ingest for the GIL
            if time.monotonic() > deadline:
                raise SystemExit(f"the service received {session.frames_received} of {n} frames in 300 s")
            time.sleep(0.002)
        counted, counted_cpu = time.perf_counter() - t0, _cpu() - c0
        status = client.get(f"/api/v1/sessions/{sid}").json()
        assert status["frames_received"] == n, status
        client.app.state.service.manager.flush_all()  # frames are written to the file as they come; this makes them durable
        flushed, flushed_cpu = time.perf_counter() - t0, _cpu() - c0
        errors = status.get("errors", [])
    return {"counted": counted, "counted_cpu": counted_cpu, "flushed": flushed, "flushed_cpu": flushed_cpu, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly; the ingest does not use torch)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        peer_wall, peer_cpu = libertem_sim_into_libertem(args.frames, tmp)
        ours = sim_into_service(args.frames, tmp)
    n = args.frames
    print(f"frames={n} (64x64 uint16 bs16-lz4), sender: libertem-dectris DectrisSim (Rust), cpus {os.cpu_count()}")
    print(f"{'libertem-dectris receiver (decoded to numpy)':52s} {n / peer_wall:9.0f} frames/s  wall {peer_wall:6.2f} s  cpu {peer_cpu:6.2f} s")
    print(f"{'service ingest, frames counted in the session':52s} {n / ours['counted']:9.0f} frames/s  wall {ours['counted']:6.2f} s  cpu {ours['counted_cpu']:6.2f} s")
    print(f"{'service ingest, frames flushed to the session file':52s} {n / ours['flushed']:9.0f} frames/s  wall {ours['flushed']:6.2f} s  cpu {ours['flushed_cpu']:6.2f} s")
    print(f"ratio service / libertem (frames/s): counted {peer_wall / ours['counted']:.2f}, flushed {peer_wall / ours['flushed']:.2f}")
    if ours["errors"]:
        print(f"session errors: {ours['errors'][:3]}")


if __name__ == "__main__":
    main()
