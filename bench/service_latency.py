"""Decision latency of the service: last frame of a chunk received -> next batch available.

Runs the real service (uvicorn on a free loopback port, REST ask/tell, ZeroMQ stream v1
ingest, the compute worker with ``recon.engine.Reconstructor``) with 1, 4 and 8
concurrent sessions and chunks of 50 and 100 positions. Each session has a control
thread (ask -> tell -> push the chunk's frames, one per dwell time as a scan acquires
them -> ask ...) and its own PUSH socket, in a second process (the microscope side;
``--same-process`` runs them inside the service's process, sharing its GIL) (``--burst`` sends a chunk at once instead: a
saturation test). Frames are 64x64 uint16 Poisson counts of a bright-field disk,
encoded once up front (content does not change the cost). Sessions use the shipped
GRU policy (``--strategy adaptive``) and incremental chunk updates by default.

Steady state: each of a configuration's concurrent sessions is followed by another on the
same detector (its series numbers go on rising) on the same warm service, ``--waves``
sessions per detector, enough for at least ``--min-decisions`` (100) decisions
pooled (a session of budget B and chunk C waits for ceil(B / C) - 1 of them). Per
configuration it prints the waves and decisions, p50/p90/p99 of the decision latency as
fractions of the chunk's acquisition time at the dwell (goal < 1 at 1 ms), how many of
the updates a decision waited for were shrunk to keep pace (``--deadline-fraction``, the
service's ``recon_deadline_fraction``) out of the decisions, the reconstruction work per
decision (``pp/dec``: positions x passes of the decisions' updates, what the deadline
sizes; 0 without the torch backend), the mean wait of a complete chunk for the compute
worker (``wait s``), the mean batched reconstruction call (decision rounds: the time of
their calls over the backend's calls; before the finals left ``reconstruct`` their
pass calls were counted too) and planner call, wall and CPU of the service's process (all its threads), its CPU per
decision, and the CPU of the microscope side's process (``mic cpu``: on the same cores
here, not in a deployment). Torch threads are set explicitly (``--threads``). Converged
end-of-session reconstructions are off unless ``--converged``.

``--quality DATASET...`` (``ptychoscan simulate`` files with a ground truth) asks what
the shrunk updates cost: the sessions stream patterns of those specimens
(``bench/latency_quality.py``: session seed i streams dataset i mod n, its own noise),
each configuration runs once with the deadline and once without (same seeds, one wave
unless ``--waves``), and each session's final live reconstruction and its converged one
(every frame from zero, the evaluation's recipe) are scored against the ground truth
(Pearson r, SSIM); the paired differences (deadline on - off) are printed with the
updates shrunk.

    PYTHONPATH=$PWD python bench/service_latency.py --threads 1 --budget 250 [--min-decisions 100] [--update full]
    PYTHONPATH=$PWD python bench/service_latency.py --threads 1 --sessions 8 --quality out/data/test/mos2/*.h5
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

import httpx
import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector_stream.codec import encode_frames
from detector_stream.messages import image_parts, series_end_parts, series_start_parts
from ptychoscan.net import free_port

KEY = "bench-key"
AUTH = {"Authorization": f"Apikey {KEY}"}


def disk_frames(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:k, :k] - k // 2
    disk = (np.hypot(yy, xx) < k / 4).astype(np.float64) * 200.0 + 1.0
    return rng.poisson(disk, size=(n, k, k)).astype(np.uint16)


def control_loop(
    base: str, endpoint_port: int, chunk: int, budget: int, k: int, seeds: list[int], errors: list, strategy: str, dwell_s: float,
    sources: dict | None = None, sessions: dict | None = None, start_delay_s: float = 0.0,
) -> None:
    """Sessions from create to done, one after the other on one detector (PUSH socket; its series numbers go on rising).

    ``sources[seed]``: a ``latency_quality.FrameMaker`` (frames of a specimen at the asked positions, told as the measured
    ones); absent: the same disk frames for every chunk. ``sessions[seed]`` receives the session id.
    """
    time.sleep(start_delay_s)  # --stagger-s: the detectors' sessions out of step, as separate microscopes are
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 60_000)
    push.bind(f"tcp://127.0.0.1:{endpoint_port}")
    disk = disk_frames(chunk, k, np.random.default_rng(seeds[0]))
    disk_blobs = encode_frames(disk, "bs16-lz4<")  # encoded once: a detector does not spend the service's CPU
    series = 0
    try:
        with httpx.Client(base_url=base, timeout=120.0) as c:
            for seed in seeds:
                source = (sources or {}).get(seed)
                body = {"detector_endpoint": f"tcp://127.0.0.1:{endpoint_port}", "fov_nm": [0, 0, 2.0, 2.0], "budget": budget, "chunk": chunk,
                        "strategy": strategy}
                if source is not None:
                    body |= {"fov_nm": list(source.raster.fov_nm), **source.raster.beam, "detector_bit_depth": 16}
                sid = c.post("/api/v1/sessions", json=body, headers=AUTH).json()["session_id"]
                if sessions is not None:
                    sessions[seed] = sid
                series = _run_session(c, push, sid, series, k, dwell_s, source, disk, disk_blobs)
    except Exception as err:  # reported by the main thread
        errors.append(f"{type(err).__name__}: {err}")
    finally:
        push.close(0)
        ctx.term()


def _run_session(c: httpx.Client, push, sid: str, series: int, k: int, dwell_s: float, source, frames, blobs) -> int:
    """Ask, tell and stream one session's chunks until it is done; returns the next free series number."""
    for batch in itertools.count():
        r = c.post(f"/api/v1/sessions/{sid}/ask", params={"timeout_s": 120}, headers=AUTH)
        r.raise_for_status()
        ask = r.json()
        if ask["done"]:
            return series
        n = len(ask["positions_nm"])
        tell = {"batch_id": ask["batch_id"], "series": series}
        if source is not None:  # made before the chunk's first frame: outside the decision latency and the acquisition time
            frames, measured = source.frames(np.asarray(ask["positions_nm"]), batch)
            blobs = encode_frames(frames, "bs16-lz4<")
            tell["measured_positions_nm"] = measured.tolist()
            k = frames.shape[-1]  # the specimen's detector (e.g. 86 px for the nanotubes)
        c.post(f"/api/v1/sessions/{sid}/tell", json=tell, headers=AUTH).raise_for_status()
        config = {"ntrigger": n, "nimages": 1, "trigger_mode": "exts", "x_pixels_in_detector": k, "y_pixels_in_detector": k}
        push.send_multipart(series_start_parts(series, config))
        start = time.perf_counter()
        for i in range(n):
            if dwell_s > 0:  # one frame per dwell, as a scan acquires them
                pause = start + (i + 1) * dwell_s - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            push.send_multipart(image_parts(series, i, frames[i % len(frames)], "bs16-lz4<", 0, 1_000_000, 1_000_000, blob=blobs[i % len(blobs)]))
        push.send_multipart(series_end_parts(series))
        series += 1
    raise AssertionError("unreachable")


