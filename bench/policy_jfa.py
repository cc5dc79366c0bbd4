"""JFA Voronoi labelling against brute-force nearest-seed labelling: agreement and speed.

Usage: PYTHONPATH=. python bench/policy_jfa.py [--size 200] [--seeds 250] [--batch 8] [--threads 1]
Prints the fraction of pixels labelled identically, the worst extra distance (pixels) of
a JFA label over the exact one, and wall / CPU time of both (ratio brute / JFA).
"""

from __future__ import annotations

import argparse
import time

import torch

from policy.voronoi import brute_force_voronoi, jfa_voronoi


def timed(fn, repeats: int = 3):
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - w), min(best_cpu, time.process_time() - c)
    return out, best_wall, best_cpu


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--seeds", type=int, default=250)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    seeds = torch.rand(args.batch, args.seeds, 2, generator=g) * (args.size - 1)
    shape = (args.size, args.size)
    jfa, jw, jc = timed(lambda: jfa_voronoi(seeds, shape))
    exact, bw, bc = timed(lambda: brute_force_voronoi(seeds, shape))
    ys, xs = torch.meshgrid(torch.arange(args.size), torch.arange(args.size), indexing="ij")
    pix = torch.stack([xs, ys], -1).float()

    def dist(lab):
        pos = torch.gather(seeds, 1, lab.reshape(args.batch, -1, 1).expand(-1, -1, 2)).reshape(args.batch, *shape, 2)
        return ((pos - pix) ** 2).sum(-1).sqrt()

    agree = (jfa == exact).float().mean().item()
    excess = (dist(jfa) - dist(exact)).max().item()
    print(f"{args.batch} x {args.size}^2 px, {args.seeds} seeds, threads={args.threads}")
    print(f"agreement {agree:.5f}  worst extra distance {excess:.3f} px")
    print(f"JFA   wall {jw * 1e3:8.1f} ms  cpu {jc * 1e3:8.1f} ms")
    print(f"brute wall {bw * 1e3:8.1f} ms  cpu {bc * 1e3:8.1f} ms  ratio brute/JFA (wall) {bw / jw:.2f}")


if __name__ == "__main__":
    main()
