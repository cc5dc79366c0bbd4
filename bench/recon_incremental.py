"""Incremental vs full chunk reconstruction: cost per decision and SSIM along a scan.

Replays the service's reconstruction schedule on a dense raster dataset with ground
truth (``ptychoscan simulate``): positions of interleaved sparse grids (the service's
sparse-grid strategy, snapped to the nearest unused raster position) arrive in chunks;
after each chunk the service's backend (``service.compute.TorchReconBackend``)
reconstructs, warm-started from the previous chunk, either every position so far
(``full``: the service's behaviour before incremental updates) or the chunk's new
positions plus a replay sample of older ones (``incremental``). Prints, per chunk and
mode, wall and CPU seconds of the reconstruction and its SSIM against the ground truth,
then the mean decision cost (all chunks but the last, on which no decision waits) and
its ratio incremental/full, and the final SSIM of each. Usage:

    python bench/recon_incremental.py DATASET.h5 [--budget 250] [--chunk 50] [--threads 2] \\
        [--update-iterations 2] [--replay 1.0] [--detector-binning 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--budget", type=int, default=250)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iterations", type=int, default=5, help="passes of a full reconstruction")
    ap.add_argument("--update-iterations", type=int, default=2)
    ap.add_argument("--replay", type=float, default=1.0)
    ap.add_argument("--detector-binning", type=int, default=None)
    ap.add_argument("--batch-positions", type=int, default=16, help="positions per gradient update (the service's default 16)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from policy.baselines import interleaved_grids
    from policy.env import snap_to_unvisited
    from recon.dataset import read_dataset
    from recon.grid import ObjectGrid
    from recon.inputs import fov_of
    from recon.metrics import ssim_against_ground_truth
    from service.compute import BeamKey, ChunkUpdate, ReconJob, TorchReconBackend

    ds = read_dataset(args.dataset)
    if ds.ground_truth is None:
        raise SystemExit(f"{args.dataset}: needs a ground truth (a ptychoscan simulate file)")
    if not 0 < args.budget <= ds.n_positions or args.chunk < 1:
        raise SystemExit(f"--budget must lie in 1..{ds.n_positions} and --chunk be >= 1")
    fov = fov_of(ds.positions_nm)
    order = snap_to_unvisited(interleaved_grids(fov, args.budget, args.chunk), ds.positions_nm, np.zeros(ds.n_positions, bool))
    beam = BeamKey(ds.energy_ev, ds.convergence_mrad, ds.detector_pixels, ds.detector_pixel_mrad, ds.defocus_nm)
    patterns = ds.patterns[order].astype(np.float32)
    positions = ds.positions_nm[order]
    modes = {
        "full": ChunkUpdate(mode="full", iterations=args.iterations),
        "incremental": ChunkUpdate(iterations=args.iterations, update_iterations=args.update_iterations, replay=args.replay),
    }
    print(f"dataset={args.dataset} budget={args.budget} chunk={args.chunk} threads={args.threads} device={args.device} "
          f"binning={args.detector_binning or 'default'} batch={args.batch_positions} update_iterations={args.update_iterations} replay={args.replay}")
    print(f"{'mode':>12} {'n':>5} {'wall s':>8} {'cpu s':>8} {'ssim':>7}")
    summary = {}
    for name, update in modes.items():
        options = {"batch_positions": args.batch_positions, **({"detector_binning": args.detector_binning} if args.detector_binning else {})}
        backend = TorchReconBackend(update, args.device, args.threads, options)
        backend.warmup()
        init, walls, cpus, scores = None, [], [], []
        for step, end in enumerate(range(args.chunk, args.budget + args.chunk, args.chunk)):
            n = min(end, args.budget)
            job = ReconJob(beam, fov, patterns[:n], positions[:n], init, n_new=n - (step * args.chunk), final=n >= args.budget, seed=step)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            out = backend.reconstruct([job])[0]
            walls.append(time.perf_counter() - wall0)
            cpus.append(time.process_time() - cpu0)
            init = out.potential
            grid = ObjectGrid(out.origin_nm, out.potential.shape, out.pixel_nm)
            scores.append(ssim_against_ground_truth(out.potential, grid, ds.ground_truth, fov))
            print(f"{name:>12} {n:>5} {walls[-1]:8.3f} {cpus[-1]:8.3f} {scores[-1]:7.4f}", flush=True)
            if n >= args.budget:
                break
        decisions = slice(0, max(1, len(walls) - 1))
        summary[name] = (float(np.mean(walls[decisions])), float(np.mean(cpus[decisions])), float(np.mean(scores[decisions])), scores[-1])
    full, inc = summary["full"], summary["incremental"]
    for name, (wall, cpu, mean_ssim, final) in summary.items():
        print(f"{name}: decision reconstruction mean wall {wall:.3f} s cpu {cpu:.3f} s, mean SSIM before the last chunk {mean_ssim:.4f}, final SSIM {final:.4f}")
    print(f"incremental / full: wall {inc[0] / full[0]:.2f}x cpu {inc[1] / full[1]:.2f}x, "
          f"SSIM before the last chunk {inc[2] - full[2]:+.4f}, final SSIM {inc[3] - full[3]:+.4f}")


if __name__ == "__main__":
    main()