class OverheadOnlyBackend:
    """Returns a zero potential at once: measures the service's own overhead (ingest, queue, planner, HDF5, publish)."""

    name = "overhead-only (no reconstruction)"

    def __init__(self) -> None:
        self.calls = 0
        self.reduced_updates = 0
        self.final_passes = 1

    def warmup(self) -> None:
        pass

    def start_final(self, job):
        from service.final_run import PassByPass

        return PassByPass(self, job, self.final_passes)

    def reconstruct(self, jobs):
        from service.compute import ReconOutput

        self.calls += 1
        return [ReconOutput(np.zeros((64, 64), np.float32), (0.0, 0.0), 0.045, [0.0]) for _ in jobs]


@dataclass
class Load:
    """What the microscope side runs: ``sessions`` concurrent sessions, each followed by the next until there were ``waves``."""

    chunk: int
    budget: int
    k: int
    sessions: int
    waves: int
    strategy: str
    dwell_s: float
    rasters: list | None = None
    """``latency_quality.RasterFrames`` (session seed i streams rasters[i % len]); None: disk frames."""
    dose: float = 1e4
    stagger_s: float = 0.0
    """detector slot i starts its first session i x stagger_s later (0: all at once, their sessions in step)."""

    @property
    def decisions_per_session(self) -> int:
        """Decisions a session waits for: every chunk but the last one has a next batch decided on its frames."""
        return math.ceil(self.budget / self.chunk) - 1


