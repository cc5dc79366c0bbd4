"""The closed-loop demo: service + simulated detector + control-software stand-in on loopback.

1. Simulate a dense MoS2 raster with ground truth (the "specimen"; the detector
   replays its nearest raster frame for every probe position, with Poisson noise at
   the chosen dose).
2. Start ``ptychoscan sim-detector`` and ``ptychoscan serve`` as subprocesses on free
   loopback ports, exactly as they run in production.
3. Run the control-software loop (``sim_microscope.control_loop.run_scan``, public REST
   and the detector stream only) once with strategy ``adaptive`` (the shipped GRU
   policy) and once with ``sparse-grid``, same budget, chunk and dose per position.
4. Fetch both final reconstructions over REST, score SSIM against the ground truth over
   the scanned field, print both, and write a PNG of positions over reconstructions.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from pydantic import BaseModel, Field

from ptychoscan.net import free_port
from recon.dataset import Dataset4D, read_dataset, write_dataset
from recon.grid import ObjectGrid
from recon.metrics import ssim_against_ground_truth


class ClosedLoopConfig(BaseModel):
    """The demo's acquisition. Lengths nm, dose electrons per frame, times s."""

    out: Path = Path("out/demo")
    seed: int = Field(20_261_124, description="specimen seed (not among the training seeds)")
    scan_shape: tuple[int, int] = Field((40, 40), description="dense raster the detector replays")
    step_nm: float = Field(0.05, gt=0)
    budget_fraction: float = Field(0.05, gt=0, le=1, description="positions measured / dense raster (paper: 2.5-6 %)")
    sub_sequences: int = Field(5, ge=1, description="chunks the budget is split into")
    dose_per_frame: float = Field(10_000.0, gt=0, description="electrons per frame (Poisson)")
    defocus_nm: float = Field(
        10.0, description="probe defocus, nm: a defocused probe overlaps between sparse positions (in focus, a 5 % scan cannot be reconstructed)"
    )
    frame_time_s: float = Field(0.001, ge=0, description="detector frame time (dwell)")
    binning: int = Field(1, ge=1, description="detector binning of the simulated data and the reconstructor's model")
    strategies: tuple[str, ...] = ("adaptive", "sparse-grid")
    policy_checkpoint: Path | None = Field(None, description="None: the shipped checkpoint")
    timeout_s: float = Field(600.0, gt=0, description="give up on one scan after this long")


@dataclass
class StrategyOutcome:
    strategy: str
    session_id: str
    ssim: float
    positions_nm: np.ndarray
    potential: np.ndarray
    grid: ObjectGrid
    planner: str
    seconds: float


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{proc.args[3]} exited with code {proc.returncode}; last log lines:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout_s:.0f} s (log: {log})")


@contextlib.contextmanager
def _process(args: list[str], log: Path, env: dict | None = None):
    """Run ``python -m ptychoscan.cli ARGS`` with output to ``log``; SIGTERM (then SIGKILL) on exit."""
    handle = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ptychoscan.cli", *args], stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        handle.close()


def prepare_specimen(config: ClosedLoopConfig) -> tuple[Path, Dataset4D]:
    """Simulate (or reuse) the dense raster the detector replays."""
    from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset

    ny, nx = config.scan_shape
    path = config.out / f"specimen_{config.seed}_{ny}x{nx}_{config.step_nm:g}nm_df{config.defocus_nm:g}_b{config.binning}.h5"
    if path.exists():
        return path, read_dataset(path)
    sim = SimulationConfig(scan_shape=config.scan_shape, step_nm=config.step_nm, binning=config.binning, defocus_nm=config.defocus_nm)
    dataset = simulate_raster_dataset(sim, seed=config.seed, progress=True)
    write_dataset(path, dataset)
    return path, dataset


def fov_of(dataset: Dataset4D) -> tuple[float, float, float, float]:
    """(x0, y0, width, height) in nm spanned by a dataset's positions."""
    lo, hi = dataset.positions_nm.min(axis=0), dataset.positions_nm.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])


def _fetch_reconstruction(service: str, session_id: str) -> tuple[np.ndarray, ObjectGrid]:
    import io

    r = httpx.get(f"{service}/api/v1/sessions/{session_id}/reconstruction", headers={"Accept": "application/x-npy"}, timeout=30)
    r.raise_for_status()
    potential = np.load(io.BytesIO(r.content))
    origin = tuple(float(v) for v in r.headers["X-Origin-Nm"].split(","))
    return potential, ObjectGrid(origin, potential.shape, float(r.headers["X-Pixel-Nm"]))


