"""``ptychoscan demo``: the closed loop on an embedded default.

Starts the service, the simulated detector and the control-software stand-in on
loopback and scans a simulated MoS2 flake edge (60 kV, 33 mrad, in focus, 64x64
patterns, a 2 x 2 nm field, ~50 % vacuum) three times at the same 62.5 positions per
nm^2 (250 positions in sub-sequences of 50) and dose: with the shipped GRU policy
(``adaptive``), the ``structure-guided`` planner and the ``sparse-grid``. Prints SSIM and
Pearson r against the ground truth (whole field, and r over the specimen), after the
same converged reconstruction for every strategy, and writes a PNG of positions over
the reconstructions.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ptychoscan.closed_loop import ClosedLoopConfig


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the closed-loop demo on an embedded default", description=__doc__)
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--specimen", default=None, help="specimen kind (default flake; any of ptychoscan simulate --specimen)")
    p.add_argument("--seed", type=int, default=None, help="specimen seed, also the seed of the simulated scan errors' jitter "
                   "(default: one never used in training or the test table)")
    p.add_argument("--scan-shape", type=int, nargs=2, default=None, metavar=("NY", "NX"),
                   help="raster of the specimen file, which sets the field (default 11 11)")
    p.add_argument("--step-nm", type=float, default=None, help="its step, nm (default 0.2: a 2 x 2 nm field)")
    p.add_argument("--density", type=float, default=None, help="positions per nm^2 (default 62.5; paper: 62-125)")
    p.add_argument("--chunk", type=int, default=None, help="positions per sub-sequence (default 50)")
    p.add_argument("--dose", type=float, default=None, help="electrons per frame (default 1e4)")
    p.add_argument("--defocus-nm", type=float, default=None, help="probe defocus, nm (default 0, in focus)")
    p.add_argument("--strategies", nargs="+", default=None, help="default: adaptive structure-guided sparse-grid")
    p.add_argument("--policy", default=None, help="policy checkpoint (default: the shipped one)")
    p.add_argument("--true-probe", type=float, nargs=4, default=None, metavar=("DEFOCUS_NM", "ASTIGMATISM_NM", "ANGLE_DEG", "CS_UM"),
                   help="the microscope's real probe, not told to the service (default: the nominal one, --defocus-nm); "
                   "e.g. 4 2.5 30 2 with --probe retrieve")
    p.add_argument("--probe", choices=["nominal", "retrieve"], default=None,
                   help="the sessions' probe: nominal (default) or retrieved by the service from the first frames")
    p.add_argument("--jitter-nm", type=float, default=None, help="the microscope's scan jitter, nm per axis (default 0); the detector "
                   "simulates where the beam lands, the service is told where it was sent")
    p.add_argument("--scan-distortion", type=float, nargs=4, default=None, metavar=("DXX", "DXY", "DYX", "DYY"),
                   help="the microscope's linear scan distortion (default none; 0.01 0 0 0.01: a 1 %% scale error)")
    p.add_argument("--position-correction", action="store_true",
                   help="the sessions ask the service to correct the positions in its converged reconstruction (its scores printed)")
    p.add_argument("--frame-time", type=float, default=None, metavar="SECONDS",
                   help="the detector's frame time (dwell), s (default 0.001)")
    p.add_argument("--hold", type=float, default=None, metavar="SECONDS",
                   help="keep the service up this long after the scans, to look at its live view (default 0; the URL is printed)")
    p.set_defaults(func=run)


def demo_config(args: argparse.Namespace) -> ClosedLoopConfig:
    """The ``ClosedLoopConfig`` of a ``demo`` command line: the defaults, overridden by the options given.

    The scan errors (``--jitter-nm``, ``--scan-distortion``) draw their jitter with the specimen
    seed (``--seed``, else the default one), so each seed is its own scan as well as its own specimen.
    """
    from pathlib import Path

    from ptychoscan.closed_loop import ClosedLoopConfig
    from ptychoscan.config import load_model

    seed = args.seed if args.seed is not None else ClosedLoopConfig.model_fields["seed"].default
    overrides = {
        "out": Path(args.out),
        "specimen": args.specimen,
        "seed": args.seed,
        "scan_shape": args.scan_shape,
        "step_nm": args.step_nm,
        "density_per_nm2": args.density,
        "chunk": args.chunk,
        "dose_per_frame": args.dose,
        "defocus_nm": args.defocus_nm,
        "strategies": tuple(args.strategies) if args.strategies else None,
        "policy_checkpoint": args.policy,
        "hold_s": args.hold,
        "frame_time_s": args.frame_time,
        "probe": args.probe,
        "scan_errors": None if args.jitter_nm is None and args.scan_distortion is None else
        {"jitter_nm": args.jitter_nm or 0.0, "distortion": tuple(args.scan_distortion or (0.0, 0.0, 0.0, 0.0)), "seed": seed},
        "position_correction": args.position_correction or None,
        "true_probe": None if args.true_probe is None else dict(zip(("defocus_nm", "astigmatism_nm", "astigmatism_angle_deg", "cs_um"),
                                                                     args.true_probe, strict=True)),
    }
    return load_model(ClosedLoopConfig, None, overrides)


def run(args: argparse.Namespace) -> int:
    import signal
    import sys

    from ptychoscan.closed_loop import plot_outcomes, run_closed_loop

    config = demo_config(args)
    # SIGTERM (a stopped job, `kill`) unwinds like Ctrl-C, so the service and detector it started are stopped with it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    dataset, outcomes = run_closed_loop(config)
    png = plot_outcomes(outcomes, dataset, config.out / "closed_loop.png", chunk=config.chunk, dose_per_frame=config.dose_per_frame)
    lo, hi = dataset.positions_nm.min(axis=0), dataset.positions_nm.max(axis=0)
    area = float((hi - lo).prod())
    n = len(outcomes[0].positions_nm) if outcomes else 0
    print(f"specimen: {config.specimen} seed {config.seed} (vacuum fraction {dataset.vacuum_fraction or 0:.2f}), field "
          f"{hi[0] - lo[0]:.2f} x {hi[1] - lo[1]:.2f} nm, {n} positions ({n / area:.1f} per nm^2), dose {config.dose_per_frame:g} e/frame")
    for o in outcomes:
        c = o.converged
        r_spec = "n/a" if c["pearson_r_specimen"] is None else f"{c['pearson_r_specimen']:.3f}"
        print(f"{o.strategy:>17}: {len(o.positions_nm)} positions, converged SSIM {c['ssim']:.3f}, Pearson r {c['pearson_r']:.3f}, "
              f"r over the specimen {r_spec} (service's live final SSIM {o.ssim:.3f}), {o.seconds:.1f} s, planner {o.planner}")
        if o.service_converged is not None and o.probe is not None and o.probe.get("source") == "retrieved":
            s = o.service_converged
            print(f"{'':>19}the service's converged reconstruction with its retrieved probe (defocus {o.probe['defocus_nm']:.2f} nm, "
                  f"astigmatism {o.probe['astigmatism_nm']:.2f} nm at {o.probe['astigmatism_angle_deg']:.0f} deg, Cs {o.probe['cs_um']:.2f} um): "
                  f"SSIM {s['ssim']:.3f}, Pearson r {s['pearson_r']:.3f}")
        if o.live is not None:
            print(f"{'':>19}the service's live final reconstruction: SSIM {o.live['ssim']:.3f}, Pearson r {o.live['pearson_r']:.3f}")
        for h in (o.probe or {}).get("history", []):
            what = (f"defocus {h['defocus_nm']:.2f} nm, astigmatism {h['astigmatism_nm']:.2f} nm at {h['astigmatism_angle_deg']:.0f} deg, "
                    f"Cs {h['cs_um']:.2f} um" if h.get("state") == "done" else f"failed: {h.get('error')}")
            print(f"{'':>19}probe {h['kind']} on {h.get('frames')} frames, in use from frame {h.get('landed_frames')}: {what}")
        if o.service_converged is not None and o.positions_corrected is not None:
            s, m = o.service_converged, o.positions_corrected
            print(f"{'':>19}the service's converged reconstruction with corrected positions (rms shift {m['rms_shift_nm']:.4f} nm, "
                  f"scan matrix {m['scan_matrix']}): SSIM {s['ssim']:.3f}, Pearson r {s['pearson_r']:.3f}")
    print(f"wrote {png}")
    print("scores " + " ".join(f"{o.strategy}=ssim:{o.converged['ssim']:.4f},r:{o.converged['pearson_r']:.4f}" for o in outcomes))
    return 0
