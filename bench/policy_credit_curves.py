"""RL learning curves with and without Voronoi credit assignment (the paper's Figure 6 comparison).

Usage: PYTHONPATH=. python bench/policy_credit_curves.py RUN_VORONOI RUN_TOTAL --out bench/out/policy_credit.png
Each RUN is a training out_dir with metrics.jsonl. Prints, per run, the mean of the
episode's final total reward (reconstructed phase over the fov / P: the same quantity
for both runs, unlike their per-position training rewards) over the first and the last
10 iterations, and writes the overlaid curves (running mean of 10).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from policy.training import read_metrics


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs=2, help="out_dir with Voronoi credit, out_dir with total reward")
    p.add_argument("--out", default="bench/out/policy_credit.png")
    p.add_argument("--window", type=int, default=10)
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for run, label in zip(args.runs, ("Voronoi credit", "total reward (no credit)"), strict=True):
        rows = read_metrics(Path(run) / "metrics.jsonl", "rl")
        it = np.array([r["iteration"] for r in rows])
        y = np.array([r["final_total_reward"] for r in rows])
        w = min(args.window, len(y))
        smooth = np.convolve(y, np.ones(w) / w, mode="valid")
        ax.plot(it[w - 1 :], smooth, label=label)
        print(f"{label:<26} iterations {len(y):4d}  first {w}: {y[:w].mean():+.4f}  last {w}: {y[-w:].mean():+.4f}  "
              f"change {y[-w:].mean() - y[:w].mean():+.4f}")
    ax.set_xlabel("RL iteration")
    ax.set_ylabel(f"final total reward (running mean {args.window})")
    ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