def _control_loops(base: str, load: Load) -> tuple[list[str], dict[int, str]]:
    """One control thread (detector, PUSH socket) per concurrent session, each running ``load.waves`` sessions back to back
    (session seed wave * sessions + slot); returns the errors and {seed: session id}."""
    errors: list[str] = []
    sessions: dict[int, str] = {}
    sources = {}
    if load.rasters:
        from latency_quality import FrameMaker

        for seed in range(load.waves * load.sessions):
            sources[seed] = FrameMaker(load.rasters[seed % len(load.rasters)], load.dose, seed)
    loops = []
    for slot in range(load.sessions):
        seeds = [wave * load.sessions + slot for wave in range(load.waves)]
        args = (base, free_port(), load.chunk, load.budget, load.k, seeds, errors, load.strategy, load.dwell_s, sources, sessions,
                slot * load.stagger_s)
        loops.append(threading.Thread(target=control_loop, args=args))
    for t in loops:
        t.start()
    for t in loops:
        t.join()
    return errors, sessions


def _run_control_loops(base: str, load: Load, queue) -> None:
    cpu0 = time.process_time()
    errors, sessions = _control_loops(base, load)
    queue.put((errors, sessions, time.process_time() - cpu0))


def run_case(app_factory, load: Load, separate_process: bool = True, after=None) -> dict:
    """Run ``load`` against a fresh service; ``after(app, {seed: session id})`` adds to the result before the service stops
    (outside the timed span)."""
    import uvicorn

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        app = app_factory(Path(tmp))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("service did not become ready in 120 s")
        cpu0, t0 = time.process_time(), time.perf_counter()
        if separate_process:  # the microscope side in its own process, as in a deployment: it does not take the service's GIL
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            sender = ctx.Process(target=_run_control_loops, args=(base, load, queue))
            sender.start()
            while True:  # before join: a full pipe would keep the sender from exiting; a dead sender must not hang the bench
                try:
                    errors, sessions, sender_cpu = queue.get(timeout=5)
                    break
                except Empty:
                    if not sender.is_alive():
                        raise SystemExit(f"sender process exited with {sender.exitcode} before reporting") from None
            sender.join()
        else:
            (errors, sessions), sender_cpu = _control_loops(base, load), float("nan")  # counted in the service's CPU
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        samples = np.asarray(app.state.service.manager.decision_samples)
        calls = app.state.service.backend.calls
        position_passes = getattr(app.state.service.backend, "position_passes", 0)  # the torch backend's decision work
        reduced = sum(shrunk_waited(status.get("chunks") or []) for status in app.state.service.manager.statuses())
        m = app.state.service.metrics
        recon_sum = m.recon_seconds._sum.get()
        recon_mean = recon_sum / max(1, calls)
        policy_mean = _histogram_mean(m.policy_seconds)
        wait_mean = _histogram_mean(m.decision_wait_seconds)
        extra = after(app, sessions) if after is not None and not errors else {}
        server.should_exit = True
        th.join(60)
    if errors:
        raise SystemExit(f"control loop failed: {errors[0]}")
    return {"samples": samples, "wall": wall, "cpu": cpu, "calls": calls, "position_passes": position_passes, "reduced": reduced, "sender_cpu": sender_cpu, "recon_mean": recon_mean,
            "policy_mean": policy_mean, "wait_mean": wait_mean, "sessions": sessions, **extra}


