"""``ptychoscan sim-detector``: the simulated DECTRIS detector + Nion-like scan controller."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sim-detector",
        help="run a simulated DECTRIS detector (SIMPLON REST + ZeroMQ stream v1) and scan controller",
        description="Serve the SIMPLON REST subset and the scan controller on --rest-port and stream frames "
        "(stream v1, PUSH) on --port. Frames come from the probe position: replayed from a dense dataset "
        "(--source, nearest raster position) or simulated from a specimen (--specimen) at --dose electrons per frame.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--source", help="dataset file (HDF5, docs/DESIGN.md section 4): its nearest raster frame, or see --from-truth")
    src.add_argument("--specimen", choices=["mos2", "mose2", "ws2", "wse2", "dwcnt", "synthetic"], help="simulate on the fly")
    p.add_argument("--from-truth", action="store_true", help="with --source: simulate every frame at its exact position from the "
                   "file's ground-truth phase instead of replaying the nearest raster frame (any raster, even a coarse one, will do)")
    p.add_argument("--specimen-size-nm", type=float, default=3.0, help="specimen field, nm (default 3)")
    p.add_argument("--detector-pixels", type=int, default=64, help="pattern side K, pixels")
    p.add_argument("--detector-pixel-mrad", type=float, default=1.68, help="detector pixel, mrad (after binning)")
    p.add_argument("--energy-ev", type=float, default=60_000.0, help="beam energy, eV")
    p.add_argument("--convergence-mrad", type=float, default=33.0, help="probe convergence semi-angle, mrad")
    p.add_argument("--defocus-nm", type=float, default=0.0, help="probe defocus with --specimen, nm (a larger probe overlaps more between "
                   "sparse positions; a dataset given with --source carries its own)")
    p.add_argument("--dose", type=float, default=10_000.0, help="electrons per frame for float patterns (Poisson)")
    p.add_argument("--noise", choices=["poisson", "none"], default="poisson", help="shot noise on float patterns")
    p.add_argument("--host", default="127.0.0.1", help="interface for the stream and REST")
    p.add_argument("--port", type=int, default=9999, help="ZeroMQ PUSH port (stream v1)")
    p.add_argument("--rest-port", type=int, default=8080, help="SIMPLON + scan controller REST port")
    p.add_argument("--frame-time", type=float, default=0.001, help="frame time, s")
    p.add_argument("--settle-time", type=float, default=0.0, help="beam settle time per position, s")
    p.add_argument("--seed", type=int, default=0, help="specimen and noise seed")
    errors = p.add_argument_group("scan errors", "the beam lands off the commanded positions (frames simulated where it lands; the "
                                  "position readback reports the commanded ones); default none")
    errors.add_argument("--jitter-nm", type=float, default=0.0, help="Gaussian jitter per position, standard deviation per axis, nm")
    errors.add_argument("--drift-nm-per-position", type=float, nargs=2, default=(0.0, 0.0), metavar=("DX", "DY"),
                        help="drift per position placed, nm")
    errors.add_argument("--scan-distortion", type=float, nargs=4, default=(0.0, 0.0, 0.0, 0.0), metavar=("DXX", "DXY", "DYX", "DYY"),
                        help="linear distortion D about the field's centre: landed = centre + (I + D)(sent - centre); 0.01 0 0 0.01 is "
                        "a 1 %% scale error")
    errors.add_argument("--scan-error-seed", type=int, default=0, help="seed of the jitter")
    p.set_defaults(func=run)


def scan_controller_from_args(args, source):
    """The scan controller with the flags' scan errors, distorting about the centre of the source's field (nm)."""
    from pydantic import ValidationError

    from sim_microscope.scan_controller import ScanController
    from sim_microscope.scan_errors import ScanErrors

    try:
        errors = ScanErrors(jitter_nm=args.jitter_nm, drift_nm_per_position=tuple(args.drift_nm_per_position),
                            distortion=tuple(args.scan_distortion), seed=args.scan_error_seed)
    except ValidationError as err:
        first = err.errors()[0]
        raise ValueError(f"scan errors: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    extent = getattr(source, "extent_nm", None)
    centre = (0.0, 0.0) if extent is None else (extent[0] + extent[2] / 2, extent[1] + extent[3] / 2)
    return ScanController(args.settle_time, errors, centre)


def _source(args):
    from sim_microscope.frame_source import DatasetReplay, GroundTruthSource, SpecimenSource, SyntheticSource

    if args.from_truth and not args.source:
        raise ValueError("--from-truth needs --source (a dataset file with ground truth)")
    if args.defocus_nm and args.specimen in (None, "synthetic"):
        raise ValueError("--defocus-nm applies to --specimen mos2|...: a --source dataset carries its own defocus, the synthetic pattern has none")
    if args.source:
        return GroundTruthSource(args.source) if args.from_truth else DatasetReplay(args.source)
    if args.specimen in (None, "synthetic"):
        return SyntheticSource(args.detector_pixels)
    return SpecimenSource(
        args.specimen,
        args.specimen_size_nm,
        seed=args.seed,
        energy_ev=args.energy_ev,
        convergence_mrad=args.convergence_mrad,
        detector_pixels=args.detector_pixels,
        detector_pixel_mrad=args.detector_pixel_mrad,
        defocus_nm=args.defocus_nm,
    )


def field_of_view_line(source) -> str:
    """One line: where frames can come from (nm), to match sim-scan's --fov-nm; probe positions outside are clamped."""
    extent = getattr(source, "extent_nm", None)
    if extent is None:
        return "field of view: unbounded (synthetic pattern: a disc that shifts with the probe, no specimen)"
    x0, y0, w, h = extent
    return f"field of view: x0 {x0:.3f} nm, y0 {y0:.3f} nm, {w:.3f} x {h:.3f} nm (sim-scan --fov-nm {x0:.3f} {y0:.3f} {w:.3f} {h:.3f} or inside it)"


def run(args: argparse.Namespace) -> int:
    import uvicorn
    import zmq

    from ptychoscan.net import listen_socket
    from sim_microscope.detector import SimDetector
    from sim_microscope.simplon_api import create_app

    if args.frame_time < 0 or args.settle_time < 0 or args.dose <= 0:
        raise ValueError("--frame-time and --settle-time must be >= 0 and --dose > 0")
    source = _source(args)
    rest = listen_socket(args.host, args.rest_port)
    try:
        detector = SimDetector(source, host=args.host, port=args.port, dose=args.dose, seed=args.seed, noise=args.noise,
                               scan=scan_controller_from_args(args, source))
    except zmq.ZMQError as err:
        rest.close()
        raise ValueError(f"cannot stream on {args.host}:{args.port}: {err}") from None
    detector.config["frame_time"] = args.frame_time
    print(f"stream v1 on {detector.endpoint}; REST on http://{args.host}:{rest.getsockname()[1]}", flush=True)
    print(field_of_view_line(source), flush=True)
    try:
        with rest:
            uvicorn.Server(uvicorn.Config(create_app(detector), host=args.host, port=args.rest_port, log_level="warning")).run(sockets=[rest])
    finally:
        detector.close()
    return 0
