"""``ptychoscan train autoencoder|pretrain|rl --config FILE``: train the adaptive-scanning policy."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the policy: autoencoder, supervised pre-training, reinforcement learning",
        description="Train the adaptive-scanning policy (Schloz et al. 2023) in three stages sharing one config "
        "and output folder: autoencoder, pretrain (to the sparse grid, or pretrain.target: structure_guided), rl (REINFORCE, "
        "Voronoi credit). Resumes from "
        "the stage's checkpoint in out_dir. Multi-process: torchrun --nproc_per_node N -m ptychoscan.cli train ...",
    )
    p.add_argument("stage", choices=["autoencoder", "pretrain", "rl"])
    p.add_argument("--config", required=True, help="TrainConfig as YAML/TOML/JSON (policy/config.py)")
    p.add_argument("--out-dir", help="override out_dir (default: the config's)")
    p.add_argument("--iterations", type=int, help="override this stage's iterations (default: the config's)")
    p.add_argument("--credit", choices=["voronoi", "total"], help="override rl.credit (default: the config's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from policy.config import TrainConfig
    from policy.training import run_stage, teardown
    from ptychoscan.config import load_model, read_mapping

    data = read_mapping(args.config)
    if args.iterations is not None:
        if args.iterations < 0:
            raise ValueError("--iterations must be >= 0")
        data.setdefault(args.stage, {})["iterations"] = args.iterations
    if args.credit:
        data.setdefault("rl", {})["credit"] = args.credit
    if args.out_dir:
        data["out_dir"] = args.out_dir
    config = load_model(TrainConfig, None, data)
    ctx = run_stage(args.stage, config)
    if ctx.main:
        print(f"{args.stage}: done; checkpoints and metrics in {ctx.out_dir}")
    if ctx.distributed:
        # gloo on CPU can abort at interpreter exit ("terminate called without an active
        # exception"): leave the group cleanly and exit without running atexit handlers.
        teardown(ctx)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
