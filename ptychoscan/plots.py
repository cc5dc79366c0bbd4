"""PNG figures people look at: ground truth with scan positions, diffraction patterns."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_extent_nm(shape: tuple[int, int], pixel_nm: float, origin_nm: tuple[float, float]) -> list[float]:
    """matplotlib extent (left, right, bottom, top) of an image indexed [y, x] with y down."""
    h, w = shape
    x0, y0 = origin_nm[0] - pixel_nm / 2, origin_nm[1] - pixel_nm / 2
    return [x0, x0 + w * pixel_nm, y0 + h * pixel_nm, y0]


def plot_dataset_overview(
    phase: np.ndarray,
    pixel_nm: float,
    origin_nm: tuple[float, float],
    positions_nm: np.ndarray,
    patterns: np.ndarray,
    out: str | Path,
    *,
    title: str = "",
    n_patterns: int = 4,
) -> Path:
    """Ground-truth phase with the scan positions, next to a few patterns (log scale).

    The phase is shown band-limited (Gaussian of 0.02 nm) and cropped to the scanned
    region plus a margin, so atoms read as atoms rather than as sub-pixel spikes.
    """
    from scipy.ndimage import gaussian_filter

    plt = _pyplot()
    phase = gaussian_filter(np.asarray(phase, dtype=np.float64), sigma=max(0.02 / pixel_nm, 0.5))
    margin = 0.3
    lo = (positions_nm.min(axis=0) - margin - np.asarray(origin_nm)) / pixel_nm
    hi = (positions_nm.max(axis=0) + margin - np.asarray(origin_nm)) / pixel_nm
    x0, y0 = np.maximum(np.floor(lo).astype(int), 0)
    x1, y1 = np.ceil(hi).astype(int) + 1
    phase = phase[y0:y1, x0:x1]
    origin_nm = (origin_nm[0] + x0 * pixel_nm, origin_nm[1] + y0 * pixel_nm)
    fig, axes = plt.subplots(1, 1 + n_patterns, figsize=(4 + 2.6 * n_patterns, 4), gridspec_kw={"width_ratios": [1.6] + [1] * n_patterns})
    ax = axes[0]
    im = ax.imshow(phase, cmap="magma", extent=image_extent_nm(phase.shape, pixel_nm, origin_nm))
    ax.plot(positions_nm[:, 0], positions_nm[:, 1], ".", ms=1.5, color="cyan", alpha=0.6)
    ax.set_xlabel("x (nm)")
    ax.set_ylabel("y (nm)")
    ax.set_title(title or "ground-truth phase (rad) and scan")
    fig.colorbar(im, ax=ax, fraction=0.046)
    picks = np.linspace(0, len(patterns) - 1, n_patterns).astype(int)
    for axis, index in zip(axes[1:], picks, strict=True):
        axis.imshow(np.log10(patterns[index].astype(np.float64) + 1e-6), cmap="viridis")
        axis.set_title(f"pattern {index}\n({positions_nm[index, 0]:.2f}, {positions_nm[index, 1]:.2f}) nm", fontsize=9)
        axis.set_axis_off()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
