"""``ptychoscan reconstruct``: gradient ptychography of one dataset file.

Writes the reconstruction (docs/DESIGN.md section 4: ``phase`` (H, W) float32 with attrs
``pixel_nm`` and ``origin_nm``, ``positions_nm`` used, ``loss_history``) and, when the
dataset has ground truth, prints ``ssim=<value>`` as the last line (registered to
sub-pixel accuracy, ground truth low-passed to the reconstruction's Nyquist, over the
bounding box of the positions used).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("reconstruct", help="reconstruct the potential of a 4D-STEM dataset", description=__doc__)
    p.add_argument("dataset", help="dataset .h5 (format ptychoscan-4dstem)")
    p.add_argument("--out", required=True, help="output reconstruction .h5")
    p.add_argument("--positions-subset", default=None, help="sparse-grid:N, random:N or indices.npy (default: all positions)")
    p.add_argument("--iterations", type=int, help="passes over the positions (default 5, the paper's)")
    p.add_argument("--loss", choices=["amplitude", "intensity"])
    p.add_argument("--optimizer", choices=["adam", "gd"])
    p.add_argument("--step-size", type=float, help="gd step (paper: 525 with the intensity loss) or Adam rate in rad")
    p.add_argument("--batch-positions", type=int, help="mini-batch of positions; 0 = full batch")
    p.add_argument("--detector-binning", type=int, help="detector binning to model (default 1: a K x K far field, good for 2x-binned data too; 2 models the paper's 2x binning at ~4x the cost, +0.01 SSIM with a defocused probe)")
    p.add_argument("--subpixel-steps", type=int, help="round probe positions to 1/N of a pixel so shifted probes are reused (default and 0: exact; the service uses 32)")
    p.add_argument("--position-correction", action="store_true",
                   help="refine the probe positions with the object (PositionCorrectionOptions defaults; set them under position_correction "
                        "in --config); the corrected positions go to the output's corrected_positions_nm")
    p.add_argument("--focal-spread-nm", type=float,
                   help="partial coherence: the beam's focal spread (defocus standard deviation, nm): model each pattern with incoherent "
                        "probe modes (ReconOptions.coherence; with --source-size-nm too: nodes^3 modes, each costs about one coherent probe)")
    p.add_argument("--source-size-nm", type=float, help="partial coherence: the demagnified source's standard deviation per axis, nm")
    p.add_argument("--coherence-nodes", type=int, help="Gauss-Hermite nodes per spread of the probe modes (default 3)")
    p.add_argument("--coherence-mode-power", type=float,
                   help="keep the fewest orthogonal probe modes holding this fraction of the beam's power (e.g. 0.99; default: every node's probe)")
    p.add_argument("--config", help="ReconOptions as YAML/TOML/JSON; flags override it")
    p.add_argument("--converged", action="store_true",
                   help="the evaluation's converged recipe (full-batch GD, Nesterov 0.9, preconditioned step 0.25, 60 passes) "
                   "instead of the paper's 5 passes; flags override it")
    p.add_argument("--seed", type=int, default=0, help="seed of random:N subsets and mini-batch order")
    p.add_argument("--png", help="write a PNG of the reconstruction (next to the ground truth when there is one)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from ptychoscan.config import load_model
    from recon.beam import probe_for
    from recon.dataset import read_dataset
    from recon.engine import Reconstructor
    from recon.inputs import chunk_from_dataset, fov_of, grid_for_dataset, select_subset
    from recon.metrics import ssim_against_ground_truth
    from recon.options import ReconOptions
    from recon.output import write_reconstruction

    overrides = {
        "iterations": args.iterations,
        "loss": args.loss,
        "optimizer": args.optimizer,
        "step_size": args.step_size,
        "seed": args.seed,
        "detector_binning": args.detector_binning,
        "subpixel_steps": args.subpixel_steps or None,  # 0: exact, as when not given
        "batch_positions": args.batch_positions or None,  # not given: the config's; 0: full batch (nulls below)
        "progress": True,
        "coherence_mode_power": args.coherence_mode_power,
    }
    if args.converged:
        if args.config:
            raise ValueError("--converged and --config are exclusive (--converged is a recipe of its own)")
        from policy.evaluation import default_final_recon

        base = default_final_recon().model_dump()
        options = ReconOptions.model_validate({**base, **{k: v for k, v in overrides.items() if v is not None},
                                               **({"batch_positions": None} if args.batch_positions == 0 else {})})
    else:
        options = load_model(ReconOptions, args.config, overrides, nulls={"batch_positions": args.batch_positions == 0})
    coherence = {"focal_spread_nm": args.focal_spread_nm, "source_size_nm": args.source_size_nm, "nodes_per_axis": args.coherence_nodes}
    if any(v is not None for v in coherence.values()):  # on top of the config's coherence, when it has one
        given = options.coherence.model_dump() if options.coherence is not None else {}
        options = ReconOptions.model_validate({**options.model_dump(), "coherence": {**given, **{k: v for k, v in coherence.items() if v is not None}}})
    if args.position_correction and options.position_correction is None:  # the config's own options, when it has them, stand
        options = ReconOptions.model_validate({**options.model_dump(), "position_correction": {}})
    dataset = read_dataset(args.dataset)
    indices = select_subset(dataset, args.positions_subset, seed=args.seed)
    positions = dataset.positions_nm[indices]
    chunk = chunk_from_dataset(dataset, indices, grid_for_dataset(dataset, fov_of(positions)))
    reconstructor = Reconstructor(probe_for(dataset), options, device=args.device, energy_ev=dataset.energy_ev, pixel_nm=chunk.grid.pixel_nm)
    start = time.perf_counter()
    result = reconstructor.reconstruct([chunk])[0]
    elapsed = time.perf_counter() - start
    ssim = None
    if dataset.ground_truth is not None:
        ssim = ssim_against_ground_truth(result.potential, result.grid, dataset.ground_truth, _region(fov_of(positions), result.grid.pixel_nm))
    path = write_reconstruction(args.out, result, positions, options, source=args.dataset, ssim=ssim)
    if result.positions_nm is not None:
        print(f"position correction: rms {float(np.sqrt(((result.positions_nm - positions) ** 2).sum(axis=1).mean())):.4f} nm from the nominal "
              f"positions, scan matrix {np.round(result.scan_matrix, 4).tolist()}")
    if reconstructor.modes is not None:
        print(f"partial coherence: {len(reconstructor.modes)} incoherent probe modes ({options.coherence.focal_spread_nm:g} nm focal spread, "
              f"{options.coherence.source_size_nm:g} nm source size)")
    print(f"reconstructed {len(indices)} positions on a {result.grid.shape[0]}x{result.grid.shape[1]} grid "
          f"({result.grid.pixel_nm:.5f} nm/px) in {elapsed:.2f} s on {reconstructor.device}; loss {result.loss_history[0]:.4e} -> {result.loss_history[-1]:.4e}")
    print(f"wrote {path}")
    if args.png:
        from recon.output import plot_reconstruction

        print(f"wrote {plot_reconstruction(args.png, result, positions, dataset.ground_truth, ssim)}")
    if ssim is not None:
        print(f"ssim={ssim:.4f}")
    return 0


def _region(fov_nm: tuple[float, float, float, float], pixel_nm: float, minimum_px: int = 8) -> tuple[float, float, float, float]:
    """The fov, widened about its centre to at least ``minimum_px`` pixels per side (SSIM needs a 7x7 window)."""
    x0, y0, width, height = fov_nm
    side = minimum_px * pixel_nm
    grow_x, grow_y = max(0.0, side - width) / 2, max(0.0, side - height) / 2
    return x0 - grow_x, y0 - grow_y, width + 2 * grow_x, height + 2 * grow_y
