"""Invalid detector pixels: what a hot pixel at 65535 does to a reconstruction with and without the mask, and what the mask costs.

One scan of K x K uint16 counts (60 kV, 33 mrad, 1.68 mrad/px, a random blob potential,
``--dose`` electrons per pattern, Poisson), reconstructed by ``recon.engine.Reconstructor``
(the service's default options, ``--iterations`` passes) three ways: clean; with
``--hot`` pixels at 65535 in every frame (what ``pixel_mask_applied`` makes of masked
pixels) excluded by ``ScanChunk.invalid_pixels``; and the same frames without the mask.
Prints the max and RMS difference from the clean reconstruction (relative to its max |phase|),
the wall and CPU time of the masked and the unmasked runs (their ratio: the mask's cost in
the engine) and the service's per-frame cost of learning marked pixels
(``service.detector_mask.DetectorMask.observe``). Usage:

    python bench/detector_mask.py [--positions 100] [--k 64] [--iterations 3] [--threads 2] [--hot 3] [--dose 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from detector_stream.codec import decode_frames, encode_frames
from recon.beam import probe_for, reconstruction_pixel_nm
from recon.engine import Reconstructor, ScanChunk
from recon.forward import forward_intensity
from recon.grid import ObjectGrid
from recon.invalid_pixels import marked_pixels
from recon.options import ReconOptions
from service.detector_mask import DetectorMask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from recon_testing import blob_phase


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=100)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hot", type=int, default=3, help="hot pixels (random, seeded) at 65535 in every frame")
    ap.add_argument("--dose", type=float, default=20_000.0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each (masked, unmasked), alternating")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    k, pixel_mrad = args.k, 1.68
    probe = probe_for(energy_ev=60e3, convergence_mrad=33.0, detector_pixels=k, detector_pixel_mrad=pixel_mrad)
    pixel_nm = reconstruction_pixel_nm(60e3, k, pixel_mrad)
    side = int(np.ceil(np.sqrt(args.positions)))
    xs = np.linspace(0.0, 1.0, side)
    positions = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)[: args.positions]
    grid = ObjectGrid.covering((0.0, 0.0, 1.0, 1.0), pixel_nm, k)
    truth = blob_phase(grid.shape, rng).float()
    px = torch.tensor(grid.positions_px(positions), dtype=torch.float32)
    intensity = forward_intensity(torch.polar(torch.ones_like(truth), truth), probe, px).numpy()
    counts = rng.poisson(intensity / intensity.sum(axis=(1, 2)).mean() * args.dose).astype(np.uint16)
    hot = counts.copy()
    where = rng.choice(k * k, size=args.hot, replace=False)
    hot.reshape(len(hot), -1)[:, where] = 65535
    invalid = marked_pixels(hot)
    options = ReconOptions(iterations=args.iterations, detector_binning=1)

    rec = Reconstructor(probe, options, "cpu")

    def run(patterns, mask):
        w0, c0 = time.perf_counter(), time.process_time()
        out = rec.reconstruct([ScanChunk(patterns, positions, grid, invalid_pixels=mask)])[0].potential.numpy()
        return out, time.perf_counter() - w0, time.process_time() - c0

    run(counts, None)  # warm-up (the shifted-probe cache)
    clean, _, _ = run(counts, None)
    masked, unmasked = run(hot, invalid)[0], run(hot, None)[0]
    scale = float(np.abs(clean).max())
    for name, res in (("hot pixels, masked", masked), ("hot pixels, not masked", unmasked)):
        d = res - clean
        print(f"{name:24s} max |diff| / max |clean| = {np.abs(d).max() / scale:.4f}   rms / max = {np.sqrt((d**2).mean()) / scale:.4f}")
    times = {True: [], False: []}
    for _ in range(args.repeats):  # alternating, the least of each: the machine is shared
        for masked_run in (False, True):
            times[masked_run].append(run(hot, invalid if masked_run else None)[1:])
    (w_m, c_m), (w_u, c_u) = min(times[True]), min(times[False])
    print(f"recon (least of {args.repeats}) wall masked {w_m:.2f} s, unmasked {w_u:.2f} s (ratio {w_m / w_u:.3f}); "
          f"CPU {c_m:.2f} / {c_u:.2f} s (ratio {c_m / c_u:.3f})")
    frames = [np.ascontiguousarray(f) for f in counts]
    blobs = encode_frames(counts, "bs16-lz4<")
    rounds = 20
    t0 = time.perf_counter()
    for _ in range(rounds):
        decode_frames(blobs, (k, k), "uint16", "bs16-lz4<")
    decode_us = (time.perf_counter() - t0) / (rounds * len(blobs)) * 1e6
    print(f"reference: decoding a bs16-lz4 {k}x{k} frame (batched) {decode_us:.1f} us")
    for label, stack in (("no marked pixel", frames), ("marked pixels", [np.ascontiguousarray(f) for f in hot])):
        mask = DetectorMask(k)
        mask.observe(stack)  # the first sight of a mark writes it; from then on every frame is checked against the known marks
        t0 = time.perf_counter()
        for _ in range(rounds):
            mask.observe(stack)
        us = (time.perf_counter() - t0) / (rounds * len(stack)) * 1e6
        print(f"DetectorMask.observe, {label}: {us:.1f} us per {k}x{k} frame ({us / decode_us:.2f} x the decode)")

if __name__ == "__main__":
    main()
