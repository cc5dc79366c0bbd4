"""Does the policy's encoder see the reconstruction? R^2 on specimens it was not trained on, paper vs normalised encoder.

Collects reconstruction images the way training does (``policy.training``: episodes along the
sparse-grid sequence and along random positions, the image after every sub-sequence), on
training specimens and on unseen ones, patterns simulated on demand at 0.02 nm candidates
(``measurement="simulate"``) at ``--dose``. Trains each autoencoder variant on the training
images for the same iterations, then reports on the unseen images:

- R^2 of its output against the image and against the image low-passed by ``--sigma-px``
  (1 - SSE / sum of squares about each image's mean);
- how much the latent varies across images (mean over components of the std across images,
  over the mean |z|): a latent that hardly varies tells the policy nothing;
- the shipped checkpoint's encoder (``--checkpoint``) on the same images.

The gate of issue 14: R^2 >= 0.5 on unseen specimens. Example (flakes and MoS2, train and
val splits of ``ptychoscan simulate``, 3 x 3 rasters carrying the ground truth):

    PYTHONPATH=$PWD .venv/bin/python bench/encoder_r2.py --train 'out/data/ae/train/*.h5' --unseen 'out/data/ae/val/*.h5'
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np
import torch

from policy.config import AutoencoderConfig
from policy.models import ConvAutoencoder, lowpass, r_squared

VARIANTS = {
    "paper": {},
    "group": {"normalization": "group"},
    "seeing": {"normalization": "group", "latent_norm": True, "target_sigma_px": None},  # None: --sigma-px
}


def rollout_images(files: list[str], chunk: int, budget: int, dose: float, image_size: int, seed: int, device: str) -> torch.Tensor:
    """(N, 1, S, S) images after every sub-sequence of a sparse-grid and a random episode per specimen."""
    from policy.config import TrainConfig
    from policy.training import make_env, target_sequence

    config = TrainConfig(data={"train": files, "dose": dose, "measurement": "simulate"}, device=device, recon={"iterations": 5},
                         model={"autoencoder": {"input_size": image_size, "channels": [8, 16, 32, 64, 64, 64], "latent_dim": 64},
                                "policy": {"chunk": chunk}}, rl={"budget": budget}, seed=seed)
    env = make_env(config, files)
    n_sub = config.n_subsequences
    targets = target_sequence(chunk, n_sub)
    rng = np.random.default_rng(seed)
    images = []
    ids = list(range(len(env.specimens)))
    for kind in ("grid", "random"):
        _, img = env.reset(ids, seed=seed + (kind == "random"))
        images.append(img)
        for t in range(1, n_sub):
            proposal = np.tile(targets[t][None], (len(ids), 1, 1)) if kind == "grid" else rng.random((len(ids), chunk, 2))
            _, img, _, _ = env.step(proposal)
            images.append(img)
    return torch.cat(images)


def train(config: AutoencoderConfig, images: torch.Tensor, iterations: int, lr: float, batch: int, seed: int) -> ConvAutoencoder:
    torch.manual_seed(seed)
    ae = ConvAutoencoder(config)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(iterations):
        x = images[torch.randint(len(images), (batch,), generator=gen)]
        x = torch.rot90(x, int(torch.randint(4, (1,), generator=gen)), dims=(-2, -1))
        loss = torch.nn.functional.mse_loss(ae(x), lowpass(x, config.target_sigma_px))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ae


@torch.no_grad()
def scores(ae: ConvAutoencoder, images: torch.Tensor, sigma_px: float) -> dict:
    out = ae(images)
    z = ae.encode(images)
    return {"r2_image": r_squared(out, images), "r2_lowpass": r_squared(out, lowpass(images, sigma_px)),
            "latent_spread": float(z.std(dim=0).mean() / z.abs().mean().clamp_min(1e-12))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="glob of training dataset files (with ground truth)")
    ap.add_argument("--unseen", required=True, help="glob of dataset files never trained on")
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--budget", type=int, default=250)
    ap.add_argument("--dose", type=float, default=1e4)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--sigma-px", type=float, default=1.5, help="low-pass of the 'seeing' target and of the second R^2, image pixels")
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--checkpoint", default="policy/checkpoints/policy.pt", help="shipped policy whose encoder is scored too ('' to skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="where the episodes reconstruct")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="bench/out/encoder_r2.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train_files, unseen_files = sorted(glob.glob(args.train)), sorted(glob.glob(args.unseen))
    if not train_files or not unseen_files:
        raise SystemExit("no files match --train or --unseen")
    t0, c0 = time.perf_counter(), time.process_time()
    seen = rollout_images(train_files, args.chunk, args.budget, args.dose, args.image_size, args.seed, args.device)
    unseen = rollout_images(unseen_files, args.chunk, args.budget, args.dose, args.image_size, args.seed + 100, args.device)
    print(f"images: {len(seen)} from {len(train_files)} training specimens, {len(unseen)} from {len(unseen_files)} unseen; "
          f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU")
    results = {}
    base = AutoencoderConfig(input_size=args.image_size, channels=(8, 16, 32, 64, 64, 64), latent_dim=64)
    for name in args.variants:
        update = {k: (args.sigma_px if v is None else v) for k, v in VARIANTS[name].items()}
        t1 = time.perf_counter()
        ae = train(base.model_copy(update=update), seen, args.iterations, args.lr, args.batch, args.seed)
        results[name] = {"train": scores(ae, seen, args.sigma_px), "unseen": scores(ae, unseen, args.sigma_px),
                         "train_s": time.perf_counter() - t1, "options": update}
    if args.checkpoint:
        from policy.checkpoint import load_policy

        shipped = load_policy(args.checkpoint).autoencoder
        if shipped.config.input_size == args.image_size:
            results["shipped"] = {"train": scores(shipped, seen, args.sigma_px), "unseen": scores(shipped, unseen, args.sigma_px)}
    print(f"{'encoder':>8} | R^2 unseen (image / low-passed) | R^2 train (image / low-passed) | latent spread unseen | train s")
    for name, r in results.items():
        u, s = r["unseen"], r["train"]
        print(f"{name:>8} | {u['r2_image']:+.3f} / {u['r2_lowpass']:+.3f} | {s['r2_image']:+.3f} / {s['r2_lowpass']:+.3f} | "
              f"{u['latent_spread']:.3f} | {r.get('train_s', 0):.0f}")
    best = max((r["unseen"]["r2_lowpass"] for n, r in results.items() if n != "shipped"), default=float("nan"))
    print(f"gate (R^2 >= 0.5 on unseen specimens, against the low-passed image): best {best:+.3f} -> {'met' if best >= 0.5 else 'NOT met'}; "
          f"total {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU, {args.threads} threads")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "results": results, "images": {"train": len(seen), "unseen": len(unseen)}}, f, indent=1)


if __name__ == "__main__":
    main()
