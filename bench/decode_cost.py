"""Cost of decoding stream v1 frames in the service (``StreamDecoder.feed_many``), per frame, by drain size.

The receive thread hands each drained batch of one detector's messages to the decoder;
at 1 ms dwell a drain holds 1-3 messages, under load dozens. This times the decoder
alone (no sockets, no session) on N 64x64 uint16 bs16-lz4 frames of one series and
prints microseconds per frame and the share of one core that 8 sessions at 1 ms dwell
(8,000 frames/s) would take. Usage:

    PYTHONPATH=$PWD python bench/decode_cost.py [--frames 4000] [--drains 1 3 16 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector_stream.codec import encode_frames
from detector_stream.codec_threads import set_codec_threads
from detector_stream.decoder import StreamDecoder
from detector_stream.messages import image_parts, series_end_parts, series_start_parts


def messages(n: int, k: int = 64) -> list[list[bytes]]:
    """One series of ``n`` Poisson frames, as the detector sends them."""
    frames = np.random.default_rng(0).poisson(50, size=(n, k, k)).astype(np.uint16)
    blobs = encode_frames(frames, "bs16-lz4<")
    config = {"ntrigger": n, "nimages": 1, "trigger_mode": "exts", "x_pixels_in_detector": k, "y_pixels_in_detector": k}
    body = [image_parts(1, i, frames[i], "bs16-lz4<", 0, 1000, 1000, blob=blobs[i]) for i in range(n)]
    return [series_start_parts(1, config), *body, series_end_parts(1)]


def time_decoder(msgs: list[list[bytes]], drain: int) -> tuple[float, float]:
    """(wall, CPU) seconds to decode every message in drains of ``drain``."""
    decoder = StreamDecoder()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for start in range(0, len(msgs), drain):
        part = msgs[start : start + drain]
        decoder.feed_many(part, [0.0] * len(part))
    return time.perf_counter() - wall0, time.process_time() - cpu0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=4000)
    ap.add_argument("--drains", type=int, nargs="+", default=[1, 3, 16, 64], help="messages per feed_many call")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly; the decoder does not use torch)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    set_codec_threads(1)  # as the receive thread does
    msgs = messages(args.frames)
    time_decoder(msgs[:200], 16)  # warm-up
    print(f"{args.frames} frames 64x64 uint16 bs16-lz4")
    print(f"{'drain':>6} {'us/frame':>9} {'cpu us/frame':>12} {'frames/s':>9} {'core share at 8,000 frames/s':>29}")
    for drain in args.drains:
        wall, cpu = time_decoder(msgs, drain)
        per = wall / args.frames
        print(f"{drain:>6} {per * 1e6:9.1f} {cpu / args.frames * 1e6:12.1f} {1 / per:9.0f} {8000 * per:29.2f}")


if __name__ == "__main__":
    main()