def run_closed_loop(config: ClosedLoopConfig) -> tuple[Dataset4D, list[StrategyOutcome]]:
    """Run the demo end to end; returns the specimen's dense dataset and one outcome per strategy."""
    from sim_microscope.control_loop import ScanLoopConfig, run_scan

    config.out.mkdir(parents=True, exist_ok=True)
    source, dataset = prepare_specimen(config)
    fov = fov_of(dataset)
    n_raster = dataset.n_positions
    chunk = max(1, round(config.budget_fraction * n_raster / config.sub_sequences))
    budget = chunk * config.sub_sequences
    key = secrets.token_urlsafe(16)
    zmq_port, detector_rest, service_port = free_port(), free_port(), free_port()
    storage = config.out / "sessions"
    storage.mkdir(exist_ok=True)
    service_url = f"http://127.0.0.1:{service_port}"
    detector_url = f"http://127.0.0.1:{detector_rest}"
    serve_args = ["serve", "--port", str(service_port), "--storage", str(storage), "--api-key", key,
                  "--detector", f"tcp://127.0.0.1:{zmq_port}", "--log-level", "warning"]
    if config.policy_checkpoint is not None:
        serve_args += ["--policy", str(config.policy_checkpoint)]
    # Deadline off: with it, how far the intermediate reconstructions (the policy's input, the final one's
    # start) get depends on the machine's pace, and the two strategies' SSIMs moved by up to 0.012 between
    # runs; off, every run prints the same figures. The demo is one session, never short of time.
    service_env = {"PTYCHOSCAN_RECON_DETECTOR_BINNING": str(config.binning), "PTYCHOSCAN_RECON_DEADLINE_FRACTION": "null"}
    detector_args = ["sim-detector", "--source", str(source), "--port", str(zmq_port), "--rest-port", str(detector_rest),
                     "--dose", str(config.dose_per_frame), "--frame-time", str(config.frame_time_s), "--seed", str(config.seed)]
    outcomes = []
    with (
        _process(detector_args, config.out / "sim-detector.log") as detector,
        _process(serve_args, config.out / "service.log", service_env) as service,
    ):
        _wait_until_up(f"{detector_url}/detector/api/version/", detector, config.out / "sim-detector.log")
        _wait_until_up(f"{service_url}/readyz", service, config.out / "service.log")
        for strategy in config.strategies:
            start = time.perf_counter()
            result = run_scan(
                ScanLoopConfig(
                    service=service_url, microscope=detector_url, api_key=key, detector_endpoint=f"tcp://127.0.0.1:{zmq_port}",
                    fov_nm=fov, budget=budget, chunk=chunk, strategy=strategy, energy_ev=dataset.energy_ev,
                    convergence_mrad=dataset.convergence_mrad, detector_pixels=dataset.detector_pixels,
                    detector_pixel_mrad=dataset.detector_pixel_mrad, defocus_nm=dataset.defocus_nm, frame_time_s=config.frame_time_s,
                    total_timeout_s=config.timeout_s,
                ),
                progress=True,
            )
            seconds = time.perf_counter() - start
            session_id = result["session_id"]
            status = httpx.get(f"{service_url}/api/v1/sessions/{session_id}", timeout=10).json()
            potential, grid = _fetch_reconstruction(service_url, session_id)
            positions = _session_positions(storage / f"{session_id}.h5")
            outcomes.append(
                StrategyOutcome(
                    strategy=strategy,
                    session_id=session_id,
                    ssim=ssim_against_ground_truth(potential, grid, dataset.ground_truth, region_nm=fov),
                    positions_nm=positions,
                    potential=potential,
                    grid=grid,
                    planner=_planner_label(status),
                    seconds=seconds,
                )
            )
    return dataset, outcomes


def _session_positions(path: Path) -> np.ndarray:
    import h5py

    # The service keeps the file open (and locked) for writing; the session is done, so a
    # lock-free read of the issued positions is a consistent snapshot.
    with h5py.File(path, "r", locking=False) as f:
        return f["positions_issued_nm"][()]


def _planner_label(status: dict) -> str:
    strategy = status.get("strategy") or {}
    if isinstance(strategy, dict):
        name = strategy.get("planner_version") or strategy.get("used") or ""
        if strategy.get("fallback"):
            return f"{name} (fallback: {strategy['fallback']})"
        return str(name)
    return str(strategy)


def plot_outcomes(outcomes: list[StrategyOutcome], dataset: Dataset4D, out: Path) -> Path:
    """Positions over each strategy's reconstruction, next to the ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ptychoscan.plots import image_extent_nm
    from recon.metrics import ground_truth_on_grid

    grid = outcomes[0].grid
    fig, axes = plt.subplots(1, len(outcomes) + 1, figsize=(4.6 * (len(outcomes) + 1), 4.6))
    truth = ground_truth_on_grid(dataset.ground_truth, grid)
    x0, y0, w, h = fov_of(dataset)
    panels = [("ground truth (low-passed)", truth, None)] + [
        (f"{o.strategy}: SSIM {o.ssim:.3f}, {len(o.positions_nm)} positions", o.potential, o.positions_nm) for o in outcomes
    ]
    for ax, (title, image, positions) in zip(axes, panels, strict=True):
        ax.imshow(image, cmap="magma", extent=image_extent_nm(image.shape, grid.pixel_nm, grid.origin_nm))
        if positions is not None:
            order = np.arange(len(positions))
            ax.scatter(positions[:, 0], positions[:, 1], c=order, cmap="cool", s=9, edgecolors="white", linewidths=0.3)
        ax.add_patch(matplotlib.patches.Rectangle((x0, y0), w, h, fill=False, edgecolor="white", linestyle="--", linewidth=0.8))
        ax.set_xlim(x0 - 0.3, x0 + w + 0.3)
        ax.set_ylim(y0 + h + 0.3, y0 - 0.3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x (nm)")
    axes[0].set_ylabel("y (nm)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
