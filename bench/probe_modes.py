"""Partially coherent data reconstructed with one coherent probe and with the right incoherent probe modes.

Takes dense-raster files simulated with a focal spread or a source size (``ptychoscan
simulate --focal-spread-nm / --source-size-nm``, Poisson noise from ``--dose-per-a2``; the
file keeps the coherent nominal probe) and, for each file, the full raster and a seeded
random subset of ``--sparse`` positions: reconstructs with the evaluation's final recipe
(``policy.evaluation.default_final_recon``: full-batch preconditioned Nesterov GD,
``--passes`` passes, the step halved on divergence) (a) with the file's coherent probe and
(b) with ``ReconOptions.coherence`` set to the spreads the data were simulated with (the
right modes, ``recon.probe_modes``), and with ``--mode-power P`` (c) with the fewest orthogonal
modes of that mixed state holding P of its power (``coherence_mode_power``). Prints SSIM and Pearson r over the scanned field
against the ground truth (``recon.metrics.registered_truth`` + ``quality_scores``, as
bench/probe_retrieval.py scores), the final loss, wall and CPU seconds per pass, and the
paired difference (modes - coherent) per file with its mean and spread over the files
(``--summary-of A.json B.json`` prints it for earlier runs' rows together).

    PYTHONPATH=$PWD python bench/probe_modes.py --focal-spread-nm 3 --json bench/out/probe_modes_focal.json DIR/*.h5
    PYTHONPATH=$PWD python bench/probe_modes.py --source-size-nm 0.02 --json bench/out/probe_modes_source.json DIR/*.h5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from policy.evaluation import default_final_recon
from recon.coherence import PartialCoherence
from recon.convergence import reconstruct_with_backoff
from recon.dataset import read_dataset
from recon.engine import Reconstructor, ScanChunk
from recon.inputs import fov_of, grid_for_dataset
from recon.metrics import quality_scores, registered_truth
from recon.options import ReconOptions


def run_file(path: str, coherence: PartialCoherence, args: argparse.Namespace) -> list[dict]:
    dataset = read_dataset(path)
    if dataset.ground_truth is None:
        raise SystemExit(f"{path} has no ground truth to score against")
    fov = fov_of(dataset.positions_nm)
    grid = grid_for_dataset(dataset, fov)
    rng = np.random.default_rng(args.seed)
    scans = {"full raster": np.arange(dataset.n_positions),
             f"random {args.sparse}": np.sort(rng.choice(dataset.n_positions, size=args.sparse, replace=False))}
    rows = []
    for scan_name, idx in scans.items():
        chunk = ScanChunk(dataset.patterns[idx], dataset.positions_nm[idx], grid)
        models = [("coherent", None, None), ("modes", coherence, None)]
        if args.mode_power is not None:
            models.append((f"modes {args.mode_power:g}", coherence, args.mode_power))
        for model, spread, power in models:
            options = ReconOptions.model_validate({**default_final_recon().model_dump(), **json.loads(args.options), "coherence": spread,
                                                   "coherence_mode_power": power})
            rec = Reconstructor(torch.as_tensor(dataset.probe), options, device="cpu", energy_ev=dataset.energy_ev, pixel_nm=grid.pixel_nm)
            wall, cpu = time.perf_counter(), time.process_time()
            (result,), (step,) = reconstruct_with_backoff(rec, [chunk], max_passes=args.passes, tolerance=0.0)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            passes = len(result.loss_history)
            scores = quality_scores(*registered_truth(result.potential, grid, dataset.ground_truth, fov))
            n_modes = 1 if rec.modes is None else len(rec.modes)
            row = {"file": Path(path).name, "scan": scan_name, "positions": len(idx), "model": model, "modes": n_modes,
                   "ssim": scores["ssim"], "pearson_r": scores["pearson_r"], "final_loss": result.loss_history[-1], "step": step,
                   "passes": passes, "wall_s": wall, "cpu_s": cpu, "wall_per_pass_s": wall / passes, "cpu_per_pass_s": cpu / passes}
            rows.append(row)
            print(f"{row['file']} {scan_name:<12} {model:<10} ({n_modes:>2} modes) SSIM {row['ssim']:.3f}  r {row['pearson_r']:.3f}  "
                  f"loss {row['final_loss']:.4e}  step {step:g}  per pass wall {row['wall_per_pass_s']:.3f} s cpu {row['cpu_per_pass_s']:.3f} s",
                  flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per scan kind and model with modes: mean coherent and modes scores, the paired difference's mean and standard deviation over files, time ratio."""
    out = []
    kinds = [(scan, model) for scan in dict.fromkeys(r["scan"] for r in rows) for model in dict.fromkeys(r["model"] for r in rows)
             if model != "coherent"]
    for scan, model in kinds:
        pairs = [(c, m) for c in rows for m in rows if c["scan"] == m["scan"] == scan and c["file"] == m["file"]
                 and c["model"] == "coherent" and m["model"] == model]
        entry = {"scan": scan, "model": model, "modes": pairs[0][1]["modes"], "files": len(pairs)}
        for key in ("ssim", "pearson_r"):
            diff = np.array([m[key] - c[key] for c, m in pairs])
            entry[f"{key}_coherent"] = float(np.mean([c[key] for c, _ in pairs]))
            entry[f"{key}_modes"] = float(np.mean([m[key] for _, m in pairs]))
            entry[f"{key}_diff_mean"] = float(diff.mean())
            entry[f"{key}_diff_sd"] = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
            entry[f"{key}_diff_positive"] = int((diff > 0).sum())
        entry["wall_per_pass_ratio"] = float(np.mean([m["wall_per_pass_s"] / c["wall_per_pass_s"] for c, m in pairs]))
        entry["cpu_per_pass_ratio"] = float(np.mean([m["cpu_per_pass_s"] / c["cpu_per_pass_s"] for c, m in pairs]))
        out.append(entry)
        print(f"{scan}, {model} ({entry['modes']}) vs coherent: {len(pairs)} files; SSIM {entry['ssim_coherent']:.3f} -> {entry['ssim_modes']:.3f} (paired diff "
              f"{entry['ssim_diff_mean']:+.3f} sd {entry['ssim_diff_sd']:.3f}, {entry['ssim_diff_positive']}/{len(pairs)} up); r "
              f"{entry['pearson_r_coherent']:.3f} -> {entry['pearson_r_modes']:.3f} ({entry['pearson_r_diff_mean']:+.3f} sd "
              f"{entry['pearson_r_diff_sd']:.3f}); time per pass x{entry['wall_per_pass_ratio']:.1f} wall, x{entry['cpu_per_pass_ratio']:.1f} cpu",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="partially coherent dense-raster dataset files with ground truth")
    ap.add_argument("--summary-of", nargs="+", help="no runs: print the paired summary of the rows of these earlier --json outputs together")
    ap.add_argument("--focal-spread-nm", type=float, default=0.0, help="the focal spread the files were simulated with (1 sigma, nm)")
    ap.add_argument("--source-size-nm", type=float, default=0.0, help="the source size they were simulated with (1 sigma per axis, nm)")
    ap.add_argument("--nodes", type=int, default=3, help="Gauss-Hermite nodes per spread of the reconstruction's modes")
    ap.add_argument("--sparse", type=int, default=125, help="positions of the sparse scan (seeded random subset; 125 = 125 per nm^2 on 1 x 1 nm)")
    ap.add_argument("--mode-power", type=float, default=None,
                    help="also reconstruct with the fewest orthogonal modes holding this power fraction (coherence_mode_power)")
    ap.add_argument("--options", default="{}", help="ReconOptions fields over the final recipe, JSON (e.g. '{\"loss\": \"intensity\", \"step_size\": 100}')")
    ap.add_argument("--passes", type=int, default=60, help="passes of every reconstruction")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sparse subsets")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--json", default="bench/out/probe_modes.json")
    args = ap.parse_args()
    if args.summary_of:
        summary([row for path in args.summary_of for row in json.loads(Path(path).read_text())["rows"]])
        return
    torch.set_num_threads(args.threads)
    coherence = PartialCoherence(focal_spread_nm=args.focal_spread_nm, source_size_nm=args.source_size_nm, nodes_per_axis=args.nodes)
    if coherence.is_coherent:
        raise SystemExit("give the spread the files were simulated with: --focal-spread-nm and/or --source-size-nm")
    rows = [row for path in args.files for row in run_file(path, coherence, args)]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "summary": summary(rows)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
