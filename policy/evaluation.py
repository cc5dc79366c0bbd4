"""Compare scanning strategies on dense-raster datasets with ground truth.

Every strategy measures ``budget`` positions in sub-sequences of ``chunk``; after each
sub-sequence the history is reconstructed (warm-started, batched over the datasets),
exactly as in the environment. Positions snap to the nearest unvisited raster position.
Each measured position gets ``dose`` electrons (Poisson); ``full-raster-low-dose``
measures all N raster positions at ``dose * budget / N`` each (same total electrons),
reconstructed in one call with n_sub x the iterations. The reference "full raster" is all N
positions at ``dose`` each. Scores: SSIM against the ground truth over the fov
(recon.metrics.ssim_against_ground_truth) and SSIM against the full-raster
reconstruction (both standardised, over the fov).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from policy.baselines import STRATEGIES, apply_dose, full_raster_low_dose, strategy_positions, to_unit
from policy.env import ScanEnv, Specimen, fov_crop
from recon.engine import Reconstructor, ScanChunk
from recon.metrics import ssim, ssim_against_ground_truth


@dataclass
class StrategyRun:
    dataset: str
    strategy: str
    positions_nm: np.ndarray
    potential: torch.Tensor
    extra: dict = field(default_factory=dict)


def _standardised_fov(potential: torch.Tensor, specimen: Specimen) -> np.ndarray:
    rows, cols = fov_crop(specimen.grid, specimen.fov_nm)
    img = potential[rows, cols].double().numpy()
    return (img - img.mean()) / (img.std() or 1.0)


def _all_positions(rec: Reconstructor, specimens: list[Specimen], patterns: list[np.ndarray], n_sub: int) -> list[torch.Tensor]:
    """Reconstruct all raster positions of each specimen at once with n_sub times the iterations (same total work per position)."""
    options = rec.options.model_copy(update={"iterations": rec.options.iterations * n_sub})
    full = Reconstructor(rec.probe, options, device=rec.device)
    scans = [ScanChunk(p, s.dataset.positions_nm, s.grid) for s, p in zip(specimens, patterns, strict=True)]
    return [r.potential for r in full.reconstruct(scans)]


def run_strategies(specimens: list[Specimen], rec: Reconstructor, runner, budget: int, chunk: int, dose: float | None,
                   seed: int = 0, strategies: tuple[str, ...] = STRATEGIES) -> tuple[list[StrategyRun], list[torch.Tensor]]:
    """Run every strategy on every specimen; returns the runs and the full-raster reference potentials."""
    n_all = min(s.dataset.n_positions for s in specimens)
    if budget > n_all:
        raise ValueError(f"budget {budget} exceeds the {n_all} raster positions of the smallest dataset")
    sizes = [chunk] * (budget // chunk) + ([budget % chunk] if budget % chunk else [])
    n_sub = len(sizes)
    runs: list[StrategyRun] = []
    bar = tqdm(total=len(strategies) + 1, desc="evaluate", unit="strategy")
    ids = list(range(len(specimens)))
    for strategy in strategies:
        bar.set_postfix(strategy=strategy)
        if strategy == "full-raster-low-dose":
            pats = [full_raster_low_dose(s.dataset.patterns, budget, dose, seed + i) for i, s in enumerate(specimens)]
            for s, pot in zip(specimens, _all_positions(rec, specimens, pats, n_sub), strict=True):
                runs.append(StrategyRun(s.name, strategy, s.dataset.positions_nm, pot))
            bar.update()
            continue
        env = ScanEnv(specimens, rec, chunk, dose=dose, image_size=runner.image_size if runner else 64)
        if strategy == "adaptive":
            if runner is None:
                raise ValueError("the adaptive strategy needs a policy checkpoint")
            first = np.stack([to_unit(runner.first_positions(s.fov_nm, sizes[0]), s.fov_nm) for s in specimens])
            env.reset(ids, seed, first)
            states = [runner.new_state(s.fov_nm) for s in specimens]
            for size in sizes[1:]:
                proposals = []
                for b, ep in enumerate(env.episodes):
                    pos_nm, states[b] = runner.next_positions(states[b], ep.potential, ep.specimen.grid, ep.positions_nm, size)
                    proposals.append(to_unit(pos_nm, ep.specimen.fov_nm))
                env.step(np.stack(proposals))
        else:
            unit = [to_unit(strategy_positions(strategy, s.fov_nm, budget, seed + i), s.fov_nm) for i, s in enumerate(specimens)]
            start = 0
            for k, size in enumerate(sizes):
                props = np.stack([u[start : start + size] for u in unit])
                if k == 0:
                    env.reset(ids, seed, props)
                else:
                    env.step(props)
                start += size
        for ep in env.episodes:
            runs.append(StrategyRun(ep.specimen.name, strategy, ep.positions_nm.copy(), ep.potential))
        bar.update()
    bar.set_postfix(strategy="full-raster reference")
    rng = np.random.default_rng(seed + 999)
    reference = _all_positions(rec, specimens, [apply_dose(s.dataset.patterns, dose, rng) for s in specimens], n_sub)
    bar.update()
    bar.close()
    return runs, reference


def score(runs: list[StrategyRun], specimens: list[Specimen], reference: list[torch.Tensor]) -> list[dict]:
    """One result row per run: SSIM vs ground truth and vs the full-raster reconstruction."""
    by_name = {s.name: (s, ref) for s, ref in zip(specimens, reference, strict=True)}
    rows = []
    for run in runs:
        spec, ref = by_name[run.dataset]
        gt = spec.dataset.ground_truth
        s_gt = None if gt is None else ssim_against_ground_truth(run.potential, spec.grid, gt, spec.fov_nm)
        s_ref = ssim(_standardised_fov(run.potential, spec), _standardised_fov(ref, spec))
        rows.append({"dataset": run.dataset, "strategy": run.strategy, "n_positions": len(run.positions_nm),
                     "ssim": s_gt, "ssim_vs_full_raster": float(s_ref)})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per strategy: mean, std, min, max of both SSIMs over datasets."""
    out = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        sel = [r for r in rows if r["strategy"] == strategy]
        entry = {"n_datasets": len(sel), "n_positions": sel[0]["n_positions"]}
        for key in ("ssim", "ssim_vs_full_raster"):
            vals = np.array([r[key] for r in sel if r[key] is not None], dtype=float)
            if len(vals):
                entry[key] = {"mean": float(vals.mean()), "std": float(vals.std()), "min": float(vals.min()), "max": float(vals.max())}
        out[strategy] = entry
    return out


