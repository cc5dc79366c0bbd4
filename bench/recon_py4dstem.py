"""Per-iteration speed and SSIM: our reconstructor vs py4DSTEM 0.14.18 SingleslicePtychography.

Same raster dataset (a ``ptychoscan simulate`` file with ground truth), same iteration
count, same threads. py4DSTEM needs numpy<2, so it runs in its own venv
(bench/.venvs/py4dstem, created on first use with pip) in a subprocess
(bench/py4dstem_worker.py): object_type "potential", fixed probe, gradient descent,
no filters or constraints. Both results are scored with recon.metrics over the
scanned region. Each side runs 1 and then N iterations from scratch; prints per
iteration the marginal wall and CPU time ((T_N - T_1) / (N - 1): the one-time setup,
e.g. our per-position shifted probes or py4DSTEM's reset, excluded) and the end-to-end
time (T_N / N), with the ratios.

``--refine-probe`` (data whose true probe is not the nominal one, e.g. bench/abtem_dataset.py
with aberrations): py4DSTEM refines its probe from the nominal one (``fix_probe=False``;
``--py4dstem-fit-aberrations`` adds its aberration fitting), and ours are the evaluation's
final reconstruction refining the aberrations (``recon.probe_refinement``) from the nominal
probe and from the retrieved aberrations (``recon.probe_retrieval``, timed apart), plus the
fixed nominal probe on both sides. ``--dose`` applies seeded Poisson noise (electrons per
position) to the patterns both sides get. Scores: SSIM and Pearson r over the scanned field
(``recon.metrics.registered_truth``). Usage:

    python bench/recon_py4dstem.py DATASET.h5 [--iterations 5] [--threads 2] [--py4dstem-step 0.5]
        [--refine-probe [--py4dstem-fit-aberrations]] [--dose 1e4] [--seed 0]
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

from policy.baselines import apply_dose
from policy.evaluation import default_final_recon
from recon.aberrations import ProbeAberrations
from recon.beam import probe_for
from recon.dataset import read_dataset
from recon.engine import Reconstructor
from recon.grid import ObjectGrid
from recon.inputs import chunk_from_dataset, fov_of
from recon.metrics import quality_scores, registered_truth
from recon.options import ReconOptions
from recon.probe_refinement import reconstruct_refining_aberrations
from recon.probe_retrieval import retrieve_aberrations

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


def scores(potential, grid, dataset) -> dict:
    """SSIM and Pearson r over the scanned field against the registered ground truth."""
    image, truth = registered_truth(potential, grid, dataset.ground_truth, fov_of(dataset.positions_nm))
    found = quality_scores(image, truth)
    return {"ssim": found["ssim"], "pearson_r": found["pearson_r"]}


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
    return {**_per_iteration(*timings, iterations), **scores(result.potential, result.grid, dataset), "options": overrides}


def ours_refining(dataset, iterations: int, device: str, start: ProbeAberrations | None) -> dict:
    """The evaluation's final reconstruction refining the aberrations from ``start`` (None: the nominal probe, not refined)."""
    chunk = chunk_from_dataset(dataset)
    options = default_final_recon()
    timings, result, found = [], None, None
    for n in (1, iterations):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if start is None:
            result = Reconstructor(probe_for(dataset), options.model_copy(update={"iterations": n}), device=device).reconstruct([chunk])[0]
        else:
            refined = reconstruct_refining_aberrations(chunk, start, energy_ev=dataset.energy_ev, convergence_mrad=dataset.convergence_mrad,
                                                       options=options, passes=n, device=device)
            result, found = refined.result, refined.aberrations
        timings += [time.perf_counter() - wall0, time.process_time() - cpu0]
    extra = {"refined": found.model_dump()} if found is not None else {}
    return {**_per_iteration(*timings, iterations), **scores(result.potential, result.grid, dataset), **extra}


