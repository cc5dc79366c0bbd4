"""Markdown tables from ``ptychoscan evaluate`` JSON files (the evaluation table in bench/RESULTS.md).

    PYTHONPATH=$PWD .venv/bin/python bench/evaluation_summary.py bench/out/evaluation/{flake,mos2,dwcnt}.json
    ... --min-specimen-fraction 0.1   # without the fields that a nanotube only clips

Per class: mean +- std of every score per strategy; structure-guided's paired
differences against every other strategy (mean [95 % CI over datasets] wins/pairs); the
adaptivity target line (``policy.scores.adaptivity_target``).
"""

from __future__ import annotations

import argparse
import json

from policy.scores import METRICS, adaptivity_target, paired, summarise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+")
    ap.add_argument("--focus", default="structure-guided")
    ap.add_argument("--min-specimen-fraction", type=float, default=0.0,
                    help="leave out the specimens whose specimen region is less than this share of the field (default 0: none)")
    args = ap.parse_args()
    rows = [r for path in args.json for r in json.load(open(path))["results"]]
    small = sorted({r["dataset"] for r in rows if r["specimen_fraction"] < args.min_specimen_fraction})
    if small:
        print(f"left out ({len(small)} specimens whose specimen region is < {args.min_specimen_fraction:.0%} of the field): {', '.join(small)}")
        rows = [r for r in rows if r["dataset"] not in small]
    summary = summarise(rows)
    pairs = paired(rows, focus=(args.focus,))
    target = adaptivity_target(rows)
    for cls, per in summary.items():
        n_datasets = len({r["dataset"] for r in rows if r["class"] == cls})
        n_seeds = len({r["seed"] for r in rows if r["class"] == cls})
        print(f"\n**{cls}** ({n_datasets} specimens x {n_seeds} noise seeds)\n")
        print("| strategy | positions | per nm^2 | " + " | ".join(METRICS) + " |")
        print("|---|---|---|" + "---|" * len(METRICS))
        for strategy, e in per.items():
            cells = " | ".join(f"{e[m]['mean']:.3f} +- {e[m]['std']:.3f}" if m in e else "n/a" for m in METRICS)
            print(f"| {strategy} | {e['n_positions']:.0f} | {e['positions_per_nm2']:.1f} | {cells} |")
        print(f"\n| {args.focus} vs | r specimen | r field | SSIM | SSIM specimen | NRMSE (lower-is-better, sign turned) |")
        print("|---|---|---|---|---|---|")
        for name, e in pairs.get(cls, {}).items():
            other = name.split(" vs ", 1)[1]

            def cell(m, e=e):
                if m not in e:
                    return "n/a"
                ci = e[m]["ci95"]
                ci_text = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
                return f"{e[m]['mean']:+.3f}{ci_text} {e[m]['wins']}/{e[m]['pairs']}"

            print(f"| {other} | {cell('pearson_r_specimen')} | {cell('pearson_r')} | {cell('ssim')} | {cell('ssim_specimen')} | {cell('nrmse')} |")
        t = target.get(cls)
        if t:
            share = "n/a" if t["share_meeting_target"] is None else f"{100 * t['share_meeting_target']:.0f} %"
            if t.get("share_ci95"):
                share += f" [95 %: {100 * t['share_ci95'][0]:.0f}, {100 * t['share_ci95'][1]:.0f}]"
            oracle = "n/a" if t["mean_oracle_gain"] is None else f"{t['mean_oracle_gain']:+.4f}"
            gain = f"{t['mean_gain']:+.4f}" + (f" [{t['gain_ci95'][0]:+.4f}, {t['gain_ci95'][1]:+.4f}]" if t.get("gain_ci95") else "")
            print(f"\nAgainst the best fixed pattern of each pair: gain {gain} (specimen r), oracle gain {oracle}, "
                  f"pairs with gain > 0 and >= half the oracle's: {share}; whole-field r {t['mean_field_r_vs_best_fixed']:+.4f}.")


if __name__ == "__main__":
    main()
