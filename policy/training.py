"""Training stages: autoencoder, supervised pre-training to the sparse grid, REINFORCE.

All stages share one ``TrainConfig`` and one output folder:
``autoencoder.pt`` / ``pretrain.pt`` / ``rl.pt`` (resumable training checkpoints),
``policy.pt`` (the deployable model after the latest stage), ``metrics.jsonl`` (one
line per iteration) and ``<stage>_curve.png``. Run under ``torchrun`` for data-parallel
training (DDP; gloo on CPU, nccl on CUDA): each process runs ``batch / world_size``
episodes and gradients are averaged.

Pre-training target (``pretrain.target``): "sparse_grid" (the paper's): sub-sequence t is
the sparse grid of ``chunk`` positions with its in-cell offset taken from a rank-1 lattice
((0.5 + t/T) mod 1, (0.5 + 2t/T) mod 1), so sub-sequence 0 is the cell-centred sparse grid
(the first one the environment measures) and the T grids together interleave evenly;
"structure_guided": the structure-guided planner's choices on each specimen
(``policy.pretrain_targets``).
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from policy.baselines import interleaved_grids_unit
from policy.checkpoint import build_models, read_checkpoint, save_checkpoint, weights_digest
from policy.config import TrainConfig
from policy.models import lowpass
from policy.pretrain_targets import matched_mse, planner_rollouts
from policy.rl_objective import GaussianExploration, advantages, reward_to_go

STAGES = ("autoencoder", "pretrain", "rl")


@dataclass
class Context:
    config: TrainConfig
    out_dir: Path
    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(config: TrainConfig) -> Context:
    """Threads, seeds and (under torchrun) the process group."""
    torch.set_num_threads(config.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        # gloo, also on a GPU machine: training keeps its tensors on the CPU, which nccl cannot reduce
        # (seen on an H100: nccl made both torchrun ranks fail on their first all-reduce).
        dist.init_process_group("gloo")
    torch.manual_seed(config.seed + rank)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return Context(config, out, rank, world)


def teardown(ctx: Context) -> None:
    """Leave the process group cleanly (barrier, destroy); the caller then exits."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def target_sequence(chunk: int, n_sub: int) -> np.ndarray:
    """(T, chunk, 2) pre-training targets in fov units: interleaved sparse grids."""
    return np.stack(interleaved_grids_unit([chunk] * n_sub))


def resolve_datasets(patterns: list[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        hits = sorted(glob.glob(pattern))
        if not hits:
            raise FileNotFoundError(f"{pattern}: no training dataset matches")
        files.extend(hits)
    if not files:
        raise ValueError("no training datasets: set data.train in the config")
    return files


def make_env(config: TrainConfig, files: list[str], credit: str = "voronoi"):
    """Environment over the given dataset files, with the reconstructor of ``config.recon`` on ``config.device``."""
    from policy.env import ScanEnv, Specimen
    from recon.beam import probe_for
    from recon.dataset import read_dataset
    from recon.device import pick_device
    from recon.engine import Reconstructor
    from recon.options import ReconOptions

    device = pick_device(config.device)
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())  # a GPU per rank
    datasets = [read_dataset(f) for f in files]
    specimens = [Specimen.from_dataset(d, Path(f).stem, measurement=config.data.measurement,
                                       candidate_step_nm=config.data.candidate_step_nm, device=device)
                 for d, f in zip(datasets, files, strict=True)]
    rec = Reconstructor(probe_for(datasets[0]), ReconOptions(**config.recon), device=device)
    return ScanEnv(specimens, rec, config.model.policy.chunk, dose=config.data.dose,
                   image_size=config.model.autoencoder.input_size, credit=credit, reward_phase=config.rl.reward_phase,
                   reward=config.rl.reward)


def collect_rollouts(ctx: Context) -> dict:
    """Reconstruction images along the pre-training target sequence and along random scans (cached)."""
    path = ctx.out_dir / "rollouts.pt"
    if ctx.main and not path.exists():
        cfg = ctx.config
        env = make_env(cfg, resolve_datasets(cfg.data.train))
        n_sub = cfg.n_subsequences
        targets = target_sequence(cfg.model.policy.chunk, n_sub)
        rng = np.random.default_rng(cfg.seed)
        out = {}
        for kind in ("target", "random"):
            ids = list(range(len(env.specimens)))
            pos, img = env.reset(ids, seed=cfg.seed + (kind == "random"))
            positions, images = [pos], [img]
            for t in tqdm(range(1, n_sub), desc=f"rollouts ({kind})", unit="sub-seq"):
                prop = np.tile(targets[t][None], (len(ids), 1, 1)) if kind == "target" else rng.random((len(ids), cfg.model.policy.chunk, 2))
                pos, img, _, _ = env.step(prop)
                positions.append(pos)
                images.append(img)
            out[kind] = {"positions": torch.stack(positions, 1), "images": torch.stack(images, 1)}
        out["targets"] = torch.as_tensor(targets, dtype=torch.float32)
        torch.save(out, path)
    if ctx.distributed:
        dist.barrier()
    return torch.load(path, weights_only=False)


class Metrics:
    """Append-only JSONL metrics; on resume, lines past the resumed iteration are dropped."""

    def __init__(self, ctx: Context, stage: str, resume_from: int):
        self.path = ctx.out_dir / "metrics.jsonl"
        self.stage = stage
        self.enabled = ctx.main
        if self.enabled and self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and not _later(ln, stage, resume_from)]
            self.path.write_text("".join(k + "\n" for k in keep))

    def log(self, iteration: int, **values) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"stage": self.stage, "iteration": iteration, **values}) + "\n")


