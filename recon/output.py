"""Reconstruction files (docs/DESIGN.md section 4) and their PNG."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from recon.dataset import GroundTruth
from recon.engine import ReconResult
from recon.options import ReconOptions


def write_reconstruction(
    path: str | os.PathLike, result: ReconResult, positions_nm: np.ndarray, options: ReconOptions, *, source: str = "", ssim: float | None = None
) -> Path:
    """Write ``phase`` (attrs pixel_nm, origin_nm), ``positions_nm``, ``loss_history`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = "ptychoscan-reconstruction"
            f.attrs["version"] = 1
            f.attrs["source"] = str(source)
            f.attrs["options"] = options.model_dump_json()
            if ssim is not None:
                f.attrs["ssim"] = float(ssim)
            phase = f.create_dataset("phase", data=result.potential.numpy().astype(np.float32))
            phase.attrs["pixel_nm"] = float(result.grid.pixel_nm)
            phase.attrs["origin_nm"] = np.asarray(result.grid.origin_nm, dtype=np.float64)
            f.create_dataset("positions_nm", data=np.asarray(positions_nm, dtype=np.float64))
            f.create_dataset("loss_history", data=np.asarray(result.loss_history, dtype=np.float64))
            if result.positions_nm is not None:  # position correction
                corrected = f.create_dataset("corrected_positions_nm", data=np.asarray(result.positions_nm, dtype=np.float64))
                corrected.attrs["scan_matrix"] = np.asarray(result.scan_matrix, dtype=np.float64)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def plot_reconstruction(
    out: str | os.PathLike, result: ReconResult, positions_nm: np.ndarray, ground_truth: GroundTruth | None = None, ssim: float | None = None
) -> Path:
    """PNG: reconstructed phase with the positions used, the ground truth on the same grid, and the loss history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ptychoscan.plots import image_extent_nm
    from recon.metrics import ground_truth_on_grid

    panels = 3 if ground_truth is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.3 * panels, 4))
    extent = image_extent_nm(result.grid.shape, result.grid.pixel_nm, result.grid.origin_nm)
    im = axes[0].imshow(result.potential.numpy(), cmap="magma", extent=extent)
    axes[0].plot(positions_nm[:, 0], positions_nm[:, 1], ".", ms=1.2, color="cyan", alpha=0.5)
    axes[0].set_title(f"reconstruction, {len(positions_nm)} positions" + (f"\nSSIM {ssim:.3f}" if ssim is not None else ""))
    fig.colorbar(im, ax=axes[0], fraction=0.046, label="V (rad)")
    if ground_truth is not None:
        im = axes[1].imshow(ground_truth_on_grid(ground_truth, result.grid), cmap="magma", extent=extent)
        axes[1].set_title("ground truth (low-passed, on grid)")
        fig.colorbar(im, ax=axes[1], fraction=0.046)
    for ax in axes[: panels - 1]:
        ax.set_xlabel("x (nm)")
        ax.set_ylabel("y (nm)")
    axes[-1].semilogy(np.arange(1, len(result.loss_history) + 1), result.loss_history, "o-")
    axes[-1].set_xlabel("iteration")
    axes[-1].set_title("loss per position")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
