"""Reconstruction with scan errors: nominal positions, position correction, and the true positions.

Reads datasets made by ``ptychoscan simulate`` with scan errors (the patterns at the true
positions, the file keeping the nominal ones and the truth in ``acquisition_truth``), e.g.

    ptychoscan simulate --specimen mos2 --split test --n-datasets 3 --scan-shape 51 51 --step-nm 0.04 \\
        --jitter-nm 0.02 --scan-distortion 0.01 0 0 0.01 --device cpu --out bench/out/position_correction/data

For every dataset and scan (the full raster, a 500-position sparse grid and a seeded
500-position random subset; Poisson noise at ``--dose`` electrons per position) it
reconstructs with the evaluation's final reconstruction (``default_final_recon``, halving
the step on divergence) (a) at the nominal positions, (b) with position correction
(``ReconOptions.position_correction``, from the nominal positions), (c) at the true
positions (what correction could reach), and prints SSIM and Pearson r over the field
(``policy.scores.score_against_truth``, the evaluation's scorer) and the rms error of the
positions against the truth, nm, with the common translation removed (invisible in the
data), before and after correction, and the fitted scan matrix against the true one.

    PYTHONPATH=$PWD python bench/position_correction.py bench/out/position_correction/data/*.h5 --json bench/out/position_correction.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from policy.baselines import apply_dose
from policy.evaluation import default_final_recon
from policy.scores import score_against_truth
from recon.convergence import reconstruct_with_backoff
from recon.dataset import read_dataset
from recon.engine import Reconstructor, ScanChunk
from recon.inputs import fov_of, grid_for_dataset, select_subset
from recon.options import PositionCorrectionOptions


def rms_error_nm(positions: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square distance (nm) of positions from the truth after removing their mean offset (a common translation)."""
    d = np.asarray(positions, dtype=np.float64) - truth
    d = d - d.mean(axis=0)
    return float(np.sqrt((d**2).sum(axis=1).mean()))


def rms_local_error_nm(positions: np.ndarray, truth: np.ndarray, nominal: np.ndarray) -> float:
    """``rms_error_nm`` after also removing the best linear map of the nominal positions from the error (the jitter part alone)."""
    d = np.asarray(positions, dtype=np.float64) - truth
    d = d - d.mean(axis=0)
    a = nominal - nominal.mean(axis=0)
    d = d - a @ np.linalg.lstsq(a, d, rcond=None)[0]
    return float(np.sqrt((d**2).sum(axis=1).mean()))


def true_matrix(nominal: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The least-squares linear map I + D from the nominal to the true positions (both centred)."""
    a, b = nominal - nominal.mean(axis=0), truth - truth.mean(axis=0)
    return np.linalg.lstsq(a, b, rcond=None)[0].T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", help="dataset files with acquisition_truth (ptychoscan simulate --jitter-nm ...)")
    ap.add_argument("--scans", nargs="+", default=["all", "sparse-grid:500", "random:500"], help="position subsets (select_subset specs)")
    ap.add_argument("--dose", type=float, default=1e4, help="electrons per position (Poisson); 0: noise-free")
    ap.add_argument("--passes", type=int, default=60, help="passes of every reconstruction")
    ap.add_argument("--correction", default="{}", help="PositionCorrectionOptions as JSON")
    ap.add_argument("--skip-true", action="store_true", help="skip (c), the reconstruction at the true positions")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="bench/out/position_correction.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    correction = PositionCorrectionOptions.model_validate(json.loads(args.correction))
    final = default_final_recon().model_copy(update={"iterations": args.passes})
    corrected = final.model_copy(update={"position_correction": correction})
    rows = []
    print(f"correction: {correction.model_dump()}", flush=True)
    for path in args.datasets:
        dataset = read_dataset(path, with_acquisition_truth=True)
        truth_all = dataset.acquisition_truth.positions_nm
        fov = fov_of(dataset.positions_nm)
        grid = grid_for_dataset(dataset, fov)
        seed = int(dataset.specimen_seed or 0)
        for spec in args.scans:
            idx = select_subset(dataset, spec, seed=seed)
            rng = np.random.default_rng(seed)
            patterns = apply_dose(dataset.patterns[idx], args.dose or None, rng)
            nominal, truth = dataset.positions_nm[idx], truth_all[idx]
            runs = {"nominal": (final, ScanChunk(patterns, nominal, grid)), "corrected": (corrected, ScanChunk(patterns, nominal, grid))}
            if not args.skip_true:
                runs["true positions"] = (final, ScanChunk(patterns, truth, grid_for_dataset(dataset, fov_of(truth))))
            for name, (options, chunk) in runs.items():
                wall, cpu = time.perf_counter(), time.process_time()
                (result,), (step,) = reconstruct_with_backoff(Reconstructor(dataset.probe, options, device=args.device), [chunk],
                                                              max_passes=args.passes)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                scores = score_against_truth(result.potential, chunk.grid, dataset.ground_truth, fov)
                used = result.positions_nm if result.positions_nm is not None else chunk.positions_nm
                row = {"dataset": Path(path).name, "specimen_seed": seed, "scan": spec, "positions": len(idx), "run": name,
                       "ssim": scores["ssim"], "pearson_r": scores["pearson_r"], "nrmse": scores["nrmse"], "step": step,
                       "rms_before_nm": rms_error_nm(nominal, truth), "rms_after_nm": rms_error_nm(used, truth),
                       "local_rms_before_nm": rms_local_error_nm(nominal, truth, nominal), "local_rms_after_nm": rms_local_error_nm(used, truth, nominal),
                       "max_correction_nm": float(np.abs(np.linalg.norm(used - nominal, axis=1)).max()),
                       "true_matrix": true_matrix(nominal, truth).tolist(),
                       "fitted_matrix": None if result.scan_matrix is None else result.scan_matrix.tolist(),
                       "wall_s": wall, "cpu_s": cpu}
                rows.append(row)
                fitted = "" if result.scan_matrix is None else f", scan matrix {np.round(result.scan_matrix, 4).tolist()}"
                print(f"{row['dataset']} {spec:<16} {name:<15} SSIM {row['ssim']:.3f}  r {row['pearson_r']:.3f}  positions rms "
                      f"{row['rms_before_nm']:.4f} -> {row['rms_after_nm']:.4f} nm (less the linear part {row['local_rms_before_nm']:.4f} -> "
                      f"{row['local_rms_after_nm']:.4f}){fitted} (true {np.round(row['true_matrix'], 4).tolist()}); "
                      f"step {step:g}, wall {wall:.1f} s, cpu {cpu:.1f} s", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
