"""``ptychoscan demo``: the main job on an embedded default.

Simulates a small MoS2 dataset (paper physics: 60 kV, 33 mrad, 64x64 patterns) and
writes it with a PNG of its ground-truth phase, scan and a few patterns.
"""

from __future__ import annotations

import argparse
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the demo on an embedded default", description=__doc__)
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--scan-shape", type=int, nargs=2, default=(32, 32), metavar=("NY", "NX"))
    p.add_argument("--step-nm", type=float, default=0.06)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from ptychoscan.plots import plot_dataset_overview
    from recon.dataset import write_dataset
    from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = SimulationConfig(scan_shape=tuple(args.scan_shape), step_nm=args.step_nm)
    start = time.perf_counter()
    dataset = simulate_raster_dataset(config, seed=args.seed, progress=True, device=args.device)
    elapsed = time.perf_counter() - start
    path = write_dataset(out / "mos2_demo.h5", dataset)
    gt = dataset.ground_truth
    png = plot_dataset_overview(
        gt.phase, gt.pixel_nm, gt.origin_nm, dataset.positions_nm, dataset.patterns, out / "mos2_demo.png",
        title=f"MoS2, {dataset.n_positions} positions, 60 kV / 33 mrad",
    )
    sums = dataset.patterns.reshape(dataset.n_positions, -1).sum(axis=1)
    print(f"simulated {dataset.n_positions} patterns of {dataset.detector_pixels}x{dataset.detector_pixels} in {elapsed:.1f} s")
    print(f"pattern sums: {sums.min():.4f}..{sums.max():.4f}; phase range {gt.phase.min():.3f}..{gt.phase.max():.3f} rad")
    print(f"wrote {path}")
    print(f"wrote {png}")
    assert np.isfinite(sums).all()
    return 0
