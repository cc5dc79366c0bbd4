"""Reconstruction with an unknown aberrated probe: the nominal probe, the retrieved aberrations, the true probe.

Simulates (our simulator, ``sim_microscope``) MoS2 over a 2 x 2 nm raster at 60 kV,
33 mrad, 64 x 64 patterns (2x binned, 1.68 mrad/px) with a true probe that is not the
nominal in-focus one (default: 4 nm defocus, 2.5 nm two-fold astigmatism at 30 deg,
Cs 2 um); the file keeps the nominal beam and the truth apart (``acquisition_truth``),
and the dataset is cached under ``--out-dir``. For the full raster and a seeded random
``--sparse``-position subset of it (Poisson noise at ``--dose`` electrons per position):

- retrieves the aberrations from that scan's patterns and nominal positions only
  (``recon.probe_retrieval.retrieve_aberrations``, no truth), timed;
- with ``--jitter-nm`` / ``--scan-distortion`` the patterns are at the true positions,
  everything above uses the nominal ones, and a last row reconstructs with the true
  probe at the true positions (what position correction could reach);
- reconstructs with (a) the nominal probe (what the file says), (b) the probe of the
  retrieved aberrations, (c) the true probe, with the evaluation's final reconstruction
  (``policy.evaluation.default_final_recon``: full-batch, preconditioned, Nesterov, 60
  passes, halving the step on divergence);
- (d) reconstructs refining the aberrations with the object
  (``recon.probe_refinement.reconstruct_refining_aberrations``, same options and
  passes), from the retrieved ones and from the nominal ones;
- prints SSIM and Pearson r over the scanned field against the ground truth, and the
  recovered (retrieved, refined) aberrations against the true ones.

``--dataset FILE`` takes an existing dense-raster file with ground truth and acquisition
truth instead (e.g. abTEM's, bench/abtem_dataset.py with an aberrated probe: the figures
then do not rest on our forward model); the simulation options are then ignored.

    PYTHONPATH=$PWD python bench/probe_retrieval.py --json bench/out/probe_retrieval.json
    PYTHONPATH=$PWD python bench/probe_retrieval.py --defocus-nm -6 --astigmatism-nm 1.5 --astigmatism-angle-deg 120 --cs-um 0 \
        --sparse 250 --json bench/out/probe_retrieval_b.json
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
from recon.aberrations import ProbeAberrations
from recon.convergence import reconstruct_with_backoff
from recon.dataset import read_dataset, write_dataset
from recon.engine import Reconstructor, ScanChunk
from recon.inputs import fov_of, grid_for_dataset
from recon.metrics import quality_scores, registered_truth
from recon.probe_refinement import ProbeRefinementOptions, reconstruct_refining_aberrations
from recon.probe_retrieval import RetrievalOptions, retrieve_aberrations
from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset
from sim_microscope.scan_errors import ScanErrors


def dataset_path(args: argparse.Namespace) -> Path:
    name = (f"mos2_{args.seed}_{args.scan_shape[0]}x{args.scan_shape[1]}_df{args.defocus_nm:g}_a{args.astigmatism_nm:g}"
            f"_{args.astigmatism_angle_deg:g}deg_cs{args.cs_um:g}")
    if scan_errors(args) is not None:
        name += f"_jitter{args.jitter_nm:g}_dist{'_'.join(f'{v:g}' for v in args.scan_distortion)}"
    return Path(args.out_dir) / f"{name}.h5"


def scan_errors(args: argparse.Namespace) -> ScanErrors | None:
    errors = ScanErrors(jitter_nm=args.jitter_nm, distortion=tuple(args.scan_distortion))
    return None if errors.is_zero else errors


def load_or_simulate(args: argparse.Namespace):
    """The aberrated dataset (with its acquisition truth), simulated once and cached."""
    if args.dataset:
        dataset = read_dataset(args.dataset, with_acquisition_truth=True)
        if dataset.acquisition_truth is None or dataset.ground_truth is None:
            raise SystemExit(f"{args.dataset} has no acquisition truth or no ground truth to score against")
        return dataset
    path = dataset_path(args)
    if not path.exists():
        truth = ProbeAberrations(defocus_nm=args.defocus_nm, astigmatism_nm=args.astigmatism_nm,
                                 astigmatism_angle_deg=args.astigmatism_angle_deg, cs_um=args.cs_um)
        config = SimulationConfig(scan_shape=tuple(args.scan_shape), step_nm=args.step_nm, true_probe=truth, scan_errors=scan_errors(args))
        wall, cpu = time.perf_counter(), time.process_time()
        dataset = simulate_raster_dataset(config, args.seed, progress=False, device="cpu")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_dataset(path, dataset)
        print(f"simulated {path} ({dataset.n_positions} positions): wall {time.perf_counter() - wall:.0f} s, "
              f"cpu {time.process_time() - cpu:.0f} s", flush=True)
    return read_dataset(path, with_acquisition_truth=True)


def score(potential, grid, dataset, fov) -> dict:
    image, truth = registered_truth(potential, grid, dataset.ground_truth, fov)
    return quality_scores(image, truth)


def errors(found: ProbeAberrations, true: ProbeAberrations) -> dict:
    return {"defocus_nm": found.defocus_nm - true.defocus_nm, "astigmatism_nm": found.astigmatism_error_nm(true),
            "cs_um": found.cs_um - true.cs_um}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=None, help="an existing file with acquisition and ground truth instead of simulating")
    ap.add_argument("--out-dir", default="bench/out/probe_retrieval", help="where the simulated dataset is cached")
    ap.add_argument("--seed", type=int, default=200000, help="specimen seed (the test split's first)")
    ap.add_argument("--scan-shape", type=int, nargs=2, default=[51, 51])
    ap.add_argument("--step-nm", type=float, default=0.04)
    ap.add_argument("--defocus-nm", type=float, default=4.0)
    ap.add_argument("--astigmatism-nm", type=float, default=2.5)
    ap.add_argument("--astigmatism-angle-deg", type=float, default=30.0)
    ap.add_argument("--cs-um", type=float, default=2.0)
    ap.add_argument("--jitter-nm", type=float, default=0.0, help="scan errors: Gaussian position jitter per axis, nm")
    ap.add_argument("--scan-distortion", type=float, nargs=4, default=[0.0, 0.0, 0.0, 0.0], metavar=("DXX", "DXY", "DYX", "DYY"),
                    help="scan errors: linear distortion (true = centre + (I + D)(nominal - centre))")
    ap.add_argument("--sparse", type=int, default=500, help="positions of the sparse scan (a seeded random subset of the raster)")
    ap.add_argument("--dose", type=float, default=1e4, help="electrons per position (Poisson); 0: noise-free")
    ap.add_argument("--passes", type=int, default=60, help="passes of the final reconstructions")
    ap.add_argument("--retrieval", default="{}", help="RetrievalOptions as JSON, e.g. '{\"max_positions\": 128}'")
    ap.add_argument("--refinement", default="{}", help="ProbeRefinementOptions as JSON; 'off' skips (d)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine 2 threads spin against other jobs)")
    ap.add_argument("--json", default="bench/out/probe_retrieval.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_or_simulate(args)
    true = ProbeAberrations(**dataset.acquisition_truth.aberrations)
    fov = fov_of(dataset.positions_nm)
    grid = grid_for_dataset(dataset, fov)
    rng = np.random.default_rng(args.seed)
    scans = {
        f"full raster {dataset.n_positions}": np.arange(dataset.n_positions),
        f"random {args.sparse}": np.sort(rng.choice(dataset.n_positions, size=args.sparse, replace=False)),
    }
    retrieval_options = RetrievalOptions.model_validate(json.loads(args.retrieval))
    final = default_final_recon()
    rows = []
    print(f"truth: {true.summary()}; nominal: {ProbeAberrations(defocus_nm=dataset.defocus_nm).summary()}", flush=True)
    for scan_name, idx in scans.items():
        patterns = apply_dose(dataset.patterns[idx], args.dose or None, rng)
        chunk = ScanChunk(patterns, dataset.positions_nm[idx], grid)  # nominal positions: what a microscope reports
        found = retrieve_aberrations(chunk, energy_ev=dataset.energy_ev, convergence_mrad=dataset.convergence_mrad,
                                     start=ProbeAberrations(defocus_nm=dataset.defocus_nm), options=retrieval_options, device="cpu")
        err = errors(found.aberrations, true)
        print(f"{scan_name}: retrieved {found.aberrations.summary()} from {found.positions_used} positions, "
              f"{len(found.evaluations)} short reconstructions; error defocus {err['defocus_nm']:+.2f} nm, astigmatism "
              f"{err['astigmatism_nm']:.2f} nm, Cs {err['cs_um']:+.2f} um; wall {found.wall_s:.1f} s, cpu {found.cpu_s:.1f} s", flush=True)
        probes = {
            "nominal": torch.as_tensor(dataset.probe),
            "retrieved": found.aberrations.reconstruction_probe(dataset.energy_ev, dataset.convergence_mrad, dataset.detector_pixels,
                                                                dataset.detector_pixel_mrad),
            "true": torch.as_tensor(dataset.acquisition_truth.probe),
        }
        if scan_errors(args) is not None:
            probes["true, true positions"] = probes["true"]
        for probe_name, probe in probes.items():
            wall, cpu = time.perf_counter(), time.process_time()
            at = chunk
            if probe_name == "true, true positions":  # a grid covering the true positions (they reach past the nominal ones)
                true_positions = dataset.acquisition_truth.positions_nm[idx]
                at = ScanChunk(patterns, true_positions, grid_for_dataset(dataset, fov_of(true_positions)))
            (result,), (step,) = reconstruct_with_backoff(Reconstructor(probe, final, device="cpu"), [at], max_passes=args.passes)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            scores = score(result.potential, at.grid, dataset, fov)
            row = {"scan": scan_name, "positions": len(idx), "dose": args.dose, "probe": probe_name, "ssim": scores["ssim"],
                   "pearson_r": scores["pearson_r"], "nrmse": scores["nrmse"], "step": step, "recon_wall_s": wall, "recon_cpu_s": cpu,
                   "retrieved": found.aberrations.model_dump(), "true": true.model_dump(), "errors": err,
                   "retrieval_wall_s": found.wall_s, "retrieval_cpu_s": found.cpu_s, "retrieval_evaluations": len(found.evaluations)}
            rows.append(row)
            print(f"  {probe_name:<20} SSIM {scores['ssim']:.3f}  r {scores['pearson_r']:.3f}  (step {step:g}; wall {wall:.1f} s, "
                  f"cpu {cpu:.1f} s)", flush=True)
        if args.refinement == "off":
            continue
        refinement = ProbeRefinementOptions.model_validate(json.loads(args.refinement))
        for start_name, start in (("retrieved", found.aberrations), ("nominal", ProbeAberrations(defocus_nm=dataset.defocus_nm))):
            cpu = time.process_time()
            refined = reconstruct_refining_aberrations(chunk, start, energy_ev=dataset.energy_ev, convergence_mrad=dataset.convergence_mrad,
                                                       options=final, refinement=refinement, passes=args.passes, device="cpu")
            cpu = time.process_time() - cpu
            scores = score(refined.result.potential, grid, dataset, fov)
            err = errors(refined.aberrations, true)
            rows.append({"scan": scan_name, "positions": len(idx), "dose": args.dose, "probe": f"{start_name} + refined",
                         "ssim": scores["ssim"], "pearson_r": scores["pearson_r"], "nrmse": scores["nrmse"], "recon_wall_s": refined.wall_s,
                         "recon_cpu_s": cpu, "refined": refined.aberrations.model_dump(), "true": true.model_dump(), "errors": err,
                         "history": [h.model_dump() for h in refined.history]})
            print(f"  {start_name + ' + refined':<20} SSIM {scores['ssim']:.3f}  r {scores['pearson_r']:.3f}  ended at "
                  f"{refined.aberrations.summary()} (error defocus {err['defocus_nm']:+.2f} nm, astigmatism {err['astigmatism_nm']:.2f} nm, "
                  f"Cs {err['cs_um']:+.2f} um; wall {refined.wall_s:.1f} s, cpu {cpu:.1f} s)", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
