"""Reconstruction quality against iterations, on sparse and dense scans of each specimen class.

Settles how many passes the evaluation's final reconstruction needs: every strategy is
scored after the same reconstruction, so it must be converged for sparse scans (few
position updates per pass) without overfitting dense, low-dose ones. For each dataset:
a coarse-to-fine sparse grid and uniform random positions at ``--density`` per nm^2 and
the full raster at ``--full-step-nm`` with the same total dose, patterns simulated on
demand from the ground truth (``policy.measurement``), Poisson noise at ``--dose`` per
sparse position. With ``--measurement raster`` the patterns are the file's own (e.g.
abTEM multislice, bench/abtem_dataset.py; ``RasterSource``): the sparse positions snap
to the nearest distinct raster points (``snap_to_unvisited`` in fov units, as the
evaluation does) and the full raster is the file's whole raster (``--full-step-nm`` is
unused). Each optimizer setting runs once per scan; SSIM, Pearson r and NRMSE over the
field are read after the passes in ``--marks`` (``Reconstructor``'s on_pass).

    PYTHONPATH=$PWD .venv/bin/python bench/recon_convergence.py out/data/val/flake_100000.h5 --json out/bench/conv.json
    PYTHONPATH=$PWD .venv/bin/python bench/recon_convergence.py out/data/abtem/mos2_abtem_51.h5 --measurement raster \
        --density 62.5 --settings gd50 adam0.01 --marks 5 10 20 40 60 --threads 1

Prints a table per dataset and scan, the wall and CPU time per position-pass, and the
ratio of the score at the last mark to its best along the way (1.0 = still improving
or flat at the end; < 1: overfitting, stop earlier), and the pass at which the
evaluation's stopping rule (``recon.convergence``: blocks of 5 passes until the loss falls
by < ``--tolerance`` over a block) would stop this run: exact for gradient descent, whose
blocks continue one another; Adam restarts its moments with each block there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from policy.baselines import apply_dose, candidate_raster, sparse_grid_coarse_to_fine, uniform_random
from policy.env import snap_to_unvisited
from policy.measurement import RasterSource, SimulatedSource
from recon.beam import probe_for
from recon.dataset import read_dataset
from recon.engine import Reconstructor, ScanChunk
from recon.inputs import fov_of, grid_for_dataset
from recon.metrics import quality_scores, registered_truth
from recon.options import ReconOptions

SETTINGS = {
    "gd50": {"optimizer": "gd", "step_size": 50.0},
    "gd200": {"optimizer": "gd", "step_size": 200.0},
    "gd500": {"optimizer": "gd", "step_size": 500.0},
    "gd50-precond": {"optimizer": "gd", "step_size": 50.0, "precondition": True},
    "adam0.01": {"optimizer": "adam", "step_size": 0.01},
    "gd50-m0.9": {"optimizer": "gd", "step_size": 50.0, "momentum": 0.9},
    "gd25-m0.9": {"optimizer": "gd", "step_size": 25.0, "momentum": 0.9},
    "gd50-m0.8": {"optimizer": "gd", "step_size": 50.0, "momentum": 0.8},
    "gd25-m0.95": {"optimizer": "gd", "step_size": 25.0, "momentum": 0.95},
    "gd20-m0.95": {"optimizer": "gd", "step_size": 20.0, "momentum": 0.95},
    "gd35-m0.9": {"optimizer": "gd", "step_size": 35.0, "momentum": 0.9},
}
# full batch, step = this fraction of a Newton step (the inverse illumination per position, precondition="absolute"), Nesterov 0.9
SETTINGS.update(
    {f"fb-abs{step:g}-m0.9": {"optimizer": "gd", "step_size": step, "momentum": 0.9, "precondition": "absolute", "batch_positions": None}
     for step in (0.0625, 0.125, 0.25, 0.5, 1.0, 2.0)}
)


def stopping_pass(losses: list[float], block: int = 5, tolerance: float = 2e-3) -> int:
    """Pass after which ``recon.convergence.reconstruct_until_converged`` stops, from a run's loss per pass."""
    done = min(block, len(losses))
    while done < len(losses):
        before, n = losses[done - 1], min(block, len(losses) - done)
        after = losses[done + n - 1]
        done += n
        if not before - after > tolerance * abs(after):
            break
    return done


