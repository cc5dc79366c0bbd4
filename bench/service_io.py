"""The service's per-chunk bookkeeping: HDF5 session-store writes and an HTTP round trip, against the chunk's acquisition time.

These run under the manager's lock (store) or on the event loop (HTTP), holding the GIL
that ingest and the compute worker share, so each millisecond here is on every
session's decision path. Per chunk of ``--chunk`` positions (K = 64, uint16 frames):
``append_batch`` (issue the next batch), ``bind`` (a tell), ``flush`` of the chunk's
frames, ``write_reconstruction`` (a 111 x 111 phase) and ``set_state``; then the round
trip of ``--requests`` HTTP requests (``GET /healthz`` and a 404 problem for an unknown
session, client in the same process) to the real app on loopback. Prints the median
per operation (ms), the store's sum per chunk, and each as a fraction of the chunk's
acquisition time at ``--dwell-ms``. Usage:

    PYTHONPATH=$PWD python bench/service_io.py [--chunk 50] [--chunks 20] [--requests 1500] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector_stream.codec import encode_frames
from ptychoscan.net import free_port
from service.store import SessionStore, StoredReconstruction


def time_store(chunk: int, n_chunks: int, folder: Path, bit_depth: int = 32) -> tuple[dict[str, list[float]], int]:
    """Median-able timings of each store call per chunk, and the session file's size in bytes at the end."""
    params = dict(
        detector_pixels=64, energy_ev=60e3, convergence_mrad=33.0, detector_pixel_mrad=1.68, defocus_nm=0.0, chunk=chunk, detector_bit_depth=bit_depth
    )
    store = SessionStore.create(folder / "bench.h5", "bench", params, {"version": "bench"}, compressed=True)  # the blobs as chunks
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {k: [] for k in ("append_batch", "bind", "flush", "write_reconstruction", "set_state")}

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        fn(*args)
        times[name].append(time.perf_counter() - t0)

    for b in range(n_chunks):
        slots = np.arange(b * chunk, (b + 1) * chunk)
        timed("append_batch", store.append_batch, b, rng.random((chunk, 2)))
        timed("bind", store.bind, slots, b, rng.random((chunk, 2)))
        frames = rng.integers(0, 200, (chunk, 64, 64)).astype(np.uint16 if bit_depth <= 16 else np.uint32)
        blobs = encode_frames(frames, f"bs{8 * frames.itemsize}-lz4<")  # as the detector sends them: the file keeps these where it can
        for slot, frame, blob in zip(slots, frames, blobs, strict=True):
            store.write_frame(int(slot), frame, blob)
        timed("flush", store.flush)
        rec = StoredReconstruction(b, rng.random((111, 111)).astype(np.float32), (0.0, 0.0), 0.045, int(slots[-1]) + 1, [0.1, 0.05], "bench")
        timed("write_reconstruction", store.write_reconstruction, b, rec)
        timed("set_state", store.set_state, "acquiring" if b % 2 else "reconstructing")
    store.close()
    return times, (folder / "bench.h5").stat().st_size


def time_http(n: int, folder: Path) -> dict[str, float]:
    import httpx
    import uvicorn

    from bench.service_latency import OverheadOnlyBackend
    from service.app import create_app
    from service.settings import ServiceSettings

    app = create_app(ServiceSettings(storage=folder / "sessions", api_keys=["k"], torch_threads=1, device="cpu"), backend=OverheadOnlyBackend())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    out = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Apikey k"}) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            for path in ("/healthz", "/api/v1/sessions/unknown"):
                for _ in range(100):  # warm: connection, routes
                    client.get(path)
                samples = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    client.get(path)
                    samples.append(time.perf_counter() - t0)
                out[path] = float(np.median(samples))
    finally:
        server.should_exit = True
        thread.join(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--dwell-ms", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly; nothing here uses torch)")
    ap.add_argument("--bit-depth", type=int, choices=[8, 16, 32], default=16, help="the session's detector_bit_depth (16: uint16 patterns, 32: uint32)")
    args = ap.parse_args()
    import os

    import torch

    torch.set_num_threads(args.threads)
    acq_ms = args.chunk * args.dwell_ms
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        store, file_bytes = time_store(args.chunk, args.chunks, Path(tmp), args.bit_depth)
        http = time_http(args.requests, Path(tmp))
    print(f"chunk {args.chunk} positions, acquisition {acq_ms:g} ms at {args.dwell_ms:g} ms dwell, {args.bit_depth}-bit detector, cpus {os.cpu_count()}")
    print(f"{'operation':<34} {'median ms':>9} {'/ acq':>7}")
    total = 0.0
    for name, samples in store.items():
        ms = float(np.median(samples)) * 1e3
        total += ms
        print(f"{'store ' + name:<34} {ms:9.3f} {ms / acq_ms:7.4f}")
    print(f"{'store, all of one chunk':<34} {total:9.3f} {total / acq_ms:7.4f}")
    print(f"session file: {file_bytes / (args.chunk * args.chunks) / 1024:.1f} KiB per frame (64x64 frames, reconstructions included)")
    for path, seconds in http.items():
        print(f"{'HTTP GET ' + path:<34} {seconds * 1e3:9.3f} {seconds * 1e3 / acq_ms:7.4f}")
    print(f"wall {time.perf_counter() - wall0:.1f} s, cpu {time.process_time() - cpu0:.1f} s")


if __name__ == "__main__":
    main()
