"""Reconstruction quality against the number of positions, per strategy and specimen class.

Runs ``ptychoscan evaluate``'s protocol (``policy.evaluation``) at each ``--budgets``
count on the given datasets (held-out specimens with ground truth) and plots the mean
and spread of a score per strategy, a panel per class. The full raster at equal dose
is a point per budget too (its total dose follows the budget).

    PYTHONPATH=$PWD .venv/bin/python bench/quality_vs_positions.py out/data/test/flake/flake_20000[01].h5 \\
        --budgets 100 200 400 800 --png bench/out/quality_vs_positions.png

Prints, per class, budget and strategy: mean Pearson r over the specimen (and the
whole field), the wall and CPU time of the whole run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from policy.eval_report import plot_quality_vs_positions
from policy.evaluation import EvaluationOptions, evaluate, prepare_case
from policy.inference import PolicyRunner
from policy.scores import score_runs
from recon.dataset import read_dataset
from recon.device import pick_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 400, 800])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--strategies", nargs="+", default=["adaptive", "structure-guided", "sparse-grid", "random", "low-discrepancy",
                                                         "full-raster-low-dose"])
    ap.add_argument("--metric", default="pearson_r_specimen")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=50, help="positions per sub-sequence (the nanotube case: 100)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--json", default="bench/out/quality_vs_positions.json")
    ap.add_argument("--png", default="bench/out/quality_vs_positions.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    wall, cpu = time.perf_counter(), time.process_time()
    device = pick_device(args.device)
    runner = PolicyRunner(device=device) if "adaptive" in args.strategies else None
    rows = []
    for budget in args.budgets:
        options = EvaluationOptions(budget=budget, chunk=args.chunk, seeds=args.seeds, strategies=tuple(args.strategies), oracle=False)
        cases = [prepare_case(read_dataset(f), Path(f).stem, options, device) for f in args.datasets]
        for row in score_runs(evaluate(cases, options, runner, device=device, progress=False)):
            rows.append({**row, "budget": budget})
    table: dict = {}
    for cls in sorted({r["class"] for r in rows}):
        table[cls] = {}
        for strategy in args.strategies:
            points = []
            for budget in args.budgets:
                sel = [r[args.metric] for r in rows if r["class"] == cls and r["strategy"] == strategy and r["budget"] == budget
                       and r[args.metric] is not None]
                if sel:
                    points.append((budget, float(np.mean(sel)), float(np.std(sel))))
                    field = np.mean([r["pearson_r"] for r in rows if r["class"] == cls and r["strategy"] == strategy and r["budget"] == budget])
                    print(f"{cls:<8} {budget:>5} positions  {strategy:<22} {args.metric} {np.mean(sel):.4f} +- {np.std(sel):.4f}  "
                          f"pearson_r {field:.4f}  (n={len(sel)})")
            table[cls][strategy] = points
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "table": table, "budgets": args.budgets}, indent=1))
    print(plot_quality_vs_positions(table, args.png, args.metric))
    print(f"wall {time.perf_counter() - wall:.0f} s, CPU {time.process_time() - cpu:.0f} s, torch threads {args.threads}")


if __name__ == "__main__":
    main()
