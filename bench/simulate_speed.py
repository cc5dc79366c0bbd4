"""Patterns per second of sim_microscope.simulate_patterns at the paper's MoS2 setting.

60 kV, 33 mrad, 64x64 patterns (128 px at 0.84 mrad binned 2x), default oversampling.
Prints wall and CPU time and patterns/s, and the ratio to the acquisition rate of a
1 kHz detector (1000 patterns/s). Usage:

    python bench/simulate_speed.py [--n 400] [--threads 2] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sim_microscope import simulate_patterns, tmd_monolayer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="number of positions (a square raster)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    side = round(np.sqrt(args.n))
    atoms = tmd_monolayer("MoS2", (6.0, 6.0), seed=0)
    xs = 2.0 + np.arange(side) * 0.02
    positions = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    beam = dict(energy_ev=60e3, convergence_mrad=33.0, detector_pixels=64, detector_pixel_mrad=1.68, binning=2)
    simulate_patterns(atoms, positions[:8], **beam, device=args.device)  # warm-up (FFT plans, CUDA context)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    patterns = simulate_patterns(atoms, positions, **beam, device=args.device)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    rate = len(positions) / wall
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device == "cuda" else f"{args.threads} CPU threads"
    print(f"device={device} ({name}) positions={len(positions)} shape={patterns.shape}")
    print(f"wall={wall:.2f} s cpu={cpu:.2f} s patterns/s={rate:.1f}")
    print(f"ratio to a 1 kHz detector: {rate / 1000:.3f}")


if __name__ == "__main__":
    main()