def _later(line: str, stage: str, iteration: int) -> bool:
    rec = json.loads(line)
    return rec.get("stage") == stage and rec.get("iteration", 0) >= iteration


def read_metrics(path: str | Path, stage: str) -> list[dict]:
    return [r for r in (json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()) if r.get("stage") == stage]


def plot_curve(metrics_path: Path, stage: str, keys: list[str], out: Path) -> Path | None:
    """Learning curve PNG of ``keys`` against iteration (raw and running mean of 10)."""
    rows = read_metrics(metrics_path, stage)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    it = np.array([r["iteration"] for r in rows])
    for ax, key in zip(axes[0], keys, strict=True):
        y = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        ax.plot(it, y, alpha=0.35, lw=0.8)
        if len(y) >= 10:
            ax.plot(it[9:], np.convolve(y, np.ones(10) / 10, mode="valid"), lw=1.6)
        ax.set_xlabel("iteration")
        ax.set_title(f"{stage}: {key}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(4, (1,), generator=gen))
    images = torch.rot90(images, k, dims=(-2, -1))
    return images.flip(-1) if int(torch.randint(2, (1,), generator=gen)) else images


def _resume(ctx: Context, stage: str, previous: str | None, ae, pol, optimizer, exploration: GaussianExploration | None = None) -> int:
    """Load this stage's checkpoint (resume) or the previous stage's weights; returns the start iteration."""
    own = ctx.out_dir / f"{stage}.pt"
    if own.exists():
        data = read_checkpoint(own)
        ae.load_state_dict(data["autoencoder"])
        pol.load_state_dict(data["policy"])
        if exploration is not None and "exploration" in data:
            exploration.load_state_dict(data["exploration"])
        optimizer.load_state_dict(data["optimizer"])
        return int(data["iteration"])
    if previous is not None:
        prev = ctx.out_dir / f"{previous}.pt"
        if not prev.exists():
            raise FileNotFoundError(f"{prev}: run `ptychoscan train {previous}` first")
        data = read_checkpoint(prev)
        ae.load_state_dict(data["autoencoder"])
        pol.load_state_dict(data["policy"])
    return 0


def _save(ctx: Context, stage: str, iteration: int, ae, pol, optimizer, exploration: GaussianExploration | None = None) -> None:
    if not ctx.main:
        return
    payload = {"config": ctx.config.model_dump(mode="json"), "autoencoder": ae.state_dict(), "policy": pol.state_dict(),
               "stage": stage, "iteration": iteration}
    own = {**payload, "optimizer": optimizer.state_dict()}
    if exploration is not None:
        own["exploration"] = exploration.state_dict()  # the training run's sigma; the deployed policy uses its means only
    save_checkpoint(ctx.out_dir / f"{stage}.pt", own)
    version = f"{stage}-{iteration}-{weights_digest(pol.state_dict())}"
    save_checkpoint(ctx.out_dir / "policy.pt", {**payload, "policy_version": version})


def _wrap(ctx: Context, module: torch.nn.Module) -> torch.nn.Module:
    return DistributedDataParallel(module) if ctx.distributed else module


def _loop(ctx: Context, stage: str, start: int, iterations: int, step, ae, pol, optimizer, curve_keys: list[str],
          exploration: GaussianExploration | None = None) -> None:
    metrics = Metrics(ctx, stage, start)
    bar = tqdm(range(start, iterations), desc=stage, unit="it", disable=not ctx.main, initial=start, total=iterations)
    for it in bar:
        t0, c0 = time.perf_counter(), time.process_time()
        values = step(it)
        values["time_s"] = round(time.perf_counter() - t0, 4)
        values["cpu_s"] = round(time.process_time() - c0, 4)  # this process, all its threads (wall on a shared machine misleads)
        metrics.log(it, **values)
        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in curve_keys}, refresh=False)
        if (it + 1) % ctx.config.checkpoint_every == 0 or it + 1 == iterations:
            _save(ctx, stage, it + 1, ae, pol, optimizer, exploration)
            if ctx.main:
                plot_curve(metrics.path, stage, curve_keys, ctx.out_dir / f"{stage}_curve.png")
    if start >= iterations:
        _save(ctx, stage, iterations, ae, pol, optimizer, exploration)
    if ctx.distributed:
        synced = pol if stage != "autoencoder" else ae
        if exploration is not None and exploration.learn:  # a learned sigma must stay the same on every rank too
            synced = torch.nn.ModuleDict({"policy": pol, "exploration": exploration})
        check_sync(ctx, stage, synced)