def shrunk_waited(chunks: list[dict]) -> int:
    """How many of a session's chunks (its status' ``chunks``) had their update shrunk by the deadline and a decision waiting
    for it (``decision_latency_s`` set): the updates the ``shrunk`` columns count, out of the decisions."""
    return sum(bool(c.get("update_shrunk")) and c.get("decision_latency_s") is not None for c in chunks)


def _histogram_mean(histogram) -> float:
    """Mean observed value of a prometheus_client Histogram (its _sum / _count samples)."""
    values = {sample.name.rsplit("_", 1)[-1]: sample.value for metric in histogram.collect() for sample in metric.samples}
    return values.get("sum", 0.0) / values["count"] if values.get("count") else float("nan")


def collect_quality(rasters: list, timeout_s: float):
    """An ``after`` for run_case: per session, its shrunk updates and the scores of its final live and converged reconstructions."""

    def after(app, sessions: dict[int, str]) -> dict:
        import h5py
        from latency_quality import score

        from service.converged_store import read_measured_frames

        manager = app.state.service.manager
        rows, deadline = [], time.monotonic() + timeout_s
        for seed, sid in sorted(sessions.items()):
            while True:  # the converged reconstruction runs in the background once the session is done
                with manager.lock:
                    status = manager.get(sid).status()
                state = (status.get("converged_reconstruction") or {}).get("state")
                if state in ("done", "failed") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if state != "done":
                raise SystemExit(f"session {sid}: converged reconstruction {state or 'missing'} after {timeout_s:g} s")
            raster = rasters[seed % len(rasters)]
            row = {"seed": seed, "shrunk": shrunk_waited(status.get("chunks") or [])}
            with manager.lock:
                path = manager.get(sid).path
            row["positions"] = read_measured_frames(path)[1]  # the converged reconstruction's positions (raster points)
            with h5py.File(path, "r") as f:
                row["issued"] = f["positions_issued_nm"][()]  # the planner's, before snapping to the raster
            for kind in ("live", "converged"):
                pot, origin, pixel, _, _ = manager.reconstruction(sid, kind)
                row[kind] = score(pot, origin, pixel, raster.path, raster.fov_nm)
            rows.append(row)
        return {"quality": rows}

    return after


HEADER = (f"{'sessions':>8} {'chunk':>5} {'deadline':>8} {'waves':>5} {'decisions':>9} {'p50/acq':>7} {'p90/acq':>7} {'p99/acq':>7} {'p99 s':>7} "
          f"{'shrunk':>9} {'pp/dec':>6} {'wait s':>7} {'s/call':>7} {'policy s':>8} {'wall s':>7} {'cpu s':>7} {'cpu/wall':>8} {'cpu/dec':>7} {'mic cpu':>7}")


def latency_row(n: int, chunk: int, deadline: str, load: Load, res: dict, acq: float) -> str:
    """One configuration's line: decision latency percentiles as fractions of the chunk's acquisition time ``acq`` (s)."""
    s = res["samples"]
    p50, p90, p99 = np.percentile(s, [50, 90, 99]) if len(s) else (float("nan"),) * 3
    shrunk = f"{res['reduced']}/{len(s)}"
    return (f"{n:>8} {chunk:>5} {deadline:>8} {load.waves:>5} {len(s):>9} {p50 / acq:7.2f} {p90 / acq:7.2f} {p99 / acq:7.2f} {p99:7.3f} "
            f"{shrunk:>9} {res['position_passes'] / max(1, len(s)):6.0f} {res['wait_mean']:7.3f} {res['recon_mean']:7.3f} {res['policy_mean']:8.3f} {res['wall']:7.1f} {res['cpu']:7.1f} "
            f"{res['cpu'] / res['wall']:8.2f} {res['cpu'] / max(1, len(s)):7.3f} {res['sender_cpu']:7.1f}")


