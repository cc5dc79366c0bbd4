"""Fidelity and speed of sim_microscope.simulate_patterns against abTEM 1.0.11 (multislice, Lobato).

Monolayer MoS2 (sim_microscope.specimens.tmd_monolayer, seeded), 60 kV, 33 mrad, 64x64
patterns at 1.68 mrad/px (128 px at 0.84 mrad binned 2x), an 8x8 raster at 0.05 nm in
the middle of the specimen. The specimen's side is lambda / 0.84 mrad (57.9 A), so that
abTEM's reciprocal pixel (1 / cell) is exactly our raw detector pixel and no resampling
is needed: abTEM's patterns are cropped to the centre 128 px, transposed from abTEM's
(kx, ky) array order to our [ky, kx], and binned 2x as ours are.

abTEM runs in its own venv (bench/.venvs/abtem, built on first use) through
bench/_abtem_worker.py, so it never enters the project's environment. Prints the mean
and minimum per-pattern Pearson r, the fraction of the beam inside the detector for
both, r and speed versus our ``oversample``, and patterns/s of both with the ratio;
writes a PNG and a JSON under --out. Usage:

    python bench/fidelity_abtem.py [--threads 2] [--device auto|cpu|cuda] [--grid 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "bench" / "_abtem_worker.py"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from peer_venv import ensure_peer  # noqa: E402
from peer_venv import venv_python as peer_venv_python  # noqa: E402


def venv_python() -> Path:
    return peer_venv_python("abtem")


def ensure_venv(install: bool = True) -> Path:
    """The abTEM venv's python (bench/peer_venv.py builds it on first use); abTEM needs numba, which pins numpy: both must import."""
    return ensure_peer("abtem", install=install)


def specimen_and_positions(raw_pixel_mrad: float, grid: int, step_nm: float, seed: int, energy_ev: float = 60e3):
    """MoS2 monolayer of side lambda/raw_pixel_mrad and a grid x grid raster (x, y) in nm around its centre."""
    from recon.physics import wavelength_angstrom
    from sim_microscope import tmd_monolayer

    side_nm = wavelength_angstrom(energy_ev) / (raw_pixel_mrad * 1e-3) / 10.0
    atoms = tmd_monolayer("MoS2", (side_nm, side_nm), seed=seed)
    # Centre the layer in z inside the cell (abTEM slices the cell from z = 0; our projection ignores z).
    atoms.positions[:, 2] += atoms.cell[2, 2] / 2 - atoms.positions[:, 2].mean()
    offsets = (np.arange(grid) - (grid - 1) / 2) * step_nm
    xs = side_nm / 2 + offsets
    positions = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)  # row-major raster, (x, y)
    return atoms, positions


