"""Small-scale learning curves (issue 14): three rewards, and two pre-training targets, measured on unseen specimens.

Everything at a size that runs in minutes on one CPU core, so it shows whether the
pieces move the policy in the right direction, not what training at scale reaches:

1. One autoencoder (the "seeing" options) and one sparse-grid pre-training, shared.
2. RL from that checkpoint with three rewards, everything else equal (K rollouts per
   specimen with leave-one-out baselines, normalised advantages, one fixed sigma):
   ``paper`` (phase contrast per Voronoi cell, gamma 0), ``total`` (the same reward's total
   given to every position, the paper's Figure 6 variant) and ``quality`` (the gain in fit
   to the ground truth per Voronoi cell, gamma 1). Every ``--eval-every`` iterations the
   policy (its means) scans every validation specimen and the live reconstruction's
   Pearson r against the ground truth is recorded.
3. Pre-training to the structure-guided planner (``pretrain.target: structure_guided``,
   matched loss) from the same autoencoder, scored against the sparse-grid pre-training
   on the same validation episodes (paired per specimen and seed), with the two fixed
   references (the interleaved sparse grids, the structure-guided planner itself).

Validation quality is that of the live reconstruction the environment keeps (warm-started,
``--recon-iterations`` passes per sub-sequence), not ``ptychoscan evaluate``'s converged one.

    PYTHONPATH=$PWD python bench/policy_small_curves.py --train 'out/data/train/*.h5' --val 'out/data/val/*.h5' --out out/curves
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from policy.checkpoint import load_policy
from policy.config import TrainConfig, cpu_scale
from policy.pretrain_targets import planner_rollouts
from policy.training import make_env, read_metrics, resolve_datasets, run_stage, target_sequence

REWARDS = {
    "paper": {"reward": "phase", "credit": "voronoi", "gamma": 0.0},
    "total": {"reward": "phase", "credit": "total", "gamma": 0.0},
    "quality": {"reward": "quality", "credit": "voronoi", "gamma": 1.0},
}


def base_config(args, out_dir: Path, **rl) -> TrainConfig:
    model = cpu_scale()
    model.policy.chunk = args.chunk
    model.autoencoder.normalization = "group"
    model.autoencoder.latent_norm = True
    model.autoencoder.target_sigma_px = 5.0
    return TrainConfig(
        model=model, data={"train": [args.train], "dose": 1e4, "measurement": "simulate"}, recon={"iterations": args.recon_iterations},
        autoencoder={"iterations": args.ae_iterations, "lr": 1e-3, "batch": 16},
        pretrain={"iterations": args.pretrain_iterations, "lr": 1e-3, "batch": 8},
        rl={"iterations": args.rl_iterations, "lr": args.rl_lr, "batch": args.batch, "budget": args.budget, "rollouts_per_specimen": 2,
            "normalize_advantages": True, "sigma": args.sigma, "max_grad_norm": 1.0, **rl},
        out_dir=str(out_dir), threads=args.threads, device="cpu", checkpoint_every=10_000, seed=0)


class Validator:
    """Deterministic episodes (the policy's means) on the validation specimens; Pearson r of the live reconstruction."""

    def __init__(self, args, out: Path):
        self.cfg = base_config(args, out / "val", reward="quality")
        self.env = make_env(self.cfg, resolve_datasets([args.val]))
        self.names = [s.name for s in self.env.specimens]
        self.seeds = list(range(args.val_seeds))

    def _rollout(self, seed: int, propose) -> list[float]:
        ids = list(range(len(self.env.specimens)))
        pos, img = self.env.reset(ids, seed=1000 + seed)
        state = None
        for t in range(1, self.cfg.n_subsequences):
            proposal, state = propose(t, pos, img, state)
            pos, img, _, _ = self.env.step(proposal)
        return [float(np.sqrt(max(self.env.quality(ep), 0.0))) for ep in self.env.episodes]

    def policy(self, path: Path) -> np.ndarray:
        """(seeds, specimens) Pearson r of the checkpoint's deterministic policy."""
        loaded = load_policy(path)

        def propose(_t, pos, img, state):
            with torch.no_grad():
                return loaded.policy(pos, loaded.autoencoder.encode(img), state)

        return np.array([self._rollout(s, propose) for s in self.seeds])

    def sparse_grid(self) -> np.ndarray:
        targets = target_sequence(self.cfg.model.policy.chunk, self.cfg.n_subsequences)
        n = len(self.env.specimens)
        return np.array([self._rollout(s, lambda t, _p, _i, st: (np.tile(targets[t][None], (n, 1, 1)), st)) for s in self.seeds])

    def structure_guided(self) -> np.ndarray:
        out = []
        for s in self.seeds:
            planner_rollouts(self.env, self.cfg.n_subsequences, self.cfg.rl.budget, seed=1000 + s, progress=False)
            out.append([float(np.sqrt(max(self.env.quality(ep), 0.0))) for ep in self.env.episodes])
        return np.array(out)


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    d = (a - b).ravel()
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean_diff": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)], "wins": int((d > 0).sum()),
            "n": len(d)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--out", default="out/curves")
    p.add_argument("--chunk", type=int, default=25)
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--recon-iterations", type=int, default=3)
    p.add_argument("--ae-iterations", type=int, default=300)
    p.add_argument("--pretrain-iterations", type=int, default=200)
    p.add_argument("--rl-iterations", type=int, default=20)
    p.add_argument("--rl-lr", type=float, default=1e-3)
    p.add_argument("--sigma", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--val-seeds", type=int, default=2)
    p.add_argument("--variants", nargs="+", default=list(REWARDS), choices=list(REWARDS))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    report: dict = {"args": vars(args)}

    base = out / "base"
    cfg = base_config(args, base)
    run_stage("autoencoder", cfg)
    run_stage("pretrain", cfg)
    val = Validator(args, out)
    report["validation_specimens"] = val.names
    start = val.policy(base / "policy.pt")
    report["pretrained_sparse_grid"] = start.tolist()
    print(f"pre-trained (sparse grid): r {start.mean():.4f}", flush=True)

    report["curves"] = {}
    for name in args.variants:
        folder = out / name
        folder.mkdir(exist_ok=True)
        shutil.copy(base / "pretrain.pt", folder / "pretrain.pt")
        curve = [{"iteration": 0, "val_r": float(start.mean())}]
        t0, c0 = time.perf_counter(), time.process_time()
        for it in range(args.eval_every, args.rl_iterations + 1, args.eval_every):
            run_stage("rl", base_config(args, folder, iterations=it, **REWARDS[name]))
            r = val.policy(folder / "policy.pt")
            curve.append({"iteration": it, "val_r": float(r.mean()), "val_r_per_run": r.tolist()})
            print(f"{name} it {it}: val r {r.mean():.4f}", flush=True)
        rows = read_metrics(folder / "metrics.jsonl", "rl")
        report["curves"][name] = {"validation": curve, "train": [{k: r[k] for k in ("iteration", "reward", "final_total_reward", "time_s")}
                                                                  for r in rows],
                                  "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

    sg = out / "sg"
    sg.mkdir(exist_ok=True)
    shutil.copy(base / "autoencoder.pt", sg / "autoencoder.pt")
    t0, c0 = time.perf_counter(), time.process_time()
    sg_cfg = base_config(args, sg).model_copy(deep=True)
    sg_cfg.pretrain.target = "structure_guided"
    sg_cfg.pretrain.loss = "matched"
    run_stage("pretrain", sg_cfg)
    report["sg_pretrain_wall_s"] = time.perf_counter() - t0
    report["sg_pretrain_cpu_s"] = time.process_time() - c0
    sg_r = val.policy(sg / "policy.pt")
    grid_r, planner_r = val.sparse_grid(), val.structure_guided()
    report["pretrain_comparison"] = {
        "sparse_grid_pretrained": start.tolist(), "structure_guided_pretrained": sg_r.tolist(),
        "fixed_sparse_grid": grid_r.tolist(), "structure_guided_planner": planner_r.tolist(),
        "sg_minus_grid_pretrained": paired(sg_r, start), "planner_minus_fixed_grid": paired(planner_r, grid_r),
    }
    print(json.dumps(report["pretrain_comparison"], indent=1), flush=True)
    report["wall_s"] = time.perf_counter() - wall0
    report["cpu_s"] = time.process_time() - cpu0
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"done: {report['wall_s']:.0f} s wall, {report['cpu_s']:.0f} s CPU; {out / 'report.json'}")


if __name__ == "__main__":
    main()
