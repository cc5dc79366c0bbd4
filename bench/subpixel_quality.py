"""Probe positions rounded to 1/N of a pixel (``ReconOptions.subpixel_steps``) against exact ones: reconstruction quality.

Reconstructs subsets of a dataset with ground truth (``ptychoscan simulate``, or
bench/abtem_dataset.py) with exact probe positions and with positions rounded to
1/``--steps`` of a grid pixel (the service's ``recon_subpixel_steps``), everything else
as ``ptychoscan reconstruct`` does, and prints the SSIM against the ground truth of both
and their ratio rounded / exact (1.000: no loss). What the rounding saves is timed by
``bench/decision_compute.py --subpixel-steps 0|32`` (fresh positions each chunk, as in a
scan; raster datasets repeat their sub-pixel offsets). Usage:

    PYTHONPATH=$PWD python bench/subpixel_quality.py DATASET.h5 [--steps 32] [--subsets sparse-grid:80 random:120 all] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--subsets", nargs="+", default=["sparse-grid:80", "random:120", "all"], help="as ptychoscan reconstruct --positions-subset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from recon.beam import probe_for
    from recon.dataset import read_dataset
    from recon.engine import Reconstructor
    from recon.inputs import chunk_from_dataset, fov_of, grid_for_dataset, select_subset
    from recon.metrics import ssim_against_ground_truth
    from recon.options import ReconOptions

    ds = read_dataset(args.dataset)
    if ds.ground_truth is None:
        raise SystemExit(f"{args.dataset} has no ground truth to score against")
    probe = probe_for(ds)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    print(f"{args.dataset}: {ds.n_positions} positions, K={ds.detector_pixels}, rounding to 1/{args.steps} px, device {args.device}, threads {args.threads}")
    print(f"{'subset':>16} {'positions':>9} {'ssim exact':>10} {'ssim 1/N':>9} {'ratio':>6}")
    for subset in args.subsets:
        indices = select_subset(ds, None if subset == "all" else subset, seed=0)
        positions = ds.positions_nm[indices]
        chunk = chunk_from_dataset(ds, indices, grid_for_dataset(ds, fov_of(positions)))
        scores = []
        for steps in (None, args.steps):
            result = Reconstructor(probe, ReconOptions(subpixel_steps=steps), device=args.device).reconstruct([chunk])[0]
            scores.append(ssim_against_ground_truth(result.potential, result.grid, ds.ground_truth, fov_of(positions)))
        print(f"{subset:>16} {len(indices):>9} {scores[0]:10.4f} {scores[1]:9.4f} {scores[1] / scores[0]:6.3f}")
    print(f"wall {time.perf_counter() - wall0:.1f} s, cpu {time.process_time() - cpu0:.1f} s")


if __name__ == "__main__":
    main()
