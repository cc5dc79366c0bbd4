"""Seconds per REINFORCE iteration on this machine, and where they go.

Runs ``ptychoscan train rl`` (``policy.training.run_stage``) for a few iterations from
untrained weights (the cost does not depend on them) and, in the same process, one
episode alone, so the iteration's cost can be read as a ratio: how many single-episode
reconstructions one iteration of ``batch`` episodes costs (a batch reconstructs in one
batched call). Reconstruction (``Reconstructor.reconstruct``) and on-demand pattern
simulation (``SimulatedSource.noise_free``) are timed by wrapping them; the rest is
rewards, images, the networks and the optimiser step.

    PYTHONPATH=$PWD python bench/rl_iteration_cost.py --train 'out/data/train/*.h5' --batch 8 --iterations 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from policy.checkpoint import build_models, save_checkpoint
from policy.config import TrainConfig, cpu_scale
from policy.measurement import SimulatedSource
from policy.training import make_env, read_metrics, resolve_datasets, run_stage, target_sequence
from recon.engine import Reconstructor


class Timer:
    """Wall and CPU seconds spent inside a wrapped method, summed over calls."""

    def __init__(self, owner, name: str):
        self.wall = self.cpu = 0.0
        self.calls = 0
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.wall += time.perf_counter() - w
                self.cpu += time.process_time() - c
                self.calls += 1

        setattr(owner, name, timed)

    def reset(self) -> None:
        self.wall = self.cpu = 0.0
        self.calls = 0


def config_for(args, out_dir: Path) -> TrainConfig:
    model = cpu_scale()
    model.policy.chunk = args.chunk
    return TrainConfig(model=model, data={"train": [args.train], "dose": args.dose, "measurement": "simulate"},
                       recon={"iterations": args.recon_iterations}, out_dir=str(out_dir), threads=args.threads, device="cpu",
                       rl={"iterations": args.iterations, "batch": args.batch, "budget": args.budget, "reward": args.reward,
                           "rollouts_per_specimen": args.k, "lr": 1e-4}, checkpoint_every=10_000)


def one_episode(cfg: TrainConfig, rec: Timer, sim: Timer) -> dict:
    """One episode alone (batch 1) along the interleaved sparse grids: its reconstructions' and simulations' cost."""
    env = make_env(cfg, resolve_datasets(cfg.data.train)[:1])
    targets = target_sequence(cfg.model.policy.chunk, cfg.n_subsequences)
    rec.reset()
    sim.reset()
    w, c = time.perf_counter(), time.process_time()
    env.reset([0], seed=1)
    for t in range(1, cfg.n_subsequences):
        env.step(targets[t][None])
    return {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c, "recon_wall_s": rec.wall, "recon_cpu_s": rec.cpu,
            "sim_wall_s": sim.wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True, help="glob of training datasets (with ground truth)")
    p.add_argument("--batch", type=int, default=8, help="episodes per RL iteration")
    p.add_argument("--k", type=int, default=1, help="rollouts per specimen")
    p.add_argument("--budget", type=int, default=250)
    p.add_argument("--chunk", type=int, default=50)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--recon-iterations", type=int, default=5, help="reconstruction passes per sub-sequence (the paper: 5)")
    p.add_argument("--dose", type=float, default=1e4)
    p.add_argument("--reward", choices=["phase", "quality"], default="quality")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rec, sim = Timer(Reconstructor, "reconstruct"), Timer(SimulatedSource, "noise_free")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_for(args, Path(tmp))
        ae, pol = build_models(cfg)
        save_checkpoint(Path(tmp) / "pretrain.pt", {"config": cfg.model_dump(mode="json"), "autoencoder": ae.state_dict(),
                                                    "policy": pol.state_dict(), "stage": "pretrain", "iteration": 0})
        episode = one_episode(cfg, rec, sim)
        episode_again = one_episode(cfg, rec, sim)  # the same again (a fresh environment): how much the machine's load moves it
        rec.reset()
        sim.reset()
        w, c = time.perf_counter(), time.process_time()
        run_stage("rl", cfg)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        rows = read_metrics(Path(tmp) / "metrics.jsonl", "rl")
        per_it, per_it_cpu = [r["time_s"] for r in rows], [r["cpu_s"] for r in rows]
    out = {
        "args": vars(args), "torch_threads": torch.get_num_threads(), "n_subsequences": cfg.n_subsequences,
        "episode": episode, "episode_repeat": episode_again,
        "rl_wall_s": wall, "rl_cpu_s": cpu, "per_iteration_s": per_it, "per_iteration_cpu_s": per_it_cpu,
        "rl_recon_wall_s": rec.wall, "rl_recon_cpu_s": rec.cpu, "rl_sim_wall_s": sim.wall, "rl_sim_cpu_s": sim.cpu,
    }
    mean_it = float(np.mean(per_it))
    out["rl_setup_wall_s"] = wall - float(np.sum(per_it))  # reading the data, building simulators and models
    episode_wall = float(np.mean([e["recon_wall_s"] for e in (episode, episode_again)]))
    episode_cpu = float(np.mean([e["recon_cpu_s"] for e in (episode, episode_again)]))
    out["seconds_per_iteration"] = mean_it
    out["cpu_s_per_iteration"] = float(np.mean(per_it_cpu))
    out["iteration_over_episode_recon_wall"] = mean_it / episode_wall
    out["iteration_over_episode_recon_cpu"] = out["cpu_s_per_iteration"] / episode_cpu
    print(json.dumps(out, indent=1))
    print(f"\n{mean_it:.1f} s per iteration of {args.batch} episodes ({cfg.n_subsequences} sub-sequences of {args.chunk}, "
          f"{args.budget} positions): {out['iteration_over_episode_recon_wall']:.2f} x one episode's reconstructions "
          f"({episode_wall:.2f} s wall; CPU {out['iteration_over_episode_recon_cpu']:.2f} x {episode_cpu:.2f} s); of the RL run's "
          f"{wall:.1f} s wall ({cpu:.1f} s CPU): reconstruction {rec.wall:.1f} s, pattern simulation {sim.wall:.1f} s, "
          f"the rest {wall - rec.wall - sim.wall:.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
