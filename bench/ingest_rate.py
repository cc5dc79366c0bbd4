"""Ingest frames/s of the whole service against the libertem-dectris receiver, on the same Rust sender, in steady state.

libertem-dectris's ``DectrisSim`` (Rust) replays a dump of 64x64 uint16 bs16-lz4 frames
(stream v1, series 1; written by bench/detector_rate.py's ``write_dump``), alternately:

1. into libertem-dectris's own receiver (``DectrisConnection``, frames decoded into a
   numpy buffer in Python): the peer, once decoding into one reused 256-frame buffer (as
   LiberTEM-live does) and once into a row per frame of one array (first touched then, as
   the service's session memory is: on this VM that costs as much as the decoding);
2. into the service (``service.app``, in this process): a session of budget N and one
   batch (``detector_bit_depth`` 16, as the stream's, so the file keeps the detector's
   blobs: ``service.pattern_chunks``) is told series 1 before the frames arrive, so each frame goes the whole ingest
   path: ZeroMQ PULL, stream v1 decode, matching to the session's slot, the session's
   frame stack and its HDF5 file (flushed at the end).

Each side runs ``--repeats`` times, alternating, so that both see the same load on this
shared machine. The rate is the steady state: from the first frame seen in memory (the
peer's first frame stack decoded; the session's first counted frame, read in-process
every ms) to the last, over the frames in between, so thread start, arming and
connecting are not timed. Each side gets its own frame count (``--peer-frames``,
``--frames``) so that both windows last about a second or more. Wall and CPU time (the
whole process: the in-process Rust sender included, for both sides) of that window are
printed per run, then the median and spread of frames/s and the ratio of the medians.
Reconstruction is replaced by a no-op backend (this is an ingest benchmark). Usage:

    PYTHONPATH=$PWD python bench/ingest_rate.py [--frames 40000] [--peer-frames 100000] [--repeats 3] [--compare] [--per-thread] [--compressed]
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import thread_cpu  # noqa: E402
from detector_rate import write_dump  # noqa: E402
from service_latency import AUTH, KEY, OverheadOnlyBackend  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Run:
    """One timed run: ``frames`` in the steady window of ``wall`` s and ``cpu`` s of process CPU; ``total`` s from the send."""

    frames: int
    wall: float
    cpu: float
    total: float
    flushed: float = 0.0
    """service only: s from the send until the frames were flushed to the session file."""

    @property
    def rate(self) -> float:
        return self.frames / self.wall


def _dump(tmp: str, n: int) -> str:
    path = os.path.join(tmp, f"dump-{n}.bin")
    if not os.path.exists(path):
        write_dump(path, n)
    return path


def peer_run(n: int, tmp: str, tag: str, keep: bool = False) -> Run:
    """DectrisSim into libertem-dectris's receiver, frames decoded into a numpy buffer; steady window first to last stack.

    ``keep``: every frame is decoded into its own row of one (n, 64, 64) array, first
    touched then (as a session's memory is), instead of into one reused 256-frame buffer.
    """
    import libertem_dectris as ld

    sim = ld.DectrisSim("tcp://127.0.0.1", _dump(tmp, n), random_port=True)
    conn = ld.DectrisConnection(uri=sim.get_uri(), frame_stack_size=256, handle_path=os.path.join(tmp, f"shm-{tag}"), num_slots=4000, bytes_per_frame=64 * 64 * 2)
    cam = ld.CamClient(conn.get_socket_path())
    try:
        conn.start_passive(timeout=10)
        t0 = time.perf_counter()
        threading.Thread(target=lambda: (sim.send_headers(), sim.send_frames(), sim.send_footer()), daemon=True).start()
        assert conn.wait_for_arm(timeout=10) is not None
        got, buf, first, deadline = 0, None, None, time.monotonic() + 120
        whole = np.zeros((n, 64, 64), np.uint16) if keep else None
        while got < n and time.monotonic() < deadline:
            h = conn.get_next_stack(max_size=256)
            if h is None:
                continue
            k = len(h)
            shape = (k, *reversed(h.get_shape()))
            if whole is not None:
                buf = whole[got : got + k]
            elif buf is None or buf.shape != shape:
                buf = np.empty(shape, dtype=h.get_dtype_string())
            cam.decode_range_into_buffer(h, buf, 0, k)
            cam.done(h)
            got += k
            if first is None:
                first = (time.perf_counter(), _cpu(), got)
        t1, c1 = time.perf_counter(), _cpu()
        assert got == n, f"libertem received {got} of {n} frames"
    finally:
        cam.close()
        conn.close()
    return Run(n - first[2], t1 - first[0], c1 - first[1], t1 - t0)


COMPRESSED = False
"""``--compressed``: the service's session files store the detector's blobs (``ServiceSettings.compressed_patterns``)."""


def service_run(n: int, tmp: str, tag: str, fast: bool = True, native: bool = True, per_thread: bool = False) -> Run:
    """DectrisSim into the service's ingest; steady window from the first frame counted in the session to the last.

    ``fast=False``: the ingest as before issue 19 where it can be switched (JSON-only decoder,
    frame-by-frame store, no prefault; the one-loop block check and the reused file
    staging buffer stay). ``native=False``: the Python receive loop instead of the compiled one
    (``PTYCHOSCAN_NATIVE_INGEST=0``); ``fast=False`` implies it.
    """
    import libertem_dectris as ld
    from fastapi.testclient import TestClient

    import detector_stream.receiver as receiver_module
    from detector_stream.decoder import StreamDecoder
    from service.app import create_app
    from service.settings import ServiceSettings

    receiver_module.StreamDecoder = StreamDecoder if fast else functools.partial(StreamDecoder, fast=False)
    os.environ["PTYCHOSCAN_NATIVE_INGEST"] = "1" if fast and native else "0"
    sim = ld.DectrisSim("tcp://127.0.0.1", _dump(tmp, n), random_port=True)
    storage = Path(tmp) / f"sessions-{tag}"
    settings = ServiceSettings(
        storage=storage, api_keys=[KEY], max_budget=n, max_buffered_frames=n, flush_interval_s=0.2, prefault_session_memory=fast, compressed_patterns=COMPRESSED,
        max_session_bytes=max(n * 64 * 64 * 4, 2 * 1024**3),  # the limit counts float32 frames: 150,000 of them are 2.3 GiB
    )
    body = {"detector_endpoint": sim.get_uri(), "fov_nm": [0.0, 0.0, 2.0, 2.0], "budget": n, "chunk": n, "strategy": "sparse-grid", "detector_bit_depth": 16}
    with TestClient(create_app(settings, backend=OverheadOnlyBackend())) as client:
        sid = client.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
        ask = client.post(f"/api/v1/sessions/{sid}/ask", headers=AUTH).json()
        assert len(ask["positions_nm"]) == n, ask
        client.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": 1}, headers=AUTH).raise_for_status()
        time.sleep(0.5)  # let the PULL socket connect
        manager = client.app.state.service.manager
        if manager.prefaulter is not None:
            manager.prefaulter.wait_idle(60)  # a batch is issued before its scan starts: its memory is resident by then
        if not fast:
            manager._store_run = lambda *_a: False
        session = manager.sessions[sid]
        t0 = time.perf_counter()
        threading.Thread(target=lambda: (sim.send_headers(), sim.send_frames(), sim.send_footer()), daemon=True).start()
        first, deadline = None, time.monotonic() + 300
        while (got := session.frames_received) < n:  # read in-process: REST polling would compete with the ingest for the GIL
            if first is None and got:
                first = (time.perf_counter(), _cpu(), got)
                threads_before = thread_cpu.snapshot() if per_thread else None
            if time.monotonic() > deadline:
                raise SystemExit(f"the service received {got} of {n} frames in 300 s")
            time.sleep(0.001)
        t1, c1 = time.perf_counter(), _cpu()
        if first is None:  # every frame arrived within one poll
            first, threads_before = (t0, c1, 0), None
        if threads_before is not None:
            print(f"  {tag}: CPU by thread over the steady window ({t1 - first[0]:.2f} s)")
            print("\n".join(thread_cpu.report(threads_before, thread_cpu.snapshot(), t1 - first[0])))
        status = client.get(f"/api/v1/sessions/{sid}").json()
        assert status["frames_received"] == n, status
        client.app.state.service.manager.flush_all()  # frames are written to the file as they come; this makes them durable
        flushed = time.perf_counter() - t0
        if status.get("errors"):
            print(f"session errors: {status['errors'][:3]}")
    return Run(n - first[2], t1 - first[0], c1 - first[1], t1 - t0, flushed)


def summary(name: str, runs: list[Run]) -> float:
    rates = [r.rate for r in runs]
    med = statistics.median(rates)
    print(f"{name:44s} median {med:9.0f} frames/s  (min {min(rates):.0f}, max {max(rates):.0f}, {len(runs)} runs)")
    return med


def _switched(interval_s: float, run, n: int, tmp: str, tag: str) -> Run:
    """``run(n, tmp, tag)`` with the interpreter's GIL switch interval at ``interval_s`` (restored after)."""
    default = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    try:
        return run(n, tmp, tag + "-si")
    finally:
        sys.setswitchinterval(default)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40000, help="frames per service run (its steady window should last a second or more)")
    ap.add_argument("--peer-frames", type=int, default=100000, help="frames per libertem-dectris run (likewise)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", action="store_true", help="also run the service with its issue-19 fast paths off, alternating")
    ap.add_argument("--compare-native", action="store_true", help="also run the service with the Python receive loop, alternating")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly; the ingest does not use torch)")
    ap.add_argument("--per-thread", action="store_true", help="print the service runs' CPU per thread over the steady window (bench/thread_cpu.py)")
    ap.add_argument("--compare-switch-interval", type=float, default=None, metavar="S",
                    help="also run the service with sys.setswitchinterval(S) (Python's default 0.005 s), alternating")
    ap.add_argument("--compressed", action="store_true", help="the service's compressed_patterns on (the detector's blobs as the file's chunks)")
    args = ap.parse_args()
    global COMPRESSED
    COMPRESSED = args.compressed
    import torch

    torch.set_num_threads(args.threads)
    peer, kept, ours, before, python_loop, switched = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        _dump(tmp, args.frames), _dump(tmp, args.peer_frames)
        print(f"64x64 uint16 bs16-lz4, sender: libertem-dectris DectrisSim (Rust, in this process), cpus {os.cpu_count()}")
        print(f"{'run':44s} {'frames/s':>9s}  {'frames':>7s}  {'wall s':>6s}  {'cpu s':>6s}  {'cpu/wall':>8s}  {'send->last s':>12s}")
        for i in range(args.repeats):
            sides = (
                ("libertem-dectris receiver", peer_run, args.peer_frames, peer),
                ("libertem-dectris, every frame kept", lambda n, tmp, tag: peer_run(n, tmp, tag, keep=True), args.peer_frames, kept),
                ("service ingest (in session memory)", functools.partial(service_run, per_thread=args.per_thread), args.frames, ours),
            )
            if args.compare:
                sides += (("service ingest, fast paths off", lambda n, tmp, tag: service_run(n, tmp, tag + "-off", fast=False), args.frames, before),)
            if args.compare_native:
                sides += (("service ingest, Python receive loop", lambda n, tmp, tag: service_run(n, tmp, tag + "-py", native=False), args.frames, python_loop),)
            if args.compare_switch_interval is not None:
                sides += ((f"service ingest, switch interval {args.compare_switch_interval:g} s",
                           functools.partial(_switched, args.compare_switch_interval, service_run), args.frames, switched),)
            for name, fn, n, runs in sides:
                r = fn(n, tmp, f"{i}")
                runs.append(r)
                extra = f"  flushed {r.flushed:.2f} s after the send" if r.flushed else ""
                print(f"{name + f' #{i + 1}':44s} {r.rate:9.0f}  {r.frames:7d}  {r.wall:6.2f}  {r.cpu:6.2f}  {r.cpu / r.wall:8.2f}  {r.total:12.2f}{extra}")
    p, k = summary("libertem-dectris receiver", peer), summary("libertem-dectris, every frame kept", kept)
    o = summary("service ingest (in session memory)", ours)
    print(f"ratio service / libertem-dectris (medians): {o / p:.3f}  (per repeat: {', '.join(f'{a.rate / b.rate:.3f}' for a, b in zip(ours, peer, strict=True))})")
    print(f"ratio service / libertem-dectris keeping every frame (medians): {o / k:.3f}")
    if python_loop:
        b = summary("service ingest, Python receive loop", python_loop)
        print(f"ratio compiled / Python receive loop (medians): {o / b:.2f}")
    if switched:
        b = summary(f"service ingest, switch interval {args.compare_switch_interval:g} s", switched)
        print(f"ratio switch interval {args.compare_switch_interval:g} s / default (medians): {b / o:.2f}")
    if before:
        b = summary("service ingest, fast paths off", before)
        print(f"ratio fast paths on / off (medians): {o / b:.2f}")


if __name__ == "__main__":
    main()