def format_table(summary: dict) -> str:
    lines = [f"{'strategy':<22}{'positions':>10}{'SSIM vs truth':>22}{'SSIM vs full raster':>24}"]
    for strategy, e in summary.items():
        def cell(key, e=e):
            v = e.get(key)
            return f"{v['mean']:.3f} +- {v['std']:.3f}" if v else "n/a"
        lines.append(f"{strategy:<22}{e['n_positions']:>10}{cell('ssim'):>22}{cell('ssim_vs_full_raster'):>24}")
    return "\n".join(lines)


def plot_runs(runs: list[StrategyRun], specimens: list[Specimen], reference: list[torch.Tensor], out: str | Path,
              max_datasets: int = 3) -> Path:
    """Reconstructions (fov) with their positions: one row per dataset, one column per strategy + reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = list(dict.fromkeys(r.strategy for r in runs))
    specs = specimens[:max_datasets]
    fig, axes = plt.subplots(len(specs), len(strategies) + 1, figsize=(2.6 * (len(strategies) + 1), 2.7 * len(specs)), squeeze=False)
    for i, spec in enumerate(specs):
        x0, y0, w, h = spec.fov_nm
        extent = [x0, x0 + w, y0 + h, y0]
        for j, strategy in enumerate([*strategies, "full raster"]):
            ax = axes[i, j]
            if strategy == "full raster":
                pot, pos = reference[i], None
            else:
                run = next(r for r in runs if r.dataset == spec.name and r.strategy == strategy)
                pot, pos = run.potential, run.positions_nm
            ax.imshow(_standardised_fov(pot, spec), cmap="gray", extent=extent)
            if pos is not None and len(pos) <= 2000:
                ax.scatter(pos[:, 0], pos[:, 1], s=3 if len(pos) < 500 else 0.3, c=np.arange(len(pos)), cmap="autumn")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(strategy, fontsize=9)
        axes[i, 0].set_ylabel(spec.name, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
