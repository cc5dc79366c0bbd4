"""``ptychoscan evaluate``: every scanning strategy at equal positions and dose, scored against the ground truth."""

from __future__ import annotations

import argparse

from policy.evaluation import ALL_STRATEGIES, STRATEGIES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score adaptive and structure-guided scanning against fixed patterns and the low-dose full raster",
        description="For each dataset with ground truth and each noise seed, every strategy (" + ", ".join(STRATEGIES) + ") measures "
        "the same number of positions (--density per nm^2 of the field, default 125 = 500 over 2x2 nm, or --budget) at the same "
        "dose in sub-sequences of --chunk; adaptive strategies plan from a live reconstruction; then every scan gets the same "
        "final reconstruction and is scored over the field (SSIM, Pearson r, NRMSE; SSIM and r over the specimen, i.e. "
        "without vacuum), with paired differences between strategies.",
    )
    p.add_argument("--datasets", nargs="+", required=True, help="dataset files with ground truth (beams and detector sizes may differ)")
    p.add_argument("--density", type=float, help="positions per nm^2 of each dataset's field (default 125; the paper: 62-125)")
    p.add_argument("--budget", type=int, help="positions per scan (instead of --density)")
    p.add_argument("--chunk", type=int, help="positions per sub-sequence (default 50)")
    p.add_argument("--dose", type=float, help="electrons per measured position (default 1e4)")
    p.add_argument("--seeds", type=int, help="noise draws per dataset (default 3)")
    p.add_argument("--seed", type=int, help="base seed (default 0)")
    p.add_argument("--strategies", nargs="+", help="subset of: " + ", ".join(ALL_STRATEGIES) + " (default: the first six)")
    p.add_argument("--no-oracle", action="store_true", help="skip structure-guided fed the ground truth")
    p.add_argument("--measurement", choices=["auto", "simulate", "raster"], help="simulate patterns on demand from the ground truth "
                   "(exact positions on a 0.02 nm candidate raster) or snap to the file's raster (default auto: simulate)")
    p.add_argument("--final-iterations", type=int, help="at most this many passes of the final reconstruction (default 60; "
                   "passes = 10,000 position updates / positions, at least 10)")
    p.add_argument("--config", help="EvaluationOptions as YAML/TOML/JSON (flags override it)")
    p.add_argument("--policy", help="GRU policy checkpoint for 'adaptive' (default: the shipped one)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--json", required=True, help="output JSON: every run's scores, the summary, the paired differences")
    p.add_argument("--png", help="figure: positions over reconstructions, per dataset (up to 4) and strategy")
    p.add_argument("--save-reconstructions", metavar="DIR", help="write DIR/<dataset stem>/<strategy>.h5 (first noise seed)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from policy.eval_report import plot_positions, save_reconstructions
    from policy.evaluation import EvaluationOptions, evaluate, prepare_case
    from policy.scores import adaptivity_target, format_paired, format_summary, format_target, paired, score_runs, summarise
    from ptychoscan.config import load_model
    from recon.dataset import read_dataset
    from recon.device import pick_device

    unknown = [s for s in args.strategies or () if s not in ALL_STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategy {unknown[0]!r} (choose from {', '.join(ALL_STRATEGIES)})")
    overrides = {"density_per_nm2": args.density, "budget": args.budget, "chunk": args.chunk, "dose": args.dose, "seeds": args.seeds,
                 "seed": args.seed, "measurement": args.measurement, "strategies": tuple(args.strategies) if args.strategies else None}
    if args.no_oracle:
        overrides["oracle"] = False
    options = load_model(EvaluationOptions, args.config, overrides)
    if args.final_iterations is not None:
        options = options.model_copy(update={"final_recon": options.final_recon.model_copy(update={"iterations": args.final_iterations})})
    if args.threads < 1:
        raise ValueError("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    runner = None
    if "adaptive" in options.strategies:
        from policy.inference import PolicyRunner

        runner = PolicyRunner(args.policy)
    stems = [Path(f).stem for f in args.datasets]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ValueError(f"datasets must have distinct file names (results are keyed by them): {', '.join(repeated)} repeats")
    cases = []
    for f in args.datasets:
        case = prepare_case(read_dataset(f), Path(f).stem, options, device)
        n = case.budget(options)
        print(f"{case.name}: {case.specimen_kind}, field {case.fov_nm[2]:.2f}x{case.fov_nm[3]:.2f} nm, {n} positions "
              f"({n / case.area_nm2:.1f} per nm^2), {len(case.source.candidates_nm)} candidates, K={case.dataset.detector_pixels}")
        cases.append(case)
    runs = evaluate(cases, options, runner, device)
    rows = score_runs(runs)
    summary = summarise(rows)
    pairs = paired(rows, focus=("structure-guided", "adaptive", "structure-guided-oracle"))
    print(format_summary(summary))
    print(format_paired(pairs))
    target = adaptivity_target(rows)
    print(format_target(target))
    meta = {"options": options.model_dump(mode="json"), "datasets": list(args.datasets),
            "policy": str(runner.path) if runner else None, "policy_version": runner.version if runner else None}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": rows, "summary": summary, "paired": pairs, "target": target, "meta": meta}, indent=1))
    if args.png:
        print(plot_positions(runs, args.png))
    if args.save_reconstructions:
        for path in save_reconstructions(runs, args.save_reconstructions, options.final_recon):
            print(path)
    return 0