def run_abtem(
    atoms,
    positions_nm: np.ndarray,
    *,
    energy_ev: float,
    convergence_mrad: float,
    raw_pixels: int,
    shift_px: float,
    gpts: int,
    slice_thickness: float = 1.0,
    projection: str = "infinite",
    threads: int = 2,
    max_batch: int = 8,
    shifted_only: bool = False,
    return_phase: bool = False,
    progress: bool = False,
    aberrations: dict[str, float] | None = None,
    probe_check: tuple[int, float] | None = None,
) -> dict:
    """abTEM's patterns (our orientation, [N, ky, kx]) and timing from the worker in the abTEM venv.

    ``aberrations``: the probe's, as the worker's job keys in abTEM's parametrisation
    (``defocus_a``, ``c12_a``, ``phi12_rad``, ``cs_a``; see bench/_abtem_worker.py); none: in focus.
    ``probe_check`` (gpts, sampling in A): also "probe", abTEM's probe wave with those
    aberrations on that grid, centred at pixel gpts // 2, transposed to our [y, x].

    ``shifted_only``: one multislice pass, only the half-pixel-shifted patterns (see the
    worker). ``return_phase``: also "phase" ([y, x] rad, sigma times abTEM's projected
    potential, pixel [0, 0] at the cell's origin) and "phase_pixel_nm".
    """
    python = ensure_venv(install=False)
    with tempfile.TemporaryDirectory() as tmp:
        job, out = Path(tmp) / "job.npz", Path(tmp) / "out.npz"
        np.savez(
            job,
            numbers=atoms.numbers,
            atom_positions=atoms.positions,
            cell=np.array(atoms.cell),
            gpts=gpts,
            projection=projection,
            slice_thickness=slice_thickness,
            energy_ev=energy_ev,
            convergence_mrad=convergence_mrad,
            crop=raw_pixels,
            probe_positions=np.asarray(positions_nm) * 10.0,  # abTEM takes (x, y) in Angstrom, same frame
            max_batch=max_batch,
            threads=threads,
            shift_px=shift_px,
            shifted_only=shifted_only,
            return_phase=return_phase,
            progress=progress,
            **(aberrations or {}),
            **({"probe_gpts": probe_check[0], "probe_sampling_a": probe_check[1]} if probe_check else {}),
        )
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
        env.pop("PYTHONPATH", None)
        subprocess.run([str(python), str(WORKER), str(job), str(out)], check=True, env=env)
        data = dict(np.load(out))
    # abTEM arrays are indexed (kx, ky) and (x, y); ours [ky, kx] and [y, x]: transpose the last two axes.
    extra = {}
    if return_phase:
        sampling = data["phase_sampling_a"]
        if not np.isclose(sampling[0], sampling[1], rtol=1e-9):
            raise RuntimeError(f"abTEM's potential pixel is not square: {sampling} A")
        extra = {"phase": np.ascontiguousarray(data["phase_xy"].T), "phase_pixel_nm": float(sampling[0]) / 10.0}
    if "probe_xy" in data:
        extra["probe"] = np.ascontiguousarray(data["probe_xy"].T)
    return extra | {
        "patterns": np.swapaxes(data["patterns_xy"], -1, -2),
        "shifted": np.swapaxes(data["shifted_xy"], -1, -2),
        "total": data["total"],
        "angular_sampling_mrad": data["angular_sampling_mrad"],
        "wall_s": float(data["wall_s"]),
        "cpu_s": float(data["cpu_s"]),
        "version": str(data["version"]),
    }