def raster_scans(ds, fov, n: int, dose: float, seed: int = 0) -> dict[str, tuple[np.ndarray, float]]:
    """Indices into the file's raster: sparse grid and random snapped to distinct raster points, and the whole raster."""
    origin, size = np.asarray(fov[:2]), np.maximum(np.asarray(fov[2:]), 1e-12)
    unit = lambda p: (np.asarray(p) - origin) / size  # noqa: E731
    raster = unit(ds.positions_nm)
    snap = lambda p: snap_to_unvisited(unit(p), raster, np.zeros(len(raster), bool))  # noqa: E731
    everything = np.arange(ds.n_positions)
    return {
        f"sparse-grid {n}": (snap(sparse_grid_coarse_to_fine(fov, n)), dose),
        f"random {n}": (snap(uniform_random(fov, n, seed + 1)), dose),
        f"full raster {len(everything)} (equal dose)": (everything, dose * n / len(everything)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--density", type=float, default=125.0, help="positions per nm^2 of the sparse scans")
    ap.add_argument("--full-step-nm", type=float, default=0.04, help="step of the full raster (simulate only)")
    ap.add_argument("--measurement", choices=("simulate", "raster"), default="simulate",
                    help="simulate patterns from the ground truth on demand, or use the file's raster patterns as they are")
    ap.add_argument("--tolerance", type=float, default=2e-3, help="the stopping rule's relative loss fall over 5 passes (reported only)")
    ap.add_argument("--dose", type=float, default=1e4, help="electrons per sparse position")
    ap.add_argument("--marks", type=int, nargs="+", default=[5, 10, 20, 30, 50, 100])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--scans", nargs="+", choices=("sparse-grid", "random", "full"), default=["sparse-grid", "random", "full"],
                    help="which scans to reconstruct (simulate only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="noise draw (and random positions: seed + 1)")
    ap.add_argument("--json", default="bench/out/recon_convergence.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for path in args.datasets:
        ds = read_dataset(path)
        fov = fov_of(ds.positions_nm)
        grid = grid_for_dataset(ds, fov)
        n = round(args.density * fov[2] * fov[3])
        rng = np.random.default_rng(args.seed)
        if args.measurement == "raster":
            raster = RasterSource(ds)
            measured = {name: (raster.candidates_nm[idx], raster.noise_free(idx), dose)
                        for name, (idx, dose) in raster_scans(ds, fov, n, args.dose, args.seed).items()}
        else:
            source = SimulatedSource(ds, fov, 0.02)
            full = candidate_raster(fov, args.full_step_nm)
            scans = {
                f"sparse-grid {n}": (sparse_grid_coarse_to_fine(fov, n), args.dose),
                f"random {n}": (uniform_random(fov, n, args.seed + 1), args.dose),
                f"full raster {len(full)} (equal dose)": (full, args.dose * n / len(full)),
            }
            measured = {name: (positions, source.patterns_at(positions), dose) for name, (positions, dose) in scans.items()
                        if name.split()[0] in args.scans}
        for scan_name, (positions, noise_free, dose) in measured.items():
            patterns = apply_dose(noise_free, dose, rng)
            for setting in args.settings:
                options = ReconOptions(**SETTINGS[setting], iterations=max(args.marks))
                rec = Reconstructor(probe_for(ds), options, device="cpu")
                curve: dict[int, dict] = {}

                def on_pass(i, potentials, curve=curve, grid=grid, truth_phase=ds.ground_truth, fov=fov):
                    if i in args.marks:
                        image, truth = registered_truth(potentials[0].detach().cpu().clone(), grid, truth_phase, fov)
                        curve[i] = quality_scores(image, truth)

                wall, cpu = time.perf_counter(), time.process_time()
                (res,) = rec.reconstruct([ScanChunk(patterns, positions, grid)], on_pass=on_pass)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                r_last = curve[max(args.marks)]["pearson_r"]
                r_best = max(c["pearson_r"] for c in curve.values())
                stop = stopping_pass(res.loss_history, tolerance=args.tolerance)
                row = {"dataset": Path(path).stem, "kind": ds.specimen_kind, "measurement": args.measurement, "scan": scan_name,
                       "positions": len(positions), "dose_per_position": dose, "setting": setting, "wall_s": wall,
                       "cpu_s": cpu, "us_per_position_pass": 1e6 * wall / (len(positions) * max(args.marks)),
                       "r_last_over_best": r_last / r_best, "stopping_rule_pass": stop, "loss_history": res.loss_history,
                       "curve": {str(k): v for k, v in curve.items()}}
                results.append(row)
                marks = "  ".join(f"{k}:{c['ssim']:.3f}/{c['pearson_r']:.3f}" for k, c in sorted(curve.items()))
                print(f"{row['dataset']:<16} {scan_name:<30} {setting:<13} SSIM/r {marks}  r last/best {row['r_last_over_best']:.3f}  stop rule at {stop}  "
                      f"wall {wall:.1f} s cpu {cpu:.1f} s ({row['us_per_position_pass']:.0f} us per position-pass)", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(out)


if __name__ == "__main__":
    main()
