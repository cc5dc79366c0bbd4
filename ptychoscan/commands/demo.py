"""``ptychoscan demo``: the closed loop on an embedded default.

Starts the service, the simulated detector and the control-software stand-in on
loopback, runs an adaptive scan of a simulated MoS2 specimen (60 kV, 33 mrad, 64x64
patterns, 40x40 dense raster at 0.05 nm; 5 % of it measured in 5 sub-sequences) with
the shipped policy, and the sparse grid at the same dose; prints the SSIM of both
against the ground truth and writes a PNG of positions over the reconstructions.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the closed-loop demo on an embedded default", description=__doc__)
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--seed", type=int, default=None, help="specimen seed (default: one never used in training)")
    p.add_argument("--scan-shape", type=int, nargs=2, default=None, metavar=("NY", "NX"), help="dense raster (default 40 40)")
    p.add_argument("--step-nm", type=float, default=None, help="raster step, nm (default 0.05)")
    p.add_argument("--budget-fraction", type=float, default=None, help="fraction of the raster measured (default 0.05)")
    p.add_argument("--sub-sequences", type=int, default=None, help="chunks the budget is split into (default 5)")
    p.add_argument("--dose", type=float, default=None, help="electrons per frame (default 1e4)")
    p.add_argument("--defocus-nm", type=float, default=None, help="probe defocus, nm (default 10)")
    p.add_argument("--policy", default=None, help="policy checkpoint (default: the shipped one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ptychoscan.closed_loop import ClosedLoopConfig, plot_outcomes, run_closed_loop
    from ptychoscan.config import load_model

    overrides = {
        "out": Path(args.out),
        "seed": args.seed,
        "scan_shape": args.scan_shape,
        "step_nm": args.step_nm,
        "budget_fraction": args.budget_fraction,
        "sub_sequences": args.sub_sequences,
        "dose_per_frame": args.dose,
        "defocus_nm": args.defocus_nm,
        "policy_checkpoint": args.policy,
    }
    config = load_model(ClosedLoopConfig, None, overrides)
    dataset, outcomes = run_closed_loop(config)
    png = plot_outcomes(outcomes, dataset, config.out / "closed_loop.png")
    print(f"specimen: MoS2 seed {config.seed}, {dataset.n_positions}-position dense raster, dose {config.dose_per_frame:g} e/frame")
    for o in outcomes:
        print(f"{o.strategy:>12}: {len(o.positions_nm)} positions, SSIM {o.ssim:.3f} vs ground truth, {o.seconds:.1f} s, planner {o.planner}")
    print(f"wrote {png}")
    by_name = {o.strategy: o.ssim for o in outcomes}
    if "adaptive" in by_name and "sparse-grid" in by_name:
        print(f"ssim adaptive={by_name['adaptive']:.4f} sparse-grid={by_name['sparse-grid']:.4f}")
    return 0
