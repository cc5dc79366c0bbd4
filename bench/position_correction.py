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

Such a file holds one draw of the jitter (``--scan-error-seed``, default 0). ``--scan-error-seeds 1 2``
runs the same table on other draws instead: each file's patterns are simulated again at the
true positions of each draw (``bench/scan_error_draws.py``; same specimen, raster and beam, the
scan errors ``--jitter-nm`` and ``--scan-distortion``, which must be the file's: it is checked).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scan_error_draws import check_file, redraw

from policy.baselines import apply_dose
from policy.evaluation import default_final_recon
from policy.scores import score_against_truth
from recon.convergence import reconstruct_with_backoff
from recon.dataset import read_dataset
from recon.engine import Reconstructor, ScanChunk
from recon.inputs import fov_of, grid_for_dataset, select_subset
from recon.options import PositionCorrectionOptions
from sim_microscope.scan_errors import ScanErrors


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
    ap.add_argument("--scan-error-seeds", type=int, nargs="+", default=None,
                    help="jitter seeds to simulate the files' patterns at instead of the files' own draw (default: the files' patterns)")
    ap.add_argument("--jitter-nm", type=float, default=0.02, help="--scan-error-seeds: the files' jitter, nm per axis")
    ap.add_argument("--scan-distortion", type=float, nargs=4, default=[0.01, 0.0, 0.0, 0.01], metavar=("DXX", "DXY", "DYX", "DYY"),
                    help="--scan-error-seeds: the files' linear scan distortion")
    ap.add_argument("--file-scan-error-seed", type=int, default=0, help="--scan-error-seeds: the seed the files were made with")
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
        seed = int(dataset.specimen_seed or 0)
        subsets = {spec: select_subset(dataset, spec, seed=seed) for spec in args.scans}
        if args.scan_error_seeds:
            errors = ScanErrors(jitter_nm=args.jitter_nm, distortion=tuple(args.scan_distortion), seed=args.file_scan_error_seed)
            check_file(dataset, errors, device=args.device)
        for draw in args.scan_error_seeds or [None]:
            clean = dataset.patterns
            if draw is not None:
                union = np.unique(np.concatenate(list(subsets.values())))
                clean, truth_all = draw_patterns(dataset, errors.model_copy(update={"seed": draw}), union, args.device)
            for spec, idx in subsets.items():
                rows += correction_rows(args, dataset, path, seed, spec, idx, clean, truth_all, draw, final, corrected)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {out}")


def draw_patterns(dataset, errors: ScanErrors, idx: np.ndarray, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(patterns, true positions nm) of every raster position, simulated with scan errors ``errors`` for positions ``idx``
    (zero / NaN elsewhere)."""
    wall, cpu = time.perf_counter(), time.process_time()
    patterns, truth = redraw(dataset, errors, idx, device=device)
    clean = np.zeros(dataset.patterns.shape, np.float32)
    truth_all = np.full(dataset.positions_nm.shape, np.nan)
    clean[idx], truth_all[idx] = patterns, truth
    print(f"scan-error seed {errors.seed}: {len(idx)} patterns simulated, wall {time.perf_counter() - wall:.1f} s, cpu {time.process_time() - cpu:.1f} s",
          flush=True)
    return clean, truth_all


def correction_rows(args, dataset, path, seed: int, spec: str, idx: np.ndarray, clean: np.ndarray, truth_all: np.ndarray,
                    draw: int | None, final, corrected) -> list[dict]:
    """Rows of one scan ``spec`` (positions ``idx``) of one file at one scan-error draw (None: the file's own)."""
    rows = []
    fov = fov_of(dataset.positions_nm)
    grid = grid_for_dataset(dataset, fov)
    rng = np.random.default_rng(seed)
    patterns = apply_dose(clean[idx], args.dose or None, rng)
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
        row = {"dataset": Path(path).name, "specimen_seed": seed, "scan_error_seed": draw, "scan": spec, "positions": len(idx),
               "run": name, "ssim": scores["ssim"], "pearson_r": scores["pearson_r"], "nrmse": scores["nrmse"], "step": step,
               "rms_before_nm": rms_error_nm(nominal, truth), "rms_after_nm": rms_error_nm(used, truth),
               "local_rms_before_nm": rms_local_error_nm(nominal, truth, nominal), "local_rms_after_nm": rms_local_error_nm(used, truth, nominal),
               "max_correction_nm": float(np.abs(np.linalg.norm(used - nominal, axis=1)).max()),
               "true_matrix": true_matrix(nominal, truth).tolist(),
               "fitted_matrix": None if result.scan_matrix is None else result.scan_matrix.tolist(),
               "wall_s": wall, "cpu_s": cpu}
        rows.append(row)
        fitted = "" if result.scan_matrix is None else f", scan matrix {np.round(result.scan_matrix, 4).tolist()}"
        drawn = "" if draw is None else f"scan-error seed {draw} "
        print(f"{row['dataset']} {drawn}{spec:<16} {name:<15} SSIM {row['ssim']:.3f}  r {row['pearson_r']:.3f}  positions rms "
              f"{row['rms_before_nm']:.4f} -> {row['rms_after_nm']:.4f} nm (less the linear part {row['local_rms_before_nm']:.4f} -> "
              f"{row['local_rms_after_nm']:.4f}){fitted} (true {np.round(row['true_matrix'], 4).tolist()}); "
              f"step {step:g}, wall {wall:.1f} s, cpu {cpu:.1f} s", flush=True)
    return rows


if __name__ == "__main__":
    main()
