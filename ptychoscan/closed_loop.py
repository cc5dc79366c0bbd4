"""The closed-loop demo: service + simulated detector + control-software stand-in on loopback.

1. Simulate a specimen with ground truth (default: a MoS2 flake edge with vacuum, the
   paper's beam in focus, a 2 x 2 nm field); the detector simulates every frame at its
   exact probe position from the ground truth (``--from-truth``) with Poisson noise.
2. Start ``ptychoscan sim-detector`` and ``ptychoscan serve`` as subprocesses on free
   loopback ports, exactly as they run in production.
3. Run the control-software loop (``sim_microscope.control_loop.run_scan``, public REST
   and the detector stream only) once per strategy (``adaptive``: the shipped GRU policy,
   ``structure-guided``, ``sparse-grid``) at the same positions per nm^2, chunk and dose.
4. Score each session twice against the ground truth over the field: the service's own
   final reconstruction (fetched over REST), and a converged reconstruction of the
   session file's frames with the evaluation's final options, the same for every
   strategy (SSIM, Pearson r, Pearson r over the specimen); print and plot them.
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
from typing import Literal

import httpx
import numpy as np
from pydantic import BaseModel, Field

from ptychoscan.net import free_port
from recon.aberrations import ProbeAberrations
from recon.dataset import Dataset4D, read_dataset, write_dataset
from recon.grid import ObjectGrid
from recon.metrics import ssim_against_ground_truth
from sim_microscope.scan_errors import ScanErrors


class ClosedLoopConfig(BaseModel):
    """The demo's acquisition. Lengths nm, dose electrons per frame, times s."""

    out: Path = Path("out/demo")
    specimen: str = Field("flake", description="specimen kind (ptychoscan simulate --specimen)")
    seed: int = Field(250_000, description="specimen seed (the test split's range, not among the evaluation's test specimens)")
    scan_shape: tuple[int, int] = Field((11, 11), description="raster of the specimen file: its span is the field of view")
    step_nm: float = Field(0.2, gt=0, description="its step, nm (11 x 0.2 nm: a 2 x 2 nm field, the paper's)")
    from_truth: bool = Field(True, description="the detector simulates exact positions from the ground truth (else: nearest raster frame)")
    density_per_nm2: float = Field(62.5, gt=0, description="positions per nm^2 (paper: 62-125, i.e. 250-500 over 2 x 2 nm)")
    chunk: int = Field(50, ge=1, description="positions per sub-sequence (paper: 50-100)")
    dose_per_frame: float = Field(10_000.0, gt=0, description="electrons per frame (Poisson)")
    defocus_nm: float = Field(0.0, description="probe defocus, nm (in focus, as in the paper)")
    true_probe: ProbeAberrations | None = Field(
        None, description="the microscope's real probe when it is not the nominal one: the detector simulates with it, the service is told "
        "the nominal beam (defocus_nm, no astigmatism, no Cs)",
    )
    probe: Literal["nominal", "retrieve"] = Field("nominal", description="the sessions' probe: the nominal one, or retrieved by the service")
    scan_errors: ScanErrors | None = Field(
        None, description="the microscope's scan errors: the detector simulates where the beam lands, everyone is told where it was sent",
    )
    position_correction: bool = Field(False, description="the sessions ask the service to correct the positions in its converged reconstruction")
    frame_time_s: float = Field(0.001, ge=0, description="detector frame time (dwell)")
    binning: int = Field(2, ge=1, description="detector binning of the simulated specimen file (the paper's 2x binned 64 x 64)")
    strategies: tuple[str, ...] = ("adaptive", "structure-guided", "sparse-grid")
    policy_checkpoint: Path | None = Field(None, description="None: the shipped checkpoint")
    timeout_s: float = Field(600.0, gt=0, description="give up on one scan after this long")
    hold_s: float = Field(0.0, ge=0, description="keep the service up this long after the last scan, s (to look at its live view)")


