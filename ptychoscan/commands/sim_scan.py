"""``ptychoscan sim-scan``: the control-software loop a microscope PC runs against the service."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sim-scan",
        help="drive an adaptive acquisition: ask the service, move the probe, trigger the detector, tell",
        description="Create a session on --service, then until it says done: ask for positions, load them into "
        "the scan controller on --microscope, arm the detector for that many frames, trigger, and tell the "
        "service which detector series holds the batch. Uses only the public REST APIs.",
    )
    p.add_argument("--service", required=True, help="service base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--microscope", required=True, help="sim-detector REST base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--api-key", required=True, help="a key the service accepts (scope control)")
    p.add_argument("--detector-endpoint", default=None, help="detector stream the session reads (tcp://host:port); default: the "
                   "service's configured detector (serve --detector), else the one sim-detector streams on, else tcp://127.0.0.1:9999")
    p.add_argument("--fov-nm", type=float, nargs=4, metavar=("X0", "Y0", "W", "H"), default=(0.0, 0.0, 2.0, 2.0),
                   help="field to scan, nm (sim-detector prints its own at start)")
    p.add_argument("--budget", type=int, default=250, help="positions in total (paper: 250-500)")
    p.add_argument("--chunk", type=int, default=50, help="positions per sub-sequence (paper: 50-100)")
    p.add_argument("--strategy", default="adaptive", choices=["adaptive", "structure-guided", "sparse-grid"], help="the service's planner")
    p.add_argument("--energy-ev", type=float, default=60_000.0, help="beam energy, eV")
    p.add_argument("--convergence-mrad", type=float, default=33.0, help="probe convergence semi-angle, mrad")
    p.add_argument("--detector-pixels", type=int, default=64, help="pattern side K, pixels")
    p.add_argument("--detector-pixel-mrad", type=float, default=1.68, help="detector pixel, mrad")
    p.add_argument("--defocus-nm", type=float, default=0.0, help="probe defocus the service reconstructs with, nm (as sim-detector's)")
    p.add_argument("--probe", default="nominal", choices=["nominal", "retrieve"],
                   help="nominal: the service reconstructs with the probe the beam flags make; retrieve: it retrieves defocus, astigmatism "
                   "and Cs from the session's first frames (default: nominal)")
    p.add_argument("--position-correction", action="store_true",
                   help="the service's converged end-of-session reconstruction refines the positions and reports how far they moved")
    p.add_argument("--frame-time", type=float, default=0.001, help="s")
    p.add_argument("--settle-time", type=float, default=0.0, help="s")
    p.add_argument("--ask-timeout", type=float, default=30.0, help="long-poll of each ask, s")
    p.add_argument("--max-idle-asks", type=int, default=3, help="stop after this many 503s from ask in a row while no frame of the "
                   "told batch arrives (the frames go to a stream the session does not read)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sim_microscope.control_loop import ScanLoopConfig, ScanLoopError, run_scan

    try:
        config = ScanLoopConfig(
            service=args.service, microscope=args.microscope, api_key=args.api_key,
            detector_endpoint=args.detector_endpoint, fov_nm=tuple(args.fov_nm), budget=args.budget, chunk=args.chunk,
            strategy=args.strategy, energy_ev=args.energy_ev, convergence_mrad=args.convergence_mrad,
            detector_pixels=args.detector_pixels, detector_pixel_mrad=args.detector_pixel_mrad, defocus_nm=args.defocus_nm,
            probe=args.probe, position_correction=args.position_correction, frame_time_s=args.frame_time, settle_time_s=args.settle_time, ask_timeout_s=args.ask_timeout, max_idle_asks=args.max_idle_asks,
        )
        summary = run_scan(config)
    except ValidationError as err:
        raise ValueError(f"invalid sim-scan option: {err.errors()[0]['loc'][0]}: {err.errors()[0]['msg']}") from None
    except ScanLoopError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    print(fetch_hint(args.service, summary["session_id"]), file=sys.stderr)
    return 0


def fetch_hint(service: str, session_id: str) -> str:
    """How to get the session's reconstruction and data once sim-scan is done."""
    base = service.rstrip("/")
    return (f"result: curl -o recon.png -H 'Accept: image/png' {base}/api/v1/sessions/{session_id}/reconstruction "
            f"(application/x-npy: the phase, rad); status: {base}/api/v1/sessions/{session_id}; "
            f"data: {session_id}.h5 in the service's --storage; the reconstruction becomes the converged one (X-Reconstruction-Kind: converged) "
            f"a few seconds after the session is done")
