"""Batched reconstruction throughput: B scans x N positions x I iterations in ONE call.

Default: the paper's training batch, 24 scans x 250 positions x 5 iterations, 64x64
patterns (60 kV, 33 mrad, 1.68 mrad/px). Patterns come from the shared forward model
on a random blob potential (throughput does not depend on the specimen). Prints wall
and CPU time, seconds per scan, the ratio to the paper's ~1.5 s/scan on a V100 and the
peak memory (CUDA: max allocated; CPU: growth of the process's max RSS). Usage:

    python bench/recon_batched.py [--scans 24] [--positions 250] [--iterations 5]
        [--threads 2] [--device auto|cpu|cuda] [--detector-binning 1] [--batch-positions 32]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from recon.beam import probe_for, reconstruction_pixel_nm
from recon.engine import Reconstructor, ScanChunk
from recon.forward import forward_intensity
from recon.grid import ObjectGrid
from recon.options import ReconOptions

PAPER_SECONDS_PER_SCAN = 1.5


def make_scans(n_scans: int, n_positions: int, k: int, seed: int = 0) -> list[ScanChunk]:
    rng = np.random.default_rng(seed)
    pixel = reconstruction_pixel_nm(60e3, k, 1.68)
    probe = probe_for(energy_ev=60e3, convergence_mrad=33.0, detector_pixels=k, detector_pixel_mrad=1.68)
    fov = (0.0, 0.0, 2.0, 2.0)
    grid = ObjectGrid.covering(fov, pixel, k)
    ny, nx = grid.shape
    yy, xx = np.mgrid[:ny, :nx]
    scans = []
    for _ in range(n_scans):
        v = np.zeros((ny, nx))
        for cy, cx in rng.uniform(0, max(ny, nx), size=(ny * nx // 25, 2)):
            v += 0.4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0)
        positions = rng.uniform(0, 2.0, size=(n_positions, 2))
        px = torch.tensor(grid.positions_px(positions), dtype=torch.float32)
        vt = torch.tensor(v, dtype=torch.float32)
        patterns = forward_intensity(torch.polar(torch.ones_like(vt), vt), probe, px)
        scans.append(ScanChunk(patterns.numpy(), positions, grid))
    return scans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=24)
    parser.add_argument("--positions", type=int, default=250)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--k", type=int, default=64, help="pattern size K")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--detector-binning", type=int, default=ReconOptions().detector_binning)
    parser.add_argument("--batch-positions", type=int, default=ReconOptions().batch_positions, help="0: full batch")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scans = make_scans(args.scans, args.positions, args.k)
    probe = probe_for(energy_ev=60e3, convergence_mrad=33.0, detector_pixels=args.k, detector_pixel_mrad=1.68)
    options = ReconOptions(
        iterations=args.iterations, detector_binning=args.detector_binning, batch_positions=args.batch_positions or None, dtype=args.dtype
    )
    recon = Reconstructor(probe, options, device=args.device)
    recon.reconstruct(scans[:1], None)  # warm-up: FFT plans, CUDA context
    cuda = recon.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results = recon.reconstruct(scans)
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    name = torch.cuda.get_device_name() if cuda else f"{args.threads} CPU threads"
    per_scan = wall / args.scans
    drop = np.mean([r.loss_history[-1] / r.loss_history[0] for r in results])
    print(f"device={recon.device} ({name}) scans={args.scans} positions={args.positions} iterations={args.iterations} K={args.k} "
          f"detector_binning={args.detector_binning} batch_positions={options.batch_positions} dtype={args.dtype}")
    print(f"wall={wall:.2f} s cpu={cpu:.2f} s cpu/wall={cpu / wall:.2f} s/scan={per_scan:.3f} "
          f"peak_memory={'allocated' if cuda else 'rss_growth'}={peak:.0f} MiB loss_last/first={drop:.3f}")
    print(f"ratio to the paper's {PAPER_SECONDS_PER_SCAN} s/scan (V100): {PAPER_SECONDS_PER_SCAN / per_scan:.2f}x")


if __name__ == "__main__":
    main()
