"""Which reward tracks reconstruction quality? The paper's phase reward against the quality reward, on the same episodes.

For each specimen, episodes of ``--budget`` positions in sub-sequences of ``--chunk`` are
measured three ways (the sparse grid, uniform random positions, and positions clustered in a
quarter of the field), patterns simulated on demand at 0.02 nm candidates, ``--dose``
electrons each. After every sub-sequence both rewards are computed from the same
reconstruction: the paper's (phase contrast summed over each new position's Voronoi cell of
all positions / P, ``policy.env.position_rewards``) and the quality reward
(``policy.quality_reward``: the fall in fitted error nearest each new position). Printed:

- per position: Pearson correlation of each reward with the area of the position's Voronoi
  cell among all positions (a reward that only pays for area tells the policy to spread out,
  whatever the specimen);
- per episode: correlation of each reward's return (the sum over the episode) with the final
  quality (Pearson r^2 of the fit to the ground truth), over all episodes, and the mean
  return per placement kind next to its mean final quality.

    PYTHONPATH=$PWD .venv/bin/python bench/reward_tracking.py --datasets 'out/data/ae/val/*.h5'
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np
import torch

from policy.env import crop_pixels, fov_crop, position_rewards
from policy.voronoi import cell_sums, jfa_voronoi

KINDS = ("sparse-grid", "random", "clustered")


def cell_areas(ep, new: int) -> np.ndarray:
    """Pixels in each of the last ``new`` positions' Voronoi cells among all of the episode's positions."""
    spec = ep.specimen
    rows, cols = fov_crop(spec.grid, spec.fov_nm)
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    seeds = torch.as_tensor(crop_pixels(spec.grid, rows, cols, ep.positions_nm), dtype=torch.float32)[None]
    labels = jfa_voronoi(seeds, shape)
    return cell_sums(labels, torch.ones((1, *shape)), seeds.shape[1])[0].numpy()[-new:]


def proposals(kind: str, t: int, n: int, targets: np.ndarray, rng: np.random.Generator, batch: int) -> np.ndarray:
    if kind == "sparse-grid":
        return np.tile(targets[t][None], (batch, 1, 1))
    if kind == "random":
        return rng.random((batch, n, 2))
    return 0.25 + 0.5 * rng.random((batch, n, 2))  # the middle quarter of the field


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", required=True, help="glob of dataset files with ground truth (one beam)")
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--budget", type=int, default=250)
    ap.add_argument("--dose", type=float, default=1e4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default="bench/out/reward_tracking.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from policy.config import TrainConfig
    from policy.training import make_env, target_sequence

    files = sorted(glob.glob(args.datasets))
    if not files:
        raise SystemExit("no files match --datasets")
    t0, c0 = time.perf_counter(), time.process_time()
    config = TrainConfig(data={"train": files, "dose": args.dose, "measurement": "simulate"}, device=args.device,
                         recon={"iterations": 5}, model={"policy": {"chunk": args.chunk}}, rl={"budget": args.budget, "reward": "quality"})
    env = make_env(config, files)
    n_sub = config.n_subsequences
    targets = target_sequence(args.chunk, n_sub)
    rng = np.random.default_rng(args.seed)
    ids = list(range(len(files)))
    per_position = {"area": [], "phase": [], "quality": []}
    episodes = []
    for kind in KINDS:
        first = proposals(kind, 0, args.chunk, targets, rng, len(ids)) if kind != "sparse-grid" else None
        env.reset(ids, seed=args.seed, first=first)
        returns = {"phase": np.zeros(len(ids)), "quality": np.zeros(len(ids))}
        for t in range(1, n_sub):
            _, _, quality, _ = env.step(proposals(kind, t, args.chunk, targets, rng, len(ids)))
            for b, ep in enumerate(env.episodes):
                phase, _ = position_rewards(ep, args.chunk, "voronoi", "contrast")
                per_position["area"].extend(cell_areas(ep, args.chunk).tolist())
                per_position["phase"].extend(phase.tolist())
                per_position["quality"].extend(quality[b].tolist())
                returns["phase"][b] += phase.sum()
                returns["quality"][b] += float(quality[b].sum())
        for b, ep in enumerate(env.episodes):
            episodes.append({"kind": kind, "dataset": ep.specimen.name, "final_q": env.quality(ep),
                             "return_phase": float(returns["phase"][b]), "return_quality": float(returns["quality"][b])})
    area = np.asarray(per_position["area"])
    final_q = np.array([e["final_q"] for e in episodes])
    out = {"per_position_corr_with_area": {}, "episode_corr_with_final_q": {}}
    print(f"{len(files)} specimens x {len(KINDS)} placements, {args.budget} positions in sub-sequences of {args.chunk}")
    print("reward  | corr(per-position reward, Voronoi cell area) | corr(episode return, final r^2)")
    for name in ("phase", "quality"):
        c_area = float(np.corrcoef(np.asarray(per_position[name]), area)[0, 1])
        c_q = float(np.corrcoef([e[f"return_{name}"] for e in episodes], final_q)[0, 1])
        out["per_position_corr_with_area"][name], out["episode_corr_with_final_q"][name] = c_area, c_q
        print(f"{name:>7} | {c_area:+.2f} | {c_q:+.2f}")
    print("placement   | final r^2 | phase return | quality return")
    for kind in KINDS:
        sel = [e for e in episodes if e["kind"] == kind]
        print(f"{kind:>11} | {np.mean([e['final_q'] for e in sel]):.3f} | {np.mean([e['return_phase'] for e in sel]):.4f} | "
              f"{np.mean([e['return_quality'] for e in sel]):+.4f}")
    print(f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU, {args.threads} threads")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), **out, "episodes": episodes}, f, indent=1)


if __name__ == "__main__":
    main()
