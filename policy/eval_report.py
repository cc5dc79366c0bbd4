"""What an evaluation leaves behind besides its JSON: figures and the final reconstructions as files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policy.env import fov_crop
from recon.engine import ReconResult
from recon.options import ReconOptions
from recon.output import write_reconstruction


def save_reconstructions(runs, out_dir: str | Path, options: ReconOptions) -> list[Path]:
    """Each strategy's final reconstruction of the first noise seed as ``out_dir/<dataset stem>/<strategy>.h5``.

    The reconstruction output format (``phase`` with attrs ``pixel_nm`` and ``origin_nm``,
    ``positions_nm``, ``loss_history``) on the case's grid, which covers the whole field.
    """
    paths = []
    for run in runs:
        if run.seed_index != 0:
            continue
        result = ReconResult(run.potential, run.case.grid, run.loss_history)
        used = options if run.final_step is None else options.model_copy(update={"step_size": run.final_step})  # after a back-off
        paths.append(write_reconstruction(Path(out_dir) / run.case.name / f"{run.strategy}.h5", result, run.positions_nm, used,
                                          source=run.case.name))
    return paths


def plot_positions(runs, out: str | Path, max_datasets: int = 4) -> Path:
    """Reconstructions over the field with their positions: a row per dataset (first noise seed), a column per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = [r for r in runs if r.seed_index == 0]
    names = list(dict.fromkeys(r.case.name for r in first))[:max_datasets]
    strategies = list(dict.fromkeys(r.strategy for r in first))
    fig, axes = plt.subplots(len(names), len(strategies) + 1, figsize=(2.4 * (len(strategies) + 1), 2.5 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        case = next(r.case for r in first if r.case.name == name)
        x0, y0, w, h = case.fov_nm
        extent = [x0, x0 + w, y0 + h, y0]
        rows, cols = fov_crop(case.grid, case.fov_nm)
        truth = case.truth_on_grid[rows, cols]
        axes[i, 0].imshow(truth, cmap="gray", extent=extent)
        axes[i, 0].set_ylabel(f"{name}\n{case.specimen_kind}", fontsize=7)
        if i == 0:
            axes[i, 0].set_title("ground truth", fontsize=8)
        for j, strategy in enumerate(strategies, start=1):
            run = next(r for r in first if r.case.name == name and r.strategy == strategy)
            image = run.potential.numpy()[rows, cols]
            ax = axes[i, j]
            ax.imshow(image, cmap="gray", extent=extent)
            pos = run.positions_nm
            if len(pos) <= 1500:
                ax.scatter(pos[:, 0], pos[:, 1], s=1.5, c=np.arange(len(pos)), cmap="autumn", linewidths=0)
            if i == 0:
                ax.set_title(f"{strategy}\n({len(pos)} positions)", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_quality_vs_positions(table: dict, out: str | Path, metric: str = "pearson_r_specimen") -> Path:
    """Mean ``metric`` against the number of positions, a line per strategy, a panel per class.

    ``table[class][strategy]`` is a list of (n_positions, mean, std).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(table)
    fig, axes = plt.subplots(1, len(classes), figsize=(4.2 * len(classes), 3.4), squeeze=False)
    for ax, cls in zip(axes[0], classes, strict=True):
        for strategy, points in table[cls].items():
            pts = np.asarray(sorted(points), dtype=float)
            ax.errorbar(pts[:, 0], pts[:, 1], yerr=pts[:, 2], marker="o", ms=3, capsize=2, label=strategy)
        ax.set_xlabel("positions")
        ax.set_ylabel(metric)
        ax.set_title(cls)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
