"""``python -m nion_ptychoscan --service URL --api-key KEY [...]``: one adaptive session on nionswift-usim, headless.

Prints one line per chunk (positions, series, seconds in Nion's API) and exits 0 at done;
a refused step prints one ``error:`` line and exits 1, bad arguments exit 2.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nion_ptychoscan", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--service", required=True, help="service base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--fov-nm", type=float, nargs=4, default=(0.0, 0.0, 2.0, 2.0), metavar=("X0", "Y0", "W", "H"))
    ap.add_argument("--budget", type=int, default=250)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--strategy", default="adaptive")
    ap.add_argument("--detector-pixels", type=int, default=64, help="K: camera frames are block-summed to K x K")
    ap.add_argument("--exposure-ms", type=float, default=1.0)
    ap.add_argument("--camera-binning", type=int, default=8)
    ap.add_argument("--stream-port", type=int, default=0, help="port of the stream v1 PUSH socket (0: a free one)")
    args = ap.parse_args(argv)
    from nion_ptychoscan.driver import AdaptiveSessionDriver, DriverConfig
    from nion_ptychoscan.usim_stack import UsimStack

    try:
        config = DriverConfig(service=args.service, api_key=args.api_key, fov_nm=tuple(args.fov_nm), budget=args.budget, chunk=args.chunk,
                              strategy=args.strategy, detector_pixels=args.detector_pixels, exposure_ms=args.exposure_ms,
                              camera_binning=args.camera_binning, stream_port=args.stream_port)
    except ValidationError as err:
        print(f"error: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}", file=sys.stderr)
        return 2
    try:
        with UsimStack() as hardware:
            result = AdaptiveSessionDriver(config, hardware, say=print).run()
    except (RuntimeError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"session {result.session_id}: {result.frames} frames in {len(result.chunks)} chunks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
