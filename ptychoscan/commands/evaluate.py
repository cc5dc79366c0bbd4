"""``ptychoscan evaluate``: adaptive scanning against the baselines on datasets with ground truth."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score adaptive scanning against sparse-grid, random, low-discrepancy and low-dose full raster",
        description="For each dense-raster dataset and each strategy (adaptive, sparse-grid, random, low-discrepancy, "
        "full-raster-low-dose) measure --budget positions in sub-sequences of --chunk, reconstruct, and score SSIM "
        "against the ground truth and against the full-raster reconstruction.",
    )
    p.add_argument("--datasets", nargs="+", required=True, help="dense-raster dataset files (with ground truth)")
    p.add_argument("--policy", help="policy checkpoint (default: the shipped policy/checkpoints/policy.pt)")
    p.add_argument("--budget", type=int, required=True, help="positions per scan")
    p.add_argument("--chunk", type=int, help="positions per sub-sequence (default: the policy's)")
    p.add_argument("--dose", type=float, default=10000.0, help="electrons per measured position (Poisson); default 1e4")
    p.add_argument("--strategies", nargs="+", help="subset of strategies (default all)")
    p.add_argument("--recon-config", help="ReconOptions YAML/TOML/JSON (default: the policy's training options)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--json", required=True, help="output JSON")
    p.add_argument("--png", help="output figure: reconstructions with positions")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from policy.baselines import STRATEGIES
    from policy.env import Specimen
    from policy.evaluation import format_table, plot_runs, run_strategies, score, summarise
    from policy.inference import PolicyRunner
    from ptychoscan.config import load_model
    from recon.beam import probe_for
    from recon.dataset import read_dataset
    from recon.engine import Reconstructor
    from recon.options import ReconOptions

    strategies = tuple(args.strategies or STRATEGIES)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategy {unknown[0]!r} (choose from {', '.join(STRATEGIES)})")
    if args.budget < 1:
        raise ValueError("--budget must be a positive number of positions")
    if args.dose is not None and not args.dose > 0:
        raise ValueError("--dose must be positive electrons per position")
    torch.set_num_threads(args.threads)
    runner = PolicyRunner(args.policy) if "adaptive" in strategies else None
    chunk = args.chunk or (runner.chunk if runner else 50)
    if chunk < 1 or chunk > args.budget:
        raise ValueError(f"--chunk must be between 1 and the budget ({args.budget}), got {chunk}")
    if args.recon_config:
        options = load_model(ReconOptions, args.recon_config)
    else:
        options = ReconOptions(**(runner.config.recon if runner else {}))
    datasets = [read_dataset(f) for f in args.datasets]
    specimens = [Specimen.from_dataset(d, Path(f).stem) for d, f in zip(datasets, args.datasets, strict=True)]
    rec = Reconstructor(probe_for(datasets[0]), options, device="cpu")
    runs, reference = run_strategies(specimens, rec, runner, args.budget, chunk, args.dose, args.seed, strategies)
    rows = score(runs, specimens, reference)
    summary = summarise(rows)
    print(format_table(summary))
    meta = {"budget": args.budget, "chunk": chunk, "dose_per_position": args.dose, "seed": args.seed,
            "policy": str(runner.path) if runner else None, "policy_version": runner.version if runner else None,
            "recon": options.model_dump(mode="json"), "datasets": list(args.datasets)}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": rows, "summary": summary, "meta": meta}, indent=1))
    if args.png:
        plot_runs(runs, specimens, reference, args.png)
    return 0