def bin2d(patterns: np.ndarray, factor: int) -> np.ndarray:
    n, ky, kx = patterns.shape
    return patterns.reshape(n, ky // factor, factor, kx // factor, factor).sum(axis=(2, 4))


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pattern Pearson correlation of (N, K, K) stacks."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def dark_field_mask(k: int, pixel_mrad: float, convergence_mrad: float, margin_px: float = 1.5) -> np.ndarray:
    """(K, K) bool: pixels beyond the bright-field disc (plus a margin) of a pattern centred at K//2."""
    yy, xx = np.indices((k, k))
    return np.hypot(yy - k // 2, xx - k // 2) > convergence_mrad / pixel_mrad + margin_px


def orientation_scores(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """Mean r of ours against the 8 flips/transposes of theirs: 'identity' must win."""
    ops = {
        "identity": lambda p: p,
        "transpose": lambda p: np.swapaxes(p, -1, -2),
        "flip_x": lambda p: p[..., ::-1],
        "flip_y": lambda p: p[..., ::-1, :],
        "rot180": lambda p: p[..., ::-1, ::-1],
        "transpose_flip_x": lambda p: np.swapaxes(p, -1, -2)[..., ::-1],
        "transpose_flip_y": lambda p: np.swapaxes(p, -1, -2)[..., ::-1, :],
        "transpose_rot180": lambda p: np.swapaxes(p, -1, -2)[..., ::-1, ::-1],
    }
    return {name: float(pearson(ours, op(theirs)).mean()) for name, op in ops.items()}


def simulate_ours(
    atoms, positions_nm, *, device: str, oversample: int | None, binning: int, detector_pixels: int, pixel_mrad: float
):
    """Our patterns, detector fractions, wall and CPU seconds (after a warm-up)."""
    import torch

    from sim_microscope import simulate_scan

    beam = dict(energy_ev=60e3, convergence_mrad=33.0, detector_pixels=detector_pixels, detector_pixel_mrad=pixel_mrad)
    simulate_scan(atoms, positions_nm[:2], **beam, binning=binning, oversample=oversample, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = simulate_scan(atoms, positions_nm, **beam, binning=binning, oversample=oversample, device=device)
    sync()
    return result, time.perf_counter() - wall0, time.process_time() - cpu0


def save_figure(path: Path, ours: np.ndarray, theirs: np.ndarray, r: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [0, len(ours) // 2, len(ours) - 1]
    fig, axes = plt.subplots(len(picks), 3, figsize=(9, 3 * len(picks)))
    for row, i in enumerate(picks):
        vmax = float(np.sqrt(max(ours[i].max(), theirs[i].max())))
        diff = ours[i] - theirs[i]
        lim = float(np.abs(diff).max())
        for col, (image, name) in enumerate(((np.sqrt(ours[i]), "ours (sqrt)"), (np.sqrt(theirs[i]), "abTEM (sqrt)"))):
            axes[row, col].imshow(image, vmin=0, vmax=vmax, cmap="magma")
            axes[row, col].set_title(f"{name}, #{i}")
        im = axes[row, 2].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[row, 2].set_title(f"ours - abTEM, r={r[i]:.4f}")
        fig.colorbar(im, ax=axes[row, 2], fraction=0.046)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", help="our side: auto (CUDA when present), cpu or cuda")
    parser.add_argument("--grid", type=int, default=8, help="raster side (positions = grid^2)")
    parser.add_argument("--step-nm", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpts", type=int, default=1152, help="abTEM grid (57.9 A / 1152 = 0.050 A)")
    parser.add_argument("--slice-thickness", type=float, default=1.0, help="abTEM slice thickness, A")
    parser.add_argument("--projection", default="infinite", choices=["infinite", "finite"])
    parser.add_argument("--oversample", default="1,2,3,4,5", help="our oversample values to sweep")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "fidelity_abtem"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from recon.device import pick_device
    from sim_microscope.simulate import binned_centre_offset

    device = str(pick_device(args.device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ensure_venv()

    k, binning, pixel_mrad = 64, 2, 1.68
    raw = k * binning
    atoms, positions = specimen_and_positions(pixel_mrad / binning, args.grid, args.step_nm, args.seed)
    print(
        f"MoS2 {atoms.cell[0, 0]:.2f} A square, {len(atoms)} atoms; {len(positions)} positions; our device {device}", flush=True
    )

    peer = run_abtem(
        atoms,
        positions,
        energy_ev=60e3,
        convergence_mrad=33.0,
        raw_pixels=raw,
        shift_px=binned_centre_offset(k, binning),
        gpts=args.gpts,
        slice_thickness=args.slice_thickness,
        projection=args.projection,
        threads=args.threads,
    )
    assert np.allclose(peer["angular_sampling_mrad"], pixel_mrad / binning, rtol=1e-6), peer["angular_sampling_mrad"]
    theirs = bin2d(peer["shifted"], binning)  # abTEM, 64 px at 1.68 mrad, zero at the centre of pixel (32, 32)
    theirs_raw = peer["patterns"]  # abTEM, 128 px at 0.84 mrad, zero at pixel (64, 64)
    their_fraction = theirs.sum(axis=(1, 2)) / peer["total"]
    theirs_norm = theirs / theirs.sum(axis=(1, 2), keepdims=True)
    print(
        f"abTEM {peer['version']}: wall {peer['wall_s']:.2f} s, cpu {peer['cpu_s']:.2f} s, in-detector {their_fraction.mean():.5f}"
    )

    dark = dark_field_mask(k, pixel_mrad, 33.0)
    sweep = []
    for oversample in [int(v) for v in args.oversample.split(",")] + [None]:
        result, wall, cpu = simulate_ours(
            atoms, positions, device=device, oversample=oversample, binning=binning, detector_pixels=k, pixel_mrad=pixel_mrad
        )
        r = pearson(result.patterns, theirs_norm)
        r_dark = pearson(result.patterns[:, dark], theirs_norm[:, dark])
        row = {
            "oversample": oversample if oversample is not None else f"default ({result.phase_pixel_nm * 10:.3f} A)",
            "potential_pixel_A": result.phase_pixel_nm * 10,
            "r_mean": float(r.mean()),
            "r_min": float(r.min()),
            "r_dark_mean": float(r_dark.mean()),
            "r_dark_min": float(r_dark.min()),
            "fraction_ours": float(result.detector_fraction.mean()),
            "fraction_diff_mean": float(np.mean(result.detector_fraction - their_fraction)),
            "fraction_diff_max": float(np.max(np.abs(result.detector_fraction - their_fraction))),
            "wall_s": wall,
            "cpu_s": cpu,
            "patterns_per_s": len(positions) / wall,
        }
        sweep.append(row)
        print(
            f"oversample {row['oversample']!s:>18}: r mean {row['r_mean']:.5f} min {row['r_min']:.5f}, "
            f"dark field {row['r_dark_mean']:.4f} min {row['r_dark_min']:.4f}; "
            f"in-detector {row['fraction_ours']:.5f} (abTEM {their_fraction.mean():.5f}); "
            f"wall {wall:.2f} s cpu {cpu:.2f} s, {row['patterns_per_s']:.1f} patterns/s",
            flush=True,
        )
        if oversample is None:
            default_result, default_r, default_row = result, r, row

    orientation = orientation_scores(default_result.patterns * dark, theirs_norm * dark)
    r_uncentred = pearson(default_result.patterns, bin2d(theirs_raw, binning))
    raw_result, _, _ = simulate_ours(
        atoms, positions, device=device, oversample=None, binning=1, detector_pixels=raw, pixel_mrad=pixel_mrad / binning
    )
    r_raw = pearson(raw_result.patterns, theirs_raw / theirs_raw.sum(axis=(1, 2), keepdims=True))
    print(f"binned without the half-pixel centring on abTEM's side (zero at K//2 - 0.25): r mean {r_uncentred.mean():.5f}")
    print(
        f"orientation (mean dark-field r vs flips of abTEM, identity must win): {json.dumps({k: round(v, 4) for k, v in orientation.items()})}"
    )
    print(f"unbinned 128 px at 0.84 mrad, default oversample: r mean {r_raw.mean():.5f} min {r_raw.min():.5f}")

    ours_rate = default_row["patterns_per_s"]
    abtem_rate = len(positions) / peer["wall_s"]
    print(
        f"speed: ours {ours_rate:.1f} patterns/s (wall {default_row['wall_s']:.2f} s, cpu {default_row['cpu_s']:.2f} s, {device}); "
        f"abTEM {abtem_rate:.1f} patterns/s (wall {peer['wall_s']:.2f} s, cpu {peer['cpu_s']:.2f} s, CPU); "
        f"threads {args.threads}; ratio ours/abTEM = {ours_rate / abtem_rate:.1f}x"
    )
    ok = (
        default_r.mean() >= 0.98
        and abs(default_row["fraction_diff_mean"]) < 0.005
        and max(orientation, key=orientation.get) == "identity"
    )
    print(
        f"PASS (mean r >= 0.98, mean in-detector fractions within 0.005, orientation identity): {ok}; "
        f"largest per-position fraction difference {default_row['fraction_diff_max']:.4f}"
    )

    save_figure(
        out / "fidelity_abtem.png", default_result.patterns, theirs_norm, default_r, "MoS2 60 kV 33 mrad, 64 px at 1.68 mrad"
    )
    summary = {
        "device": device,
        "threads": args.threads,
        "positions": len(positions),
        "abtem": {k: peer[k] for k in ("version", "wall_s", "cpu_s")} | {"fraction_mean": float(their_fraction.mean())},
        "sweep": sweep,
        "orientation": orientation,
        "uncentred_binned_r_mean": float(r_uncentred.mean()),
        "unbinned_r_mean": float(r_raw.mean()),
        "unbinned_r_min": float(r_raw.min()),
        "speed_ratio": ours_rate / abtem_rate,
        "pass": bool(ok),
    }
    (out / "fidelity_abtem.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {out / 'fidelity_abtem.png'} and {out / 'fidelity_abtem.json'}")


if __name__ == "__main__":
    main()
