"""Tiny training setups shared by the policy tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_tiny_datasets(folder: Path, n: int = 2) -> list[str]:
    """n tiny simulated raster datasets (8x8 positions, 32x32 patterns), seeds 0..n-1."""
    from recon.dataset import write_dataset
    from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset

    cfg = SimulationConfig(scan_shape=(8, 8), step_nm=0.08, detector_pixels=32, detector_pixel_mrad=3.0, binning=1, oversample=2)
    folder.mkdir(parents=True, exist_ok=True)
    return [str(write_dataset(folder / f"tiny_{s}.h5", simulate_raster_dataset(cfg, seed=s))) for s in range(n)]


def write_tiny_config(path: Path, files: list[str], out_dir: Path, **stage_iterations: int) -> Path:
    config = {
        "model": {
            "autoencoder": {"input_size": 32, "channels": [4, 4, 8, 8, 8, 8], "latent_dim": 8},
            "policy": {"chunk": 4, "input_size": 8, "hidden": 8, "gru_layers": 2},
        },
        "data": {"train": files, "dose": 10000.0},
        "recon": {"iterations": 2, "detector_binning": 1},
        "autoencoder": {"iterations": stage_iterations.get("autoencoder", 2), "lr": 1e-3, "batch": 4},
        "pretrain": {"iterations": stage_iterations.get("pretrain", 2), "lr": 1e-2, "batch": 4},
        "rl": {"iterations": stage_iterations.get("rl", 2), "lr": 1e-2, "batch": 4, "budget": 12},
        "out_dir": str(out_dir),
        "threads": 1,
        "checkpoint_every": 1,
    }
    path.write_text(yaml.safe_dump(config))
    return path