def check_sync(ctx: Context, stage: str, module: torch.nn.Module) -> list[str]:
    """All ranks' weight digests (written to ``ddp_sync.json``); raises if the replicas drifted apart."""
    digests: list[str | None] = [None] * ctx.world
    dist.all_gather_object(digests, weights_digest(module.state_dict()))
    if ctx.main:
        (ctx.out_dir / "ddp_sync.json").write_text(json.dumps({"stage": stage, "world_size": ctx.world, "digests": digests}))
    if len(set(digests)) != 1:
        raise RuntimeError(f"{stage}: DDP replicas differ after training ({digests})")
    return digests


def train_autoencoder(ctx: Context) -> None:
    cfg = ctx.config
    ae, pol = build_models(cfg)
    data = collect_rollouts(ctx)
    images = torch.cat([data[k]["images"].flatten(0, 1) for k in ("target", "random")])
    net = _wrap(ctx, ae)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.autoencoder.lr)
    start = _resume(ctx, "autoencoder", None, ae, pol, opt)
    per_rank = max(1, cfg.autoencoder.batch // ctx.world)

    def step(it: int) -> dict:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + it * 97 + ctx.rank)
        batch = _augment(images[torch.randint(len(images), (per_rank,), generator=gen)], gen)
        loss = torch.nn.functional.mse_loss(net(batch), lowpass(batch, cfg.model.autoencoder.target_sigma_px))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    _loop(ctx, "autoencoder", start, cfg.autoencoder.iterations, step, ae, pol, opt, ["loss"])


def pretrain_data(ctx: Context) -> dict[str, torch.Tensor]:
    """Teacher-forcing data of ``pretrain.target``: "positions" (N, T, chunk, 2) and "images" (N, T, 1, S, S) along the
    target's episodes, "targets" (N, T, chunk, 2); structure_guided rollouts are cached in their own file."""
    cfg = ctx.config
    if cfg.pretrain.target == "sparse_grid":
        data = collect_rollouts(ctx)
        positions = data["target"]["positions"]
        return {"positions": positions, "images": data["target"]["images"], "targets": data["targets"].expand(len(positions), -1, -1, -1)}
    path = ctx.out_dir / "rollouts_structure_guided.pt"
    if ctx.main and not path.exists():
        env = make_env(cfg, resolve_datasets(cfg.data.train))
        torch.save(planner_rollouts(env, cfg.n_subsequences, cfg.rl.budget, cfg.seed), path)
    if ctx.distributed:
        dist.barrier()
    return torch.load(path, weights_only=False)