def peer(dataset, iterations: int, threads: int, step: float, *, fix_probe: bool = True, fit_aberrations: bool = False) -> dict:
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
            iterations=iterations, step_size=step, step_ang=step_ang, fix_probe=int(fix_probe), fit_probe_aberrations=int(fit_aberrations),
            defocus_ang=10.0 * float(dataset.defocus_nm),  # the same nominal probe as ours (py4DSTEM's defocus is -C10, as ours and abTEM's)
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
    found = max((scores(sign * obj, grid, dataset) for sign in (1, -1)), key=lambda f: f["ssim"])
    timings = _per_iteration(float(r["wall1"]), float(r["cpu1"]), float(r["wall"]), float(r["cpu"]), iterations)
    return {**timings, **found, "step_size": step, "fix_probe": fix_probe, "fit_probe_aberrations": fit_aberrations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--py4dstem-step", type=float, default=0.5, help="py4DSTEM gradient-descent step_size (its default 0.5)")
    parser.add_argument("--refine-probe", action="store_true", help="both sides refine the probe from the nominal one (see above)")
    parser.add_argument("--py4dstem-fit-aberrations", action="store_true", help="with --refine-probe: py4DSTEM's fit_probe_aberrations")
    parser.add_argument("--dose", type=float, default=0.0, help="electrons per position, Poisson (0: the file's patterns as they are)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Poisson noise")
    args = parser.parse_args()
    if args.py4dstem_fit_aberrations and not args.refine_probe:
        parser.error("--py4dstem-fit-aberrations needs --refine-probe")
    if args.dose < 0 or args.iterations < 1:
        parser.error("--dose must be >= 0 and --iterations >= 1")
    torch.set_num_threads(args.threads)
    dataset = read_dataset(args.dataset)
    if dataset.grid_shape is None or dataset.ground_truth is None:
        raise SystemExit("the dataset must be a dense raster with ground truth (ptychoscan simulate)")
    if args.dose:
        dataset.patterns = apply_dose(dataset.patterns, args.dose, np.random.default_rng(args.seed))
    if args.refine_probe:
        refine(dataset, args)
        return
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


def _line(name: str, r: dict) -> str:
    return (f"{name}: per iteration wall {r['wall_marginal']:.3f} s cpu {r['cpu_marginal']:.3f} s, end-to-end wall/it "
            f"{r['wall_per_it']:.3f} s cpu/it {r['cpu_per_it']:.3f} s, setup {r['wall_setup']:.2f} s, SSIM {r['ssim']:.4f} r {r['pearson_r']:.4f}")


def refine(dataset, args: argparse.Namespace) -> None:
    """--refine-probe: both sides with the nominal probe fixed and refined, ours also from the retrieved aberrations."""
    nominal = ProbeAberrations(defocus_nm=dataset.defocus_nm)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    retrieved = retrieve_aberrations(chunk_from_dataset(dataset), energy_ev=dataset.energy_ev, convergence_mrad=dataset.convergence_mrad,
                                     start=nominal, device=args.device).aberrations
    retrieval = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0, "aberrations": retrieved.model_dump()}
    runs = {
        "py4DSTEM 0.14.18, nominal probe fixed": peer(dataset, args.iterations, args.threads, args.py4dstem_step),
        f"py4DSTEM 0.14.18, probe refined from nominal{' (+ aberration fit)' if args.py4dstem_fit_aberrations else ''}": peer(
            dataset, args.iterations, args.threads, args.py4dstem_step, fix_probe=False, fit_aberrations=args.py4dstem_fit_aberrations),
        "ours (final recon), nominal probe fixed": ours_refining(dataset, args.iterations, args.device, None),
        "ours (final recon), aberrations refined from nominal": ours_refining(dataset, args.iterations, args.device, nominal),
        "ours (final recon), aberrations refined from retrieved": ours_refining(dataset, args.iterations, args.device, retrieved),
    }
    print(f"dataset={args.dataset} positions={dataset.n_positions} iterations={args.iterations} threads={args.threads} dose={args.dose}")
    print(f"ours: retrieval {retrieved.summary()} in wall {retrieval['wall_s']:.1f} s, cpu {retrieval['cpu_s']:.1f} s (not in the rows)")
    for name, r in runs.items():
        print(_line(name, r) + (f"; ended at {ProbeAberrations(**r['refined']).summary()}" if "refined" in r else ""))
    print(json.dumps({"retrieval": retrieval, **runs}))


if __name__ == "__main__":
    main()
