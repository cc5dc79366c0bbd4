"""Per-iteration speed and SSIM: our reconstructor vs py4DSTEM 0.14.18 SingleslicePtychography.

Same raster dataset (a ``ptychoscan simulate`` file with ground truth), same iteration
count, same threads. py4DSTEM needs numpy<2, so it runs in its own venv
(bench/.venvs/py4dstem, created on first use with pip) in a subprocess
(bench/py4dstem_worker.py): object_type "potential", fixed probe, gradient descent,
no filters or constraints. Both results are scored with recon.metrics over the
scanned region. Each side runs 1 and then N iterations from scratch; prints per
iteration the marginal wall and CPU time ((T_N - T_1) / (N - 1): the one-time setup,
e.g. our per-position shifted probes or py4DSTEM's reset, excluded) and the end-to-end
time (T_N / N), with the ratios. Usage:

    python bench/recon_py4dstem.py DATASET.h5 [--iterations 5] [--threads 2] [--py4dstem-step 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peer_venv import ensure_peer

from recon.beam import probe_for
from recon.dataset import read_dataset
from recon.engine import Reconstructor
from recon.grid import ObjectGrid
from recon.inputs import chunk_from_dataset, fov_of
from recon.metrics import ssim_against_ground_truth
from recon.options import ReconOptions

HERE = Path(__file__).resolve().parent


def ensure_venv() -> Path:
    """The py4DSTEM venv's python (bench/peer_venv.py builds it on first use)."""
    return ensure_peer("py4dstem")


def _per_iteration(wall1: float, cpu1: float, wall: float, cpu: float, iterations: int) -> dict:
    """Timings of a 1-iteration and an N-iteration run -> end-to-end per iteration and marginal (setup excluded) per iteration."""
    extra = max(iterations - 1, 1)
    return {
        "wall_per_it": wall / iterations, "cpu_per_it": cpu / iterations,
        "wall_marginal": (wall - wall1) / extra if iterations > 1 else wall, "cpu_marginal": (cpu - cpu1) / extra if iterations > 1 else cpu,
        "wall_setup": wall1 - (wall - wall1) / extra if iterations > 1 else 0.0,
    }


def ours(dataset, iterations: int, device: str, **overrides) -> dict:
    chunk = chunk_from_dataset(dataset)
    recon = Reconstructor(probe_for(dataset), ReconOptions(iterations=iterations, **overrides), device=device)
    recon.reconstruct([chunk_from_dataset(dataset, np.arange(min(64, dataset.n_positions)))])  # warm-up
    timings = []
    for n in (1, iterations):  # as for py4DSTEM: a one-iteration run, then the run that is kept
        recon.options.iterations = n
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = recon.reconstruct([chunk])[0]
        timings += [time.perf_counter() - wall0, time.process_time() - cpu0]
    score = ssim_against_ground_truth(result.potential, result.grid, dataset.ground_truth, fov_of(dataset.positions_nm))
    return {**_per_iteration(*timings, iterations), "ssim": score, "options": overrides}


def peer(dataset, iterations: int, threads: int, step: float) -> dict:
    python = ensure_venv()
    ny, nx = dataset.grid_shape
    k = dataset.detector_pixels
    pos = dataset.positions_nm
    step_ang = float(np.linalg.norm(pos[1] - pos[0])) * 10.0
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(
            inp, patterns=dataset.patterns.reshape(ny, nx, k, k), positions_ang=(pos[:, ::-1] - pos.min(axis=0)[::-1]) * 10.0,
            energy_ev=dataset.energy_ev, semiangle_mrad=dataset.convergence_mrad, angular_sampling_mrad=dataset.detector_pixel_mrad,
            iterations=iterations, step_size=step, step_ang=step_ang,
        )
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
        env.pop("PYTHONPATH", None)
        subprocess.run([str(python), str(HERE / "py4dstem_worker.py"), str(inp), str(out)], check=True, env=env, cwd=tmp)
        r = dict(np.load(out))
    obj = r["object"]  # indexed [row-axis (our y), col-axis (our x)]
    pixel_nm = float(r["sampling"][0]) / 10.0
    centres = r["positions_px_internal"]  # probe centres in object pixels, (row, col)
    origin = (float(np.mean(pos[:, 0] - centres[:, 1] * pixel_nm)), float(np.mean(pos[:, 1] - centres[:, 0] * pixel_nm)))
    grid = ObjectGrid(origin, obj.shape, pixel_nm)
    region = fov_of(pos)
    score = max(ssim_against_ground_truth(obj, grid, dataset.ground_truth, region), ssim_against_ground_truth(-obj, grid, dataset.ground_truth, region))
    timings = _per_iteration(float(r["wall1"]), float(r["cpu1"]), float(r["wall"]), float(r["cpu"]), iterations)
    return {**timings, "ssim": score, "step_size": step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--py4dstem-step", type=float, default=0.5, help="py4DSTEM gradient-descent step_size (its default 0.5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = read_dataset(args.dataset)
    if dataset.grid_shape is None or dataset.ground_truth is None:
        raise SystemExit("the dataset must be a dense raster with ground truth (ptychoscan simulate)")
    runs = {
        "ours (default: gd 50, amplitude, mini-batch 32, binned model)": ours(dataset, args.iterations, args.device),
        "ours (default but unbinned model, like py4DSTEM)": ours(dataset, args.iterations, args.device, detector_binning=1),
        "ours (paper: gd 525, intensity, full batch, unbinned)": ours(
            dataset, args.iterations, args.device, detector_binning=1, loss="intensity", optimizer="gd", batch_positions=None
        ),
    }
    theirs = peer(dataset, args.iterations, args.threads, args.py4dstem_step)
    print(f"dataset={args.dataset} positions={dataset.n_positions} iterations={args.iterations} threads={args.threads}")
    print("per iteration = marginal cost of one more iteration (runs of 1 and N iterations; setup excluded); "
          "end-to-end = (setup + N iterations) / N")

    def line(name: str, r: dict) -> str:
        return (f"{name}: per iteration wall {r['wall_marginal']:.3f} s cpu {r['cpu_marginal']:.3f} s, "
                f"end-to-end wall/it {r['wall_per_it']:.3f} s cpu/it {r['cpu_per_it']:.3f} s, setup {r['wall_setup']:.2f} s, ssim {r['ssim']:.4f}")

    print(line("py4DSTEM 0.14.18", theirs))
    for name, r in runs.items():
        print(line(name, r))
        print(f"    speed-up per iteration: wall {theirs['wall_marginal'] / r['wall_marginal']:.2f}x cpu {theirs['cpu_marginal'] / r['cpu_marginal']:.2f}x; "
              f"end-to-end: wall {theirs['wall_per_it'] / r['wall_per_it']:.2f}x cpu {theirs['cpu_per_it'] / r['cpu_per_it']:.2f}x; "
              f"ssim {r['ssim'] - theirs['ssim']:+.4f}")
    print(json.dumps({"py4dstem": theirs, **runs}))


if __name__ == "__main__":
    main()