def pretrain(ctx: Context) -> None:
    """Supervised: MSE between predicted means and the ``pretrain.target`` sub-sequences (teacher forcing)."""
    cfg = ctx.config
    ae, pol = build_models(cfg)
    opt = torch.optim.Adam(pol.parameters(), lr=cfg.pretrain.lr)
    start = _resume(ctx, "pretrain", "autoencoder", ae, pol, opt)
    data = pretrain_data(ctx)
    with torch.no_grad():
        imgs = data["images"]
        latents = ae.encode(imgs.flatten(0, 1)).reshape(*imgs.shape[:2], -1)
    positions, targets = data["positions"], data["targets"]
    net = _wrap(ctx, pol)
    per_rank = max(1, cfg.pretrain.batch // ctx.world)
    loss_fn = matched_mse if cfg.pretrain.loss == "matched" else torch.nn.functional.mse_loss

    def step(it: int) -> dict:
        gen = torch.Generator().manual_seed(cfg.seed * 7_919 + it * 31 + ctx.rank)
        pick = torch.randint(len(positions), (per_rank,), generator=gen)
        state, loss = None, 0.0
        n_sub = positions.shape[1]
        for t in range(n_sub - 1):
            mean, state = net(positions[pick, t], latents[pick, t], state)
            loss = loss + loss_fn(mean, targets[pick, t + 1])
        loss = loss / (n_sub - 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rms = loss.item() ** 0.5
        return {"loss": loss.item(), "rms_fov": rms}

    _loop(ctx, "pretrain", start, cfg.pretrain.iterations, step, ae, pol, opt, ["loss", "rms_fov"])


def reinforce(ctx: Context) -> None:
    """REINFORCE with a Gaussian policy (fixed, annealed or learned sigma; optional entropy bonus), discount rl.gamma
    (the paper: 0), Voronoi (or total) credit of rl.reward, baselines and normalised advantages (``policy.rl_objective``)."""
    cfg = ctx.config
    rl = cfg.rl
    ae, pol = build_models(cfg)
    exploration = GaussianExploration(rl.sigma, rl.learn_sigma, rl.sigma_min)
    groups = [{"params": list(pol.parameters())}]
    if rl.learn_sigma:
        groups.append({"params": [exploration.log_sigma], "lr": rl.sigma_lr})
    opt = torch.optim.Adam(groups, lr=rl.lr)
    per_rank = max(1, rl.batch // ctx.world)
    k = rl.rollouts_per_specimen
    if per_rank % k:
        raise ValueError(f"rl.batch per process ({per_rank}) must be a multiple of rl.rollouts_per_specimen ({k})")
    start = _resume(ctx, "rl", "pretrain", ae, pol, opt, exploration)
    env = make_env(cfg, resolve_datasets(cfg.data.train), credit=rl.credit)
    net = _wrap(ctx, pol)
    ae.requires_grad_(False)
    n_sub = cfg.n_subsequences

    def step(it: int) -> dict:
        rng = np.random.default_rng([cfg.seed, it, ctx.rank])
        ids = np.repeat(rng.integers(len(env.specimens), size=per_rank // k), k).tolist()
        pos, img = env.reset(ids, seed=int(rng.integers(2**31)), noise_groups=[b // k for b in range(per_rank)])
        std = exploration.std(rl.sigma_at(it))
        state, logps, rewards, totals = None, [], [], []
        for _ in range(1, n_sub):
            with torch.no_grad():
                z = ae.encode(img)
            mean, state = net(pos, z, state)
            gauss = torch.distributions.Normal(mean, std)
            action = gauss.sample()
            logps.append(gauss.log_prob(action).sum(-1))  # (B, chunk)
            pos, img, r, tot = env.step(action.clamp(0.0, 1.0))
            rewards.append(r * rl.reward_scale)
            totals.append(tot)
        logp = torch.stack(logps, 1)  # (B, T-1, chunk)
        reward = torch.stack(rewards, 1)
        if rl.gamma > 0:
            reward = reward_to_go(reward, rl.gamma)
        batch_mean = None
        if rl.baseline and k == 1 and ctx.distributed:
            batch_mean = reward.sum(0)
            dist.all_reduce(batch_mean)
            batch_mean = batch_mean / (per_rank * ctx.world)
        advantage = advantages(reward, k=k, baseline=rl.baseline, normalize=rl.normalize_advantages, batch_mean=batch_mean)
        entropy = exploration.entropy(std)
        loss = -(advantage * logp).sum() / (per_rank * (n_sub - 1)) - rl.entropy_coef * entropy * cfg.model.policy.chunk
        opt.zero_grad()
        loss.backward()
        if rl.learn_sigma and ctx.distributed:  # not a DDP module: average its gradient by hand
            dist.all_reduce(exploration.log_sigma.grad)
            exploration.log_sigma.grad /= ctx.world
        if rl.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(pol.parameters(), rl.max_grad_norm)
        opt.step()
        if rl.reward == "quality":  # totals are per-sub-sequence gains: log the episode's final quality instead
            final = torch.tensor([env.quality(ep) for ep in env.episodes])
        else:
            final = torch.stack(totals, 1)[:, -1]
        return {"loss": loss.item(), "reward": float(reward.sum(-1).mean()), "final_total_reward": float(final.mean()),
                "sigma": float(std.detach().mean()), "entropy": float(entropy.detach())}

    _loop(ctx, "rl", start, rl.iterations, step, ae, pol, opt, ["reward", "final_total_reward"], exploration)


def run_stage(stage: str, config: TrainConfig) -> Context:
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r} (choose {', '.join(STAGES)})")
    ctx = setup(config)
    {"autoencoder": train_autoencoder, "pretrain": pretrain, "rl": reinforce}[stage](ctx)
    return ctx


def pretrain_check(config: TrainConfig, checkpoint: str | Path, files: list[str] | None = None) -> dict:
    """How closely the deterministic policy reproduces the pre-training targets, free-running in the environment.

    Starts every episode with the sparse grid, then feeds the policy's means back as the
    next sub-sequences. Returns RMS and max deviation from the targets (fov units and nm)
    and the fraction of measured (snapped) positions equal to the snapped targets.
    """
    from policy.checkpoint import load_policy
    from policy.env import snap_to_unvisited

    loaded = load_policy(checkpoint)
    env = make_env(config, files or resolve_datasets(config.data.train))
    targets = target_sequence(config.model.policy.chunk, config.n_subsequences)
    ids = list(range(len(env.specimens)))
    pos, img = env.reset(ids, seed=config.seed)
    state, errors, same = None, [], []
    for t in range(1, config.n_subsequences):
        with torch.no_grad():  # (the reconstructor inside env.step needs autograd)
            mean, state = loaded.policy(pos, loaded.autoencoder.encode(img), state)
        errors.append(mean.numpy() - targets[t][None])
        visited = [ep.visited.copy() for ep in env.episodes]
        pos, img, _, _ = env.step(mean)
        for b, ep in enumerate(env.episodes):
            want = snap_to_unvisited(targets[t], ep.specimen.unit_positions, visited[b])
            same.append(np.mean(np.asarray(ep.indices[-len(want):]) == want))
    err = np.linalg.norm(np.stack(errors), axis=-1)  # (T-1, B, chunk)
    fov_nm = env.specimens[0].fov_nm[2]
    return {"rms_fov": float(np.sqrt((err**2).mean())), "max_fov": float(err.max()), "rms_nm": float(np.sqrt((err**2).mean()) * fov_nm),
            "raster_step_fov": float(1.0 / (np.sqrt(env.specimens[0].n_candidates) - 1)),
            "same_snapped_fraction": float(np.mean(same))}
