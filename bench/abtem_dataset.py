"""A dense-raster MoS2 dataset simulated by abTEM 1.0.11, in the project's dataset format.

Same specimen, beam and detector as bench/fidelity_abtem.py (its ``specimen_and_positions``
and worker bench/_abtem_worker.py, abTEM in its own venv bench/.venvs/abtem): a seeded
MoS2 monolayer of side lambda / 0.84 mrad (57.9 A, periodic), 60 kV, 33 mrad, in focus,
multislice (Lobato, 1 A slices, 768^2 grid: 0.075 A), 128 px at 0.84 mrad cropped from abTEM's
patterns with the zero frequency moved half a raw pixel (so that it falls at the centre
of binned pixel (K//2, K//2), as in ``ptychoscan simulate``), binned 2x to 64 px at
1.68 mrad and normalised to sum 1 (Poisson counts with ``--dose``). The raster
(row-major, (x, y) in nm) sits in the middle of the cell.

Ground truth: sigma times abTEM's potential summed over its slices (rad, positive on
atoms), transposed from abTEM's (x, y) array order to [y, x], pixel [0, 0] at the cell's
origin (0, 0) nm: the frame of the positions. The file is read by ``ptychoscan
reconstruct`` and bench/recon_py4dstem.py.

An aberrated probe (``--defocus-nm``, ``--astigmatism-nm``, ``--astigmatism-angle-deg``,
``--cs-um``): abTEM simulates with ``abtem.Probe(defocus=, C12=, phi12=, Cs=)`` (its own
parametrisation, ``abtem_aberrations``), the file's beam stays nominal (in focus, its
probe too) and the true values go to the file's ``acquisition_truth`` (with our probe of
them on the reconstruction grid), as ``ptychoscan simulate`` does with ``true_probe``. The
two conventions were checked against each other by bench/abtem_probe_convention.py. Usage:

    python bench/abtem_dataset.py [--out out/data/abtem/mos2_abtem.h5] [--scan-shape 40 40]
        [--step-nm 0.05] [--seed 0] [--threads 2] [--dose E_PER_A2] [--measure N]
        [--defocus-nm 4 --astigmatism-nm 2.5 --astigmatism-angle-deg 30 --cs-um 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recon.aberrations import ProbeAberrations  # noqa: E402
from recon.dataset import AcquisitionTruth, Dataset4D, GroundTruth, write_dataset  # noqa: E402
from recon.physics import real_space_pixel_angstrom  # noqa: E402
from recon.probe import make_probe  # noqa: E402

ENERGY_EV, CONVERGENCE_MRAD, DETECTOR_PIXELS, PIXEL_MRAD, BINNING = 60e3, 33.0, 64, 1.68, 2
DEFAULT_OUT = ROOT / "out" / "data" / "abtem" / "mos2_abtem.h5"


def abtem_aberrations(aberrations: ProbeAberrations) -> dict[str, float]:
    """The worker's job keys for abTEM's ``Probe(defocus=, C12=, phi12=, Cs=)`` (Angstrom, rad) from ours (nm, deg, um).

    Same meaning on both sides (bench/abtem_probe_convention.py, tests/test_probe_abtem_convention.py):
    abTEM's defocus is -C10 as ours, its phi12 is measured from x towards y as ours once
    its (x, y) arrays are transposed to our [y, x]; only the units differ.
    """
    return {
        "defocus_a": 10.0 * aberrations.defocus_nm,
        "c12_a": 10.0 * aberrations.astigmatism_nm,
        "phi12_rad": float(np.radians(aberrations.astigmatism_angle_deg)),
        "cs_a": 1e4 * aberrations.cs_um,
    }


def dataset_from_abtem(
    shifted: np.ndarray,
    positions_nm: np.ndarray,
    grid_shape: tuple[int, int],
    phase: np.ndarray,
    phase_pixel_nm: float,
    *,
    binning: int = BINNING,
    energy_ev: float = ENERGY_EV,
    convergence_mrad: float = CONVERGENCE_MRAD,
    detector_pixel_mrad: float = PIXEL_MRAD,
    step_nm: float | None = None,
    dose_per_a2: float | None = None,
    seed: int = 0,
    true_aberrations: ProbeAberrations | None = None,
) -> Dataset4D:
    """Dataset4D from the worker's arrays (already in our orientation).

    Args:
        shifted: (N, K*b, K*b) raw patterns [ky, kx], zero frequency at the centre of the
            b x b block that becomes binned pixel (K//2, K//2).
        positions_nm: (N, 2) probe positions (x, y) in nm, row-major raster.
        grid_shape: (ny, nx) of the raster.
        phase: (H, W) ground-truth phase [y, x] in rad, pixel [0, 0] at (0, 0) nm.
        phase_pixel_nm: its pixel in nm.
        binning: detector binning b; detector_pixel_mrad is the binned pixel (mrad).
        step_nm: raster step (nm), needed with dose_per_a2 (electrons per A^2; Poisson counts).
        seed: seed of the Poisson noise.
        true_aberrations: the aberrations abTEM's probe had (None: in focus). The file's beam
            and probe stay nominal (in focus); these go to ``acquisition_truth`` with their probe.
    """
    shifted = np.asarray(shifted)
    positions_nm = np.asarray(positions_nm, dtype=np.float64)
    if shifted.ndim != 3 or shifted.shape[1] != shifted.shape[2] or shifted.shape[1] % binning:
        raise ValueError(f"patterns must be (N, K*{binning}, K*{binning}), got {shifted.shape}")
    if len(shifted) != len(positions_nm) or int(np.prod(grid_shape)) != len(positions_nm):
        raise ValueError(f"{len(shifted)} patterns, {len(positions_nm)} positions and grid {tuple(grid_shape)} do not agree")
    n, raw, _ = shifted.shape
    k = raw // binning
    binned = shifted.astype(np.float64).reshape(n, k, binning, k, binning).sum(axis=(2, 4))
    totals = binned.sum(axis=(1, 2), keepdims=True)
    if not (totals > 0).all():
        raise ValueError("a pattern has no intensity on the detector")
    patterns = binned / totals
    if dose_per_a2 is not None:
        if step_nm is None or not dose_per_a2 > 0:
            raise ValueError("a dose needs a positive dose_per_a2 and the raster step_nm")
        rng = np.random.default_rng(seed + 1_000_003)
        patterns = rng.poisson(patterns * dose_per_a2 * (step_nm * 10.0) ** 2).astype(np.uint32)
    else:
        patterns = patterns.astype(np.float32)
    pixel_a = real_space_pixel_angstrom(energy_ev, k, detector_pixel_mrad)
    probe = make_probe(k, pixel_a, energy_ev, convergence_mrad).numpy().astype(np.complex64)
    truth = None
    if true_aberrations is not None and true_aberrations != ProbeAberrations():
        true_probe = true_aberrations.probe(k, pixel_a, energy_ev, convergence_mrad).numpy().astype(np.complex64)
        truth = AcquisitionTruth(positions_nm.copy(), true_probe, true_aberrations.model_dump())
    return Dataset4D(
        patterns=patterns,
        positions_nm=positions_nm,
        energy_ev=energy_ev,
        convergence_mrad=convergence_mrad,
        detector_pixel_mrad=detector_pixel_mrad,
        defocus_nm=0.0,
        grid_shape=(int(grid_shape[0]), int(grid_shape[1])),
        probe=probe,
        ground_truth=GroundTruth(np.asarray(phase, dtype=np.float32), float(phase_pixel_nm), (0.0, 0.0)),
        acquisition_truth=truth,
    )


def centred_raster(side_nm: float, scan_shape: tuple[int, int], step_nm: float) -> np.ndarray:
    """(ny*nx, 2) row-major raster (x, y) in nm centred in a square cell of side side_nm."""
    from sim_microscope.datasets import raster_positions_nm

    ny, nx = scan_shape
    extent = ((nx - 1) * step_nm, (ny - 1) * step_nm)
    window_nm = DETECTOR_PIXELS * real_space_pixel_angstrom(ENERGY_EV, DETECTOR_PIXELS, PIXEL_MRAD) / 10.0
    if max(extent) + window_nm > side_nm:
        raise ValueError(
            f"raster {ny}x{nx} at {step_nm} nm plus the {window_nm:.2f} nm probe window exceeds the {side_nm:.2f} nm cell"
        )
    return raster_positions_nm(scan_shape, step_nm, ((side_nm - extent[0]) / 2, (side_nm - extent[1]) / 2))


def main() -> None:
    from fidelity_abtem import ensure_venv, run_abtem, specimen_and_positions

    from sim_microscope.simulate import binned_centre_offset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="dataset file (.h5); a .json summary is written beside it")
    parser.add_argument("--scan-shape", type=int, nargs=2, default=(40, 40), metavar=("NY", "NX"))
    parser.add_argument("--step-nm", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0, help="specimen seed (and Poisson seed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dose", "--dose-per-a2", dest="dose", type=float, default=None, help="electrons per A^2 (Poisson); default noise-free")
    parser.add_argument(
        "--gpts", type=int, default=768, help="abTEM grid: 768 = 0.075 A (1152 = 0.050 A, fidelity_abtem's, is 1.8x slower)"
    )
    parser.add_argument("--slice-thickness", type=float, default=1.0, help="abTEM slice thickness, A")
    parser.add_argument("--measure", type=int, default=0, metavar="N", help="only time abTEM on N positions and estimate the full run")
    parser.add_argument("--defocus-nm", type=float, default=0.0, help="true probe: defocus (-C10), nm (positive: crossover below the entrance plane)")
    parser.add_argument("--astigmatism-nm", type=float, default=0.0, help="true probe: two-fold astigmatism |C12|, nm")
    parser.add_argument("--astigmatism-angle-deg", type=float, default=0.0, help="true probe: its angle phi12, deg from x towards y")
    parser.add_argument("--cs-um", type=float, default=0.0, help="true probe: spherical aberration C30, um")
    args = parser.parse_args()
    if args.step_nm <= 0 or min(args.scan_shape) < 1 or args.threads < 1:
        parser.error("--step-nm, --scan-shape and --threads must be positive")
    if args.dose is not None and args.dose <= 0:
        parser.error(f"--dose must be positive, got {args.dose}")

    try:
        true_probe = ProbeAberrations(defocus_nm=args.defocus_nm, astigmatism_nm=args.astigmatism_nm,
                                      astigmatism_angle_deg=args.astigmatism_angle_deg, cs_um=args.cs_um)
    except ValueError as err:
        parser.error(f"bad aberrations: {err}")
    ensure_venv()
    atoms, _ = specimen_and_positions(PIXEL_MRAD / BINNING, 1, args.step_nm, args.seed)
    side_nm = float(atoms.cell[0, 0]) / 10.0
    try:
        positions = centred_raster(side_nm, tuple(args.scan_shape), args.step_nm)
    except ValueError as err:
        parser.error(str(err))
    run_positions = positions[: args.measure] if args.measure else positions
    print(
        f"MoS2 {side_nm * 10:.2f} A square, {len(atoms)} atoms, seed {args.seed}; abTEM {args.gpts}^2, "
        f"{args.slice_thickness} A slices; {len(run_positions)} of {len(positions)} positions; threads {args.threads}; "
        f"true probe: {true_probe.summary()}",
        flush=True,
    )
    peer = run_abtem(
        atoms,
        run_positions,
        energy_ev=ENERGY_EV,
        convergence_mrad=CONVERGENCE_MRAD,
        raw_pixels=DETECTOR_PIXELS * BINNING,
        shift_px=binned_centre_offset(DETECTOR_PIXELS, BINNING),
        gpts=args.gpts,
        slice_thickness=args.slice_thickness,
        threads=args.threads,
        shifted_only=True,
        return_phase=not args.measure,
        progress=True,
        aberrations=abtem_aberrations(true_probe),
    )
    if not np.allclose(peer["angular_sampling_mrad"], PIXEL_MRAD / BINNING, rtol=1e-6):
        raise SystemExit(f"abTEM's reciprocal pixel is {peer['angular_sampling_mrad']} mrad, expected {PIXEL_MRAD / BINNING}")
    rate = len(run_positions) / peer["wall_s"]
    print(f"abTEM {peer['version']}: wall {peer['wall_s']:.1f} s, cpu {peer['cpu_s']:.1f} s, {rate:.2f} patterns/s", flush=True)
    if args.measure:
        print(f"estimate for {len(positions)} positions: {len(positions) / rate:.0f} s wall")
        return

    t0 = time.perf_counter()
    dataset = dataset_from_abtem(
        peer["shifted"], positions, tuple(args.scan_shape), peer["phase"], peer["phase_pixel_nm"],
        step_nm=args.step_nm, dose_per_a2=args.dose, seed=args.seed, true_aberrations=true_probe,
    )
    fraction = peer["shifted"].sum(axis=(1, 2)) / peer["total"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_dataset(out, dataset)
    summary = {
        "abtem_version": peer["version"],
        "wall_s": peer["wall_s"],
        "cpu_s": peer["cpu_s"],
        "patterns_per_s": rate,
        "threads": args.threads,
        "positions": len(positions),
        "scan_shape": list(args.scan_shape),
        "step_nm": args.step_nm,
        "seed": args.seed,
        "dose_per_a2": args.dose,
        "true_probe": true_probe.model_dump(),
        "gpts": args.gpts,
        "slice_thickness_a": args.slice_thickness,
        "in_detector_fraction_mean": float(fraction.mean()),
        "ground_truth_pixel_nm": peer["phase_pixel_nm"],
        "ground_truth_phase_max_rad": float(peer["phase"].max()),
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(
        f"in-detector fraction {fraction.mean():.5f}; ground truth {peer['phase'].shape} at {peer['phase_pixel_nm'] * 10:.4f} A, "
        f"max {peer['phase'].max():.3f} rad; wrote {out} ({time.perf_counter() - t0:.1f} s) and {out.with_suffix('.json')}"
    )


if __name__ == "__main__":
    main()
