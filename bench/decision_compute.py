"""The compute of one decision round, without the service around it: incremental update + GRU planner.

What the service's compute worker does after a chunk's last frame, for ``--sessions``
sessions at once, mid-scan (``--measured`` positions reconstructed, ``--chunk`` new
ones): one ``TorchReconBackend.reconstruct`` call (the incremental update: the chunk's
positions plus a replay sample, 2 passes, warm-started; shrunk by the deadline as the
service would) and one ``PolicyPlanner.plan`` call (encoder + GRU, the shipped policy).
Patterns are 64x64 Poisson counts of a bright-field disk (content does not change the
cost) at random positions in a 2x2 nm field. Prints the median (and p90) wall time of
each part and of both, and both's ratio to the chunk's acquisition time at ``--dwell-ms``
(the service's decision-latency goal: < 1 on CPU, < 0.1 on GPU; this is the compute's
share, the service adds ingest, queue and publish). ``--profile`` adds torch.profiler's
table of the update (CPU and CUDA time per op). Usage:

    PYTHONPATH=$PWD python bench/decision_compute.py [--device cpu|cuda] [--threads 2] \\
        [--sessions 1 4 8] [--chunks 50 100] [--measured 250] [--deadline-fraction 0.5] [--profile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service_latency import disk_frames
from service.compute import BeamKey, ChunkUpdate, ReconJob, TorchReconBackend
from service.planner import PlanRequest

FOV = (0.0, 0.0, 2.0, 2.0)
BEAM = BeamKey(60_000.0, 33.0, 64, 1.68, 0.0)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _sessions(backend: TorchReconBackend, n_sessions: int, measured: int, chunk: int, rng: np.random.Generator) -> list[ReconJob]:
    """Each session's state mid-scan: ``measured`` positions reconstructed in full, ``chunk`` new ones just acquired."""
    jobs = []
    for _ in range(n_sessions):
        n = measured + chunk
        patterns = disk_frames(n, 64, rng).astype(np.float32)
        positions = rng.uniform(0.0, 2.0, size=(n, 2))
        first = ReconJob(BEAM, FOV, patterns[:measured], positions[:measured], None, final=True)
        init = backend.reconstruct([first])[0].potential
        jobs.append(ReconJob(BEAM, FOV, patterns, positions, init, n_new=chunk, seed=1, acquisition_s=None))
    return jobs


def _plan_requests(jobs: list[ReconJob], outputs, chunk: int) -> list[PlanRequest]:
    return [
        PlanRequest(FOV, 10_000, chunk, len(job.positions_nm) // chunk, job.positions_nm, out.potential, out.origin_nm, out.pixel_nm, chunk, f"s{i}")
        for i, (job, out) in enumerate(zip(jobs, outputs, strict=True))
    ]


def run_case(backend, planner, device: str, n_sessions: int, chunk: int, measured: int, dwell_s: float, repeats: int, profile: bool) -> dict:
    rng = np.random.default_rng(n_sessions * 1000 + chunk)
    jobs = _sessions(backend, n_sessions, measured, chunk, rng)
    for job in jobs:
        job.acquisition_s = chunk * dwell_s
    # the planner's per-session GRU states as the service has them: planned up to the chunk before
    outputs = backend.reconstruct(jobs)
    earlier = [ReconJob(j.beam, j.fov_nm, j.patterns[:measured], j.positions_nm[:measured], None) for j in jobs]
    planner.plan(_plan_requests(earlier, outputs, chunk))
    states = dict(planner._sessions)
    update, plan = [], []
    reduced = backend.reduced_updates
    for r in range(repeats + 2):
        if r == 2:
            reduced = backend.reduced_updates
        for job in jobs:  # every chunk brings positions never seen before (their shifted probes are not cached), as in a scan
            job.positions_nm[-chunk:] = rng.uniform(0.0, 2.0, size=(chunk, 2))
        _sync(device)
        t0 = time.perf_counter()
        outputs = backend.reconstruct(jobs)
        _sync(device)
        t1 = time.perf_counter()
        planner._sessions.clear()
        planner._sessions.update(states)  # each repeat continues the same remembered state (no GRU replay)
        planner.plan(_plan_requests(jobs, outputs, chunk))
        t2 = time.perf_counter()
        if r >= 2:  # the first two: allocation, FFT plans, probe cache
            update.append(t1 - t0)
            plan.append(t2 - t1)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with torch_profile(activities=activities) as prof:
            for _ in range(5):
                backend.reconstruct(jobs)
            _sync(device)
        key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        if device.startswith("cuda"):
            print(prof.key_averages().table(sort_by=key, row_limit=15))
    shrunk = backend.reduced_updates - reduced
    total = np.asarray(update) + np.asarray(plan)
    return {"shrunk": f"{shrunk}/{repeats * n_sessions}", "update": np.asarray(update), "plan": np.asarray(plan), "total": total, "acq": chunk * dwell_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--chunks", type=int, nargs="+", default=[50, 100])
    ap.add_argument("--measured", type=int, default=250, help="positions already reconstructed per session (mid-scan of a 500 budget)")
    ap.add_argument("--dwell-ms", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--deadline-fraction", type=float, default=0.5, help="the service's recon_deadline_fraction (0: never shrink)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's table of the update")
    ap.add_argument("--subpixel-steps", type=int, default=32, help="the service's recon_subpixel_steps (0: exact positions)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from policy.service_planner import load_planner

    options = {"batch_positions": 16, "subpixel_steps": args.subpixel_steps or None}  # the service's defaults
    backend = TorchReconBackend(ChunkUpdate(deadline_fraction=args.deadline_fraction or None), device=args.device, torch_threads=args.threads, options=options)
    backend.warmup()
    planner = load_planner()
    planner.warmup()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} CPU threads"
    print(f"device {args.device} ({name}), torch {torch.__version__}, measured {args.measured}, dwell {args.dwell_ms} ms, "
          f"deadline {args.deadline_fraction or 'off'}, subpixel steps {args.subpixel_steps or 'exact'}, repeats {args.repeats}")
    print(f"{'sessions':>8} {'chunk':>5} {'update ms':>9} {'p90':>6} {'plan ms':>7} {'p90':>6} {'both ms':>7} {'acq ms':>6} {'both/acq':>8} {'shrunk':>7}")
    for chunk in args.chunks:
        for n in args.sessions:
            res = run_case(backend, planner, args.device, n, chunk, args.measured, args.dwell_ms * 1e-3, args.repeats, args.profile)
            u, p, t = (res[k] * 1e3 for k in ("update", "plan", "total"))
            print(f"{n:>8} {chunk:>5} {np.median(u):9.2f} {np.percentile(u, 90):6.2f} {np.median(p):7.2f} {np.percentile(p, 90):6.2f} "
                  f"{np.median(t):7.2f} {res['acq'] * 1e3:6.0f} {np.median(t) / (res['acq'] * 1e3):8.3f} {res['shrunk']:>7}", flush=True)


if __name__ == "__main__":
    main()