@dataclass
class StrategyOutcome:
    strategy: str
    session_id: str
    ssim: float
    """SSIM of the service's own final reconstruction."""
    converged: dict
    """Scores (policy.scores.score_against_truth) of the session's frames reconstructed with the evaluation's final options."""
    positions_nm: np.ndarray
    potential: np.ndarray
    """The converged reconstruction (rad) on ``grid``."""
    grid: ObjectGrid
    planner: str
    seconds: float
    service_converged: dict | None = None
    """Scores of the service's own converged reconstruction (with the probe it retrieved, ``probe: retrieve``), None if not made."""
    probe: dict | None = None
    """The session's probe as the service reports it (source nominal or retrieved, and the aberrations)."""
    positions_corrected: dict | None = None
    """How the service's converged reconstruction moved the positions (``position_correction``), None if it did not."""
    live: dict | None = None
    """Scores (``policy.scores.score_against_truth``) of the service's own final live reconstruction (``ssim`` is its SSIM)."""


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
    from sim_microscope.specimens import SpecimenConfig

    ny, nx = config.scan_shape
    true = "" if config.true_probe is None else "_true" + "_".join(f"{v:g}" for v in config.true_probe.model_dump().values())
    path = config.out / f"specimen_{config.specimen}_{config.seed}_{ny}x{nx}_{config.step_nm:g}nm_df{config.defocus_nm:g}_b{config.binning}{true}.h5"
    if path.exists():
        return path, read_dataset(path)
    sim = SimulationConfig(scan_shape=config.scan_shape, step_nm=config.step_nm, binning=config.binning, defocus_nm=config.defocus_nm,
                           specimen=SpecimenConfig(kind=config.specimen), true_probe=config.true_probe)
    dataset = simulate_raster_dataset(sim, seed=config.seed, progress=True)
    write_dataset(path, dataset)
    return path, dataset


def service_args(port: int, storage: Path, key: str, detector: str) -> list[str]:
    """``ptychoscan serve`` arguments of the demo's service. The key goes as ``--api-key=KEY``: a random URL-safe key
    starting with '-' (1 in 32) was taken for an option and the service did not start."""
    return ["serve", "--port", str(port), "--storage", str(storage), f"--api-key={key}", "--detector", detector, "--log-level", "warning"]


def fov_of(dataset: Dataset4D) -> tuple[float, float, float, float]:
    """(x0, y0, width, height) in nm spanned by a dataset's positions."""
    lo, hi = dataset.positions_nm.min(axis=0), dataset.positions_nm.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])


