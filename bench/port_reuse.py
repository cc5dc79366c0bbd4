"""Detector ports used again: sessions on new detectors that bind the ports other sessions' detectors just freed.

The scheme the latency bench first had (a new detector and a fresh free port per
session, several sessions at once) met, once, a session that lost every other frame on a
port that had come round again. This runs that scheme on purpose: ``--slots`` control
threads each run ``--sessions`` sessions back to back, and each session's detector (a
new PUSH socket) binds the port another slot's detector closed last, so every session
after the first ``--slots`` is on a reused endpoint, moments after the earlier session
on it ended. Series numbers go on rising per slot (a tell of a number the earlier
session bound would be refused). The service runs in-process with the overhead-only
backend (``service_latency.OverheadOnlyBackend``); it prints the errors of the control
loops and the service's non-zero stream-error counters (every frame in its slot: none).
``--same-socket`` runs a mistake that gives the latency bench's symptom instead: one PUSH
socket per slot bound to one more port per session, so the service's connection to the
earlier port (idle, not yet let go; or kept with ``--connection always``) is a second peer.

    PYTHONPATH=$PWD python bench/port_reuse.py --slots 8 --sessions 6 --connection in_flight --quiet-s 0.2
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service_latency import AUTH, KEY, OverheadOnlyBackend, disk_frames

from detector_stream.codec import encode_frames
from detector_stream.messages import image_parts, series_end_parts, series_start_parts
from ptychoscan.net import free_port


def run_session(c: httpx.Client, push, sid: str, series: int, frames: np.ndarray, blobs: list, dwell_s: float) -> int:
    """Ask, tell, then the batch's header, frames (one per ``dwell_s``) and end, until the session is done; returns the next series."""
    k = frames.shape[-1]
    while True:
        r = c.post(f"/api/v1/sessions/{sid}/ask", params={"timeout_s": 20}, headers=AUTH)
        r.raise_for_status()
        ask = r.json()
        if ask["done"]:
            return series
        n = len(ask["positions_nm"])
        c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH).raise_for_status()
        push.send_multipart(series_start_parts(series, {"ntrigger": n, "nimages": 1, "trigger_mode": "exts", "x_pixels_in_detector": k, "y_pixels_in_detector": k}))
        for i in range(n):
            time.sleep(dwell_s)
            push.send_multipart(image_parts(series, i, frames[i % len(frames)], "bs16-lz4<", 0, 1_000_000, 1_000_000, blob=blobs[i % len(blobs)]))
        push.send_multipart(series_end_parts(series))
        series += 1


def slot(base: str, idx: int, sessions: int, freed: queue.Queue, errors: list, chunk: int, budget: int, dwell_s: float, same_socket: bool) -> None:
    """``sessions`` sessions one after the other, each on a new detector bound on the port freed last by any slot.

    ``same_socket``: instead, one PUSH socket per slot, bound to one more fresh port per session (the earlier ports stay bound).
    """
    series = 1000 * idx
    frames = disk_frames(chunk, 64, np.random.default_rng(idx))
    blobs = encode_frames(frames, "bs16-lz4<")
    kept = zmq.Context() if same_socket else None
    kept_push = kept.socket(zmq.PUSH) if kept is not None else None
    with httpx.Client(base_url=base, timeout=60) as c:
        for k in range(sessions):
            port = free_port() if same_socket else freed.get()
            ctx = kept or zmq.Context()
            push = kept_push or ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDTIMEO, 20_000)
            try:
                push.bind(f"tcp://127.0.0.1:{port}")
                body = {"detector_endpoint": f"tcp://127.0.0.1:{port}", "fov_nm": [0, 0, 2.0, 2.0], "budget": budget, "chunk": chunk, "strategy": "sparse-grid"}
                sid = c.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
                series = run_session(c, push, sid, series, frames, blobs, dwell_s)
            except Exception as err:
                errors.append(f"slot {idx} session {k} port {port}: {type(err).__name__}: {err}")
                return
            finally:
                if not same_socket:
                    push.close(0)
                    ctx.term()
                    freed.put(port)
    if kept_push is not None:
        kept_push.close(0)
        kept.term()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=4, help="control threads (detectors alive at once)")
    ap.add_argument("--sessions", type=int, default=10, help="sessions per slot, each on a new detector")
    ap.add_argument("--connection", choices=["in_flight", "always"], default="in_flight", help="the service's detector_connection")
    ap.add_argument("--quiet-s", type=float, default=1.0, help="the service's detector_quiet_s")
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--dwell-ms", type=float, default=1.0)
    ap.add_argument("--same-socket", action="store_true", help="one PUSH socket per slot, bound to a fresh port per session, earlier ports left bound "
                    "(a bench mistake to check for: the service's connection to the earlier port then takes every other message)")
    args = ap.parse_args()
    import uvicorn

    from service.app import create_app
    from service.settings import ServiceSettings

    freed: queue.Queue = queue.Queue()
    for _ in range(args.slots):
        freed.put(free_port())
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = ServiceSettings(storage=Path(tmp), api_keys=[KEY], torch_threads=1, device="cpu", recon_converged=False,
                                   detector_connection=args.connection, detector_quiet_s=args.quiet_s, ask_timeout_s=10)
        app = create_app(settings, backend=OverheadOnlyBackend())
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        t0, cpu0 = time.perf_counter(), time.process_time()
        loops = [threading.Thread(target=slot, args=(base, i, args.sessions, freed, errors, args.chunk, args.budget, args.dwell_ms * 1e-3, args.same_socket))
                 for i in range(args.slots)]
        for t in loops:
            t.start()
        for t in loops:
            t.join()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        metrics = httpx.get(f"{base}/metrics").text
        server.should_exit = True
        th.join(30)
    bad = [line for line in metrics.splitlines() if line.startswith("ptychoscan_ingest_errors_total{") and not line.endswith(" 0.0")]
    scheme = "one socket per slot, a new port per session" if args.same_socket else f"{args.slots * (args.sessions - 1)} on a reused port"
    print(f"{args.slots} slots x {args.sessions} sessions ({scheme}), {args.connection}, quiet {args.quiet_s:g} s: "
          f"control-loop errors {len(errors)}, stream errors {bad or 'none'}, wall {wall:.1f} s, cpu {cpu:.1f} s, cpus {os.cpu_count()}")
    for err in errors[:5]:
        print(" ", err)


if __name__ == "__main__":
    main()