def quality_rows(n: int, chunk: int, on: list[dict], off: list[dict]) -> list[str]:
    """Paired differences (deadline on - off, same seeds) of the live and converged scores."""
    from latency_quality import paired

    off_by = {r["seed"]: r for r in off}
    pairs = [(r, off_by[r["seed"]]) for r in on if r["seed"] in off_by]
    same = sum(p[0]["positions"].shape == p[1]["positions"].shape and np.allclose(p[0]["positions"], p[1]["positions"]) for p in pairs)
    shift = max(float(np.abs(p[0]["issued"] - p[1]["issued"]).max()) if p[0]["issued"].shape == p[1]["issued"].shape else float("inf") for p in pairs)
    out = [f"{n:>8} {chunk:>5} {len(pairs):>5}  sessions whose positions are the same with and without the deadline: {same}; "
           f"largest difference of an issued position {shift:.2g} nm"]
    for kind in ("live", "converged"):
        for metric in ("pearson_r", "ssim"):
            a = [p[0][kind][metric] for p in pairs]
            b = [p[1][kind][metric] for p in pairs]
            d, se, wins = paired(a, b)
            shrunk = sum(p[0]["shrunk"] for p in pairs)
            out.append(f"{n:>8} {chunk:>5} {len(pairs):>5} {shrunk:>6} {kind:>9} {metric:>9} {np.mean(a):7.3f} {np.mean(b):7.3f} {d:+8.4f} {se:7.4f} {wins:>4}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the compute worker")
    ap.add_argument("--budget", type=int, default=250, help="positions per session (paper: 250-500)")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--chunks", type=int, nargs="+", default=[50, 100])
    ap.add_argument("--min-decisions", type=int, default=100, help="run sessions back to back on each detector until this many decisions are pooled")
    ap.add_argument("--waves", type=int, default=None, help="sessions per detector, back to back (default: enough for --min-decisions; 1 with --quality)")
    ap.add_argument("--dwell-ms", type=float, default=1.0, help="frames are sent one per dwell, as a scan acquires them")
    ap.add_argument("--same-process", action="store_true", help="run the control loops as threads of the service's process (they then share its GIL)")
    ap.add_argument("--stagger-s", type=float, default=0.0,
                    help="detector slot i starts i x this many seconds later, so its sessions are out of step with the others' (0: in step)")
    ap.add_argument("--burst", action="store_true", help="send each chunk's frames at once (saturates the worker: a stress test, not a scan)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--detector-binning", type=int, default=None, help="binning the reconstructor models (default: recon's, 1)")
    ap.add_argument("--strategy", default="adaptive", help="session strategy: adaptive (the shipped GRU policy) or sparse-grid")
    ap.add_argument("--update", choices=["incremental", "full"], default="incremental", help="what a chunk's reconstruction revisits")
    ap.add_argument("--update-iterations", type=int, default=2)
    ap.add_argument("--replay", type=float, default=1.0)
    ap.add_argument(
        "--deadline-fraction", type=float, default=0.5, help="shrink updates that would take longer than this fraction of a chunk's acquisition (0: never)"
    )
    ap.add_argument("--converged", action="store_true", help="make done sessions' converged reconstructions in the background (on with --quality)")
    ap.add_argument("--quality", nargs="+", metavar="DATASET", default=None,
                    help="ptychoscan simulate datasets: stream their specimens and run every configuration with the deadline and without "
                         "(same seeds), scoring each session's final live and converged reconstruction against the ground truth")
    ap.add_argument("--dose", type=float, default=1e4, help="--quality: electrons per position (Poisson)")
    ap.add_argument("--converged-timeout", type=float, default=3600.0, help="--quality: seconds to wait for the converged reconstructions")
    ap.add_argument("--backend", choices=["torch", "overhead-only"], default="torch", help="overhead-only: skip reconstruction to time the service itself")
    ap.add_argument("--repeats", type=int, default=1, help="run every case this many times (interleaved) and print the median p50/acq and its range")
    ap.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval of the service's process (s; Python's default 0.005)")
    args = ap.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)

    import torch

    torch.set_num_threads(args.threads)
    from service.app import create_app
    from service.settings import ServiceSettings

    rasters = None
    if args.quality:
        from latency_quality import RasterFrames

        t0 = time.perf_counter()
        rasters = [RasterFrames.prepare(path) for path in args.quality]
        print(f"quality: {len(rasters)} specimen(s) on a {rasters[0].step_nm:g} nm raster ({time.perf_counter() - t0:.0f} s), dose {args.dose:g} e/position")

    def factory(fraction: float | None):
        def make(storage: Path):
            settings = ServiceSettings(storage=storage, api_keys=[KEY], torch_threads=args.threads, device=args.device, max_budget=10_000,
                recon_detector_binning=args.detector_binning, recon_update=args.update, recon_update_iterations=args.update_iterations,
                recon_replay=args.replay, recon_deadline_fraction=fraction or None, recon_converged=args.converged or bool(args.quality),
            )
            return create_app(settings, backend=OverheadOnlyBackend() if args.backend == "overhead-only" else None)

        return make

    print(f"strategy {args.strategy}, update {args.update} ({args.update_iterations} it, replay {args.replay}, deadline {args.deadline_fraction or 'off'}), "
          f"backend {args.backend}, converged {'on' if args.converged or args.quality else 'off'}, switch interval {sys.getswitchinterval() * 1e3:g} ms, "
          f"torch {torch.__version__}, threads {args.threads}, device {args.device}, detector binning {args.detector_binning or 'default'}, "
          f"budget {args.budget}, K=64, dwell {args.dwell_ms} ms, stagger {args.stagger_s:g} s, frames {'specimens' if rasters else 'disk'}, cpus {os.cpu_count()}, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(HEADER)
    spread: dict[tuple[int, int], list[float]] = {}
    quality: list[str] = []
    dwell_s = 0.0 if args.burst else args.dwell_ms * 1e-3
    for _ in range(args.repeats):
        for chunk in args.chunks:
            for n in args.sessions:
                load = Load(chunk, args.budget, 64, n, 1, args.strategy, dwell_s, rasters, args.dose, args.stagger_s)
                load.waves = args.waves or (1 if rasters else max(1, math.ceil(args.min_decisions / max(1, n * load.decisions_per_session))))
                acq = chunk * args.dwell_ms * 1e-3
                fractions = [args.deadline_fraction, 0.0] if rasters and args.deadline_fraction else [args.deadline_fraction]
                results = []
                for fraction in fractions:
                    after = collect_quality(rasters, args.converged_timeout) if rasters else None
                    res = run_case(factory(fraction), load, not args.same_process, after)
                    results.append(res)
                    print(latency_row(n, chunk, f"{fraction:g}" if fraction else "off", load, res, acq), flush=True)
                spread.setdefault((n, chunk), []).append(np.percentile(results[0]["samples"], 50) / acq)
                if len(results) == 2:
                    quality += quality_rows(n, chunk, results[0]["quality"], results[1]["quality"])
    if args.repeats > 1:  # this machine's run-to-run spread is +-30 %: compare medians, not single runs
        print(f"over {args.repeats} runs, p50/acq: median (min-max)")
        for (n, chunk), ratios in spread.items():
            print(f"{n:>8} sessions, chunk {chunk:>4}: {np.median(ratios):5.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    if quality:
        print("quality, deadline on - off, paired by session seed (mean difference, its standard error, sessions where on > off):")
        print(f"{'sessions':>8} {'chunk':>5} {'pairs':>5} {'shrunk':>6} {'recon':>9} {'metric':>9} {'on':>7} {'off':>7} {'on-off':>8} {'se':>7} {'wins':>4}")
        print("\n".join(quality))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"process CPU time {usage.ru_utime + usage.ru_stime:.1f} s, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