def _fetch_reconstruction(service: str, session_id: str, kind: str = "live") -> tuple[np.ndarray, ObjectGrid]:
    import io

    r = httpx.get(f"{service}/api/v1/sessions/{session_id}/reconstruction", params={"kind": kind}, headers={"Accept": "application/x-npy"},
                  timeout=30)
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
    budget = max(1, round(config.density_per_nm2 * fov[2] * fov[3]))
    chunk = min(config.chunk, budget)
    key = secrets.token_urlsafe(16)
    zmq_port, detector_rest, service_port = free_port(), free_port(), free_port()
    storage = config.out / "sessions"
    storage.mkdir(exist_ok=True)
    service_url = f"http://127.0.0.1:{service_port}"
    detector_url = f"http://127.0.0.1:{detector_rest}"
    serve_args = service_args(service_port, storage, key, f"tcp://127.0.0.1:{zmq_port}")
    if config.policy_checkpoint is not None:
        serve_args += ["--policy", str(config.policy_checkpoint)]
    # Deadline off: with it, how far the intermediate reconstructions (the policy's input, the final one's
    # start) get depends on the machine's pace, and the two strategies' SSIMs moved by up to 0.012 between
    # runs; off, every run prints the same figures. The demo is one session, never short of time.
    service_env = {"PTYCHOSCAN_RECON_DEADLINE_FRACTION": "null"}
    detector_args = ["sim-detector", "--source", str(source), "--port", str(zmq_port), "--rest-port", str(detector_rest),
                     "--dose", str(config.dose_per_frame), "--frame-time", str(config.frame_time_s), "--seed", str(config.seed),
                     *(["--from-truth"] if config.from_truth else []), *scan_error_args(config.scan_errors)]
    outcomes = []
    with (
        _process(detector_args, config.out / "sim-detector.log") as detector,
        _process(serve_args, config.out / "service.log", service_env) as service,
    ):
        _wait_until_up(f"{detector_url}/detector/api/version/", detector, config.out / "sim-detector.log")
        _wait_until_up(f"{service_url}/readyz", service, config.out / "service.log")
        print(f"live view: {service_url}/live#key={key}", flush=True)
        for strategy in config.strategies:
            start = time.perf_counter()
            result = run_scan(
                ScanLoopConfig(
                    service=service_url, microscope=detector_url, api_key=key, detector_endpoint=f"tcp://127.0.0.1:{zmq_port}",
                    fov_nm=fov, budget=budget, chunk=chunk, strategy=strategy, energy_ev=dataset.energy_ev,
                    convergence_mrad=dataset.convergence_mrad, detector_pixels=dataset.detector_pixels,
                    detector_pixel_mrad=dataset.detector_pixel_mrad, defocus_nm=dataset.defocus_nm, probe=config.probe,
                    position_correction=config.position_correction,
                    frame_time_s=config.frame_time_s,
                    total_timeout_s=config.timeout_s,
                ),
                progress=True,
            )
            seconds = time.perf_counter() - start
            session_id = result["session_id"]
            status = httpx.get(f"{service_url}/api/v1/sessions/{session_id}", timeout=10).json()
            live_potential, live_grid = _fetch_reconstruction(service_url, session_id)
            live_scores = _scores(live_potential, live_grid, dataset, fov)
            positions = _session_positions(storage / f"{session_id}.h5")
            converged, potential, grid = converged_scores(storage / f"{session_id}.h5", dataset, fov)
            service_converged = None
            if config.probe == "retrieve" or config.position_correction:  # the converged reconstruction above uses the nominal probe and
                # positions; the service's, the retrieved probe and the corrected positions
                service_converged, status = _service_converged_scores(service_url, session_id, dataset, fov, config.timeout_s)
            outcomes.append(
                StrategyOutcome(
                    strategy=strategy,
                    session_id=session_id,
                    ssim=ssim_against_ground_truth(live_potential, live_grid, dataset.ground_truth, region_nm=fov),
                    converged=converged,
                    positions_nm=positions,
                    potential=potential,
                    grid=grid,
                    planner=_planner_label(status),
                    seconds=seconds,
                    service_converged=service_converged,
                    probe=status.get("probe"),
                    positions_corrected=(status.get("converged_reconstruction") or {}).get("positions"),
                    live=live_scores,
                )
            )
        if config.hold_s > 0:
            print(f"scans done; the service stays up {config.hold_s:g} s for the live view (Ctrl-C ends it): {service_url}/live#key={key}",
                  flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(config.hold_s)
    return dataset, outcomes


def _scores(potential: np.ndarray, grid: ObjectGrid, dataset: Dataset4D, fov) -> dict:
    from policy.scores import score_against_truth

    return score_against_truth(potential, grid, dataset.ground_truth, fov)


def converged_scores(session_file: Path, dataset: Dataset4D, fov) -> tuple[dict, np.ndarray, ObjectGrid]:
    """Reconstruct a finished session's frames with the evaluation's final options and score them over the field.

    The same reconstruction for every strategy (``policy.evaluation``'s final options and
    pass rule), so the strategies are compared on what they measured, not on how far the
    service's live reconstruction had got. Scores: ``policy.scores.score_against_truth``, as
    ``ptychoscan evaluate`` scores, the specimen region from ``sim_microscope.vacuum``. Detector pixels that are not
    measurements (the file's ``detector_mask`` and pixels at the pixel type's largest count) are left out of the loss, as
    in the service's reconstructions. Returns the scores, the potential (rad) and its grid.
    """
    import h5py

    from policy.evaluation import EvaluationOptions, final_passes
    from policy.scores import score_against_truth
    from recon.beam import probe_for
    from recon.convergence import reconstruct_with_backoff
    from recon.engine import Reconstructor, ScanChunk
    from recon.inputs import grid_for_dataset
    from recon.invalid_pixels import invalid_in_file

    with h5py.File(session_file, "r", locking=False) as f:
        raw = f["patterns"][()]  # the file's pixel type: its largest count marks a pixel
        invalid = invalid_in_file(f, raw)
        positions = f["positions_nm"][()]
    patterns = raw.astype(np.float32)
    options = EvaluationOptions()
    grid = grid_for_dataset(dataset, fov)
    rec = Reconstructor(probe_for(dataset), options.final_recon, device="auto")
    chunk = ScanChunk(patterns, positions, grid, invalid_pixels=invalid)
    (result,), _ = reconstruct_with_backoff(rec, [chunk], max_passes=final_passes(len(positions), options))
    return score_against_truth(result.potential, grid, dataset.ground_truth, fov), result.potential.numpy(), grid


def _service_converged_scores(service: str, session_id: str, dataset: Dataset4D, fov, timeout_s: float) -> tuple[dict | None, dict]:
    """(scores of the service's converged reconstruction or None, the session's final status), waiting up to ``timeout_s`` for it."""
    from policy.scores import score_against_truth

    deadline = time.monotonic() + timeout_s
    while True:
        status = httpx.get(f"{service}/api/v1/sessions/{session_id}", timeout=10).json()
        state = (status.get("converged_reconstruction") or {}).get("state")
        if state == "done":
            potential, grid = _fetch_reconstruction(service, session_id, kind="converged")
            return score_against_truth(potential, grid, dataset.ground_truth, fov), status
        if state in (None, "failed") or time.monotonic() > deadline:
            return None, status
        time.sleep(0.5)


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


def plot_outcomes(outcomes: list[StrategyOutcome], dataset: Dataset4D, out: Path, *, chunk: int, dose_per_frame: float) -> Path:
    """Positions over each strategy's reconstruction, next to the ground truth.

    Every panel shares one phase scale (colour bar in rad); positions are coloured by the
    sub-sequence (``chunk`` positions each) they were issued in; the dashed box is the field.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from ptychoscan.plots import image_extent_nm
    from recon.metrics import ground_truth_on_grid

    grid = outcomes[0].grid
    fig, axes = plt.subplots(1, len(outcomes) + 1, figsize=(4.6 * (len(outcomes) + 1) + 1.2, 4.9))
    truth = ground_truth_on_grid(dataset.ground_truth, grid)
    x0, y0, w, h = fov_of(dataset)
    panels = [("ground truth (low-passed)", truth, None)] + [
        (f"{o.strategy}: {len(o.positions_nm)} positions\nconverged: SSIM {o.converged['ssim']:.3f}, r {o.converged['pearson_r']:.3f}",
         o.potential, o.positions_nm) for o in outcomes
    ]
    lo, hi = np.percentile(truth, [0.5, 99.5])
    n_chunks = max(-(-len(o.positions_nm) // chunk) for o in outcomes)
    colours = plt.get_cmap("viridis", max(n_chunks, 2))
    image = None
    for ax, (title, phase, positions) in zip(axes, panels, strict=True):
        image = ax.imshow(phase, cmap="magma", vmin=lo, vmax=hi, extent=image_extent_nm(phase.shape, grid.pixel_nm, grid.origin_nm))
        if positions is not None:
            sub_sequence = np.arange(len(positions)) // chunk
            ax.scatter(positions[:, 0], positions[:, 1], c=colours(sub_sequence), s=9, edgecolors="white", linewidths=0.3)
        ax.add_patch(matplotlib.patches.Rectangle((x0, y0), w, h, fill=False, edgecolor="white", linestyle="--", linewidth=0.8))
        ax.text(x0, y0 - 0.05, f"field of view {w:.2f} x {h:.2f} nm", color="white", fontsize=7, va="bottom")
        ax.set_xlim(x0 - 0.3, x0 + w + 0.3)
        ax.set_ylim(y0 + h + 0.3, y0 - 0.3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x (nm)")
    axes[0].set_ylabel("y (nm)")
    n = len(outcomes[0].positions_nm)
    area = w * h
    fig.suptitle(f"{n} positions per scan ({n / area:.1f} per nm$^2$, sub-sequences of {chunk}), {dose_per_frame:g} e per position, "
                 f"{n * dose_per_frame / area:.3g} e/nm$^2$ in total, same for every strategy", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 0.9, 0.95))
    bar = fig.colorbar(image, ax=list(axes), fraction=0.015, pad=0.01)
    bar.set_label("phase (rad)")
    handles = [Line2D([], [], marker="o", linestyle="", color=colours(k), label=f"sub-sequence {k + 1}") for k in range(n_chunks)]
    fig.legend(handles=handles, loc="center right", fontsize=7, title="issued in", title_fontsize=8, frameon=False)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def scan_error_args(errors: ScanErrors | None) -> list[str]:
    """``sim-detector`` flags for ``errors`` (none for None)."""
    if errors is None or errors.is_zero:
        return []
    return ["--jitter-nm", str(errors.jitter_nm), "--drift-nm-per-position", *map(str, errors.drift_nm_per_position),
            "--scan-distortion", *map(str, errors.distortion), "--scan-error-seed", str(errors.seed)]
