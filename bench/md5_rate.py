"""Rate of the compiled receive loop's own md5 (``recv_batch.c``) next to hashlib's (OpenSSL), in one run.

The loop checks every frame's md5 on the ingest thread, so its md5 is on the critical path:
this prints MB/s (10^6 bytes per second) of both on one large buffer (``--big`` bytes,
where the ctypes call costs nothing) and microseconds per call on blobs of ``--blob`` bytes
(a 64x64 uint16 frame compressed: ~1.6 KB), raw and less the cost of a call on an empty
input (ctypes' or hashlib's own overhead), and the ratio own/hashlib. Best of ``--repeats``
timings each (the machine is shared). Usage:

    PYTHONPATH=$PWD python bench/md5_rate.py [--big 1600000] [--blob 1635] [--calls 20000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector_stream.native.loop import NativeReceiveLoop


def best_seconds(fn: Callable[[bytes], object], data: bytes, calls: int, repeats: int) -> float:
    """Least wall seconds per call of ``fn(data)`` over ``repeats`` runs of ``calls`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(data)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=1_600_000, help="bytes of the large buffer")
    ap.add_argument("--blob", type=int, default=1635, help="bytes of one frame blob")
    ap.add_argument("--calls", type=int, default=20000, help="calls per timing on blobs")
    ap.add_argument("--repeats", type=int, default=7, help="timings, the best kept")
    args = ap.parse_args()

    loop = NativeReceiveLoop(8)
    own, ssl = loop.md5_hex, (lambda d: hashlib.md5(d).hexdigest())
    big, blob = os.urandom(args.big), os.urandom(args.blob)
    assert own(big) == ssl(big) and own(blob) == ssl(blob)

    big_calls = max(1, 160_000_000 // args.big)  # ~160 MB per timing
    t_own, t_ssl = best_seconds(own, big, big_calls, args.repeats), best_seconds(ssl, big, big_calls, args.repeats)
    print(
        f"large buffer ({args.big} B): own {args.big / t_own / 1e6:7.0f} MB/s   hashlib {args.big / t_ssl / 1e6:7.0f} MB/s   own/hashlib {t_ssl / t_own:.2f}"
    )

    b_own, b_ssl = best_seconds(own, blob, args.calls, args.repeats), best_seconds(ssl, blob, args.calls, args.repeats)
    e_own, e_ssl = best_seconds(own, b"", args.calls, args.repeats), best_seconds(ssl, b"", args.calls, args.repeats)
    n_own, n_ssl = b_own - e_own, b_ssl - e_ssl
    print(f"blob ({args.blob} B), per call:   own {b_own * 1e6:5.2f} us   hashlib {b_ssl * 1e6:5.2f} us")
    print(
        f"blob, less an empty call:   own {n_own * 1e6:5.2f} us ({args.blob / n_own / 1e6:4.0f} MB/s)   "
        f"hashlib {n_ssl * 1e6:5.2f} us ({args.blob / n_ssl / 1e6:4.0f} MB/s)   own/hashlib {n_ssl / n_own:.2f}"
    )


if __name__ == "__main__":
    main()
