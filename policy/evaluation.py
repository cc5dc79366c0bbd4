"""Compare scanning strategies at equal positions and dose, the way a sceptical referee would.

For every dataset (a specimen with ground truth) and every noise seed, each strategy
measures the same number of positions (``density_per_nm2`` x the field's area, or
``budget``) at the same dose per position, in sub-sequences of ``chunk``:

- ``adaptive`` (the GRU policy) and ``structure-guided`` choose each next sub-sequence
  from a live reconstruction of what they measured so far (``live_recon``, warm-started
  after every sub-sequence, as in the service); ``structure-guided-oracle`` (extra) is
  the same rule fed the ground truth, the bound adaptivity could reach;
- ``sparse-grid`` (coarse-to-fine, as the service hands it out), ``random`` and
  ``low-discrepancy`` (scrambled Halton) are fixed; their draws change with the seed;
- ``full-raster-low-dose`` measures a dense raster (``full_raster_step_nm``) with the
  same total electrons spread over all its positions.

Every proposed position snaps to the nearest unmeasured candidate (the paper's 0.02 nm
raster, see ``policy.measurement``). Then EVERY strategy's positions are reconstructed
afresh with the same ``final_recon`` options and stopping rule (``recon.convergence``), so no strategy is handicapped by how its
scan was reconstructed along the way. Scores are computed over the same region (the
field) for every strategy by ``policy.scores``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

from policy.baselines import (
    apply_dose,
    candidate_raster,
    chunk_sizes,
    full_raster_low_dose,
    sparse_grid_coarse_to_fine,
    strategy_positions,
)
from policy.env import snap_to_unvisited
from policy.measurement import MeasurementSource, RasterSource, SimulatedSource
from policy.structure_guided import StructureGuidedOptions, StructureGuidedPlanner
from recon.beam import probe_for
from recon.convergence import reconstruct_in_batches, reconstruct_with_backoff
from recon.dataset import Dataset4D
from recon.engine import Reconstructor, ScanChunk
from recon.grid import ObjectGrid
from recon.inputs import fov_of, grid_for_dataset
from recon.metrics import ground_truth_on_grid
from recon.options import ReconOptions

STRATEGIES = ("adaptive", "structure-guided", "sparse-grid", "random", "low-discrepancy", "full-raster-low-dose")
ORACLE = "structure-guided-oracle"
ALL_STRATEGIES = (*STRATEGIES, ORACLE)
ADAPTIVE = ("adaptive", "structure-guided", ORACLE)


FINAL_STEP = 0.25
"""The final reconstruction's step as a fraction of a Newton step: the inverse probe illumination per position
(``precondition="absolute"``), the same at any number of positions."""


RECIPE_FIELDS = frozenset({"optimizer", "precondition", "step_size", "momentum", "batch_positions"})
"""A config's final_recon naming any of these is a recipe of its own, not a change to the default one."""


def default_final_recon() -> ReconOptions:
    """The final reconstruction every strategy gets, sparse or dense: full-batch gradient descent with Nesterov momentum 0.9.

    The step is ``FINAL_STEP`` over each pixel's probe illumination per position (sum_p |P_p|^2 / N, any probe): the loss is
    a mean over the scan's N positions, so this is the same fraction of a Newton step at any N. Measured on validation
    flakes and nanotubes: 1.0 diverges at 250 flake positions and on the 2,601-position flake raster, 0.5 is stable,
    0.25 has sparse scans plateau by pass 20-40, the flake raster by 20 and the 3,364-position nanotube raster by 40. A scan that still diverges is rerun
    with half the step until it does not (``recon.convergence.reconstruct_with_backoff``). bench/RESULTS.md, "One final
    reconstruction for every scan".
    """
    return ReconOptions(optimizer="gd", step_size=FINAL_STEP, momentum=0.9, precondition="absolute", batch_positions=None, iterations=60)


class EvaluationOptions(BaseModel):
    """How strategies are compared; lengths in nm, dose in electrons per measured position."""

    model_config = ConfigDict(extra="forbid")

    density_per_nm2: float = Field(125.0, gt=0, description="positions per nm^2 of the field (paper: 62-125, i.e. 250-500 over 2x2 nm)")
    budget: int | None = Field(None, ge=1, description="positions per scan; overrides density_per_nm2")
    chunk: int = Field(50, ge=1, description="positions per sub-sequence (paper: 50-100)")
    dose: float = Field(1e4, gt=0, description="electrons per measured position (Poisson)")
    seeds: int = Field(3, ge=1, description="noise draws per dataset (random patterns are redrawn too)")
    seed: int = Field(0, description="base seed")
    candidate_step_nm: float = Field(0.02, gt=0, description="raster of candidate positions, nm (the paper's 0.02 nm)")
    full_raster_step_nm: float = Field(0.04, gt=0, description="step of full-raster-low-dose, nm (same total dose whatever the step)")
    measurement: Literal["auto", "simulate", "raster"] = Field(
        "auto", description="simulate patterns from the ground truth on demand, or snap to the file's raster; auto: simulate when possible"
    )
    strategies: tuple[str, ...] = STRATEGIES
    oracle: bool = Field(True, description="also run structure-guided fed the ground truth (the bound for the target)")
    final_recon: ReconOptions = Field(default_factory=default_final_recon, description="its iterations are the most passes run")
    final_position_updates: int | None = Field(
        None, ge=1, description="None (default): every scan gets final_recon.iterations passes; a number: passes = this / positions, "
        "within [final_min_passes, final_recon.iterations] (for mini-batch optimizers, whose passes make more updates on more positions)"
    )
    final_min_passes: int = Field(10, ge=1, description="fewest passes of the final reconstruction")
    final_tolerance: float = Field(
        0.0, ge=0, description="> 0: also stop once the loss fell by less than this (relative) over 5 passes (off: on noisy sparse "
        "scans the loss flattens long before the field has converged; the default recipe's momentum would restart every 5 passes)"
    )
    live_recon: ReconOptions = Field(default_factory=lambda: ReconOptions(iterations=5), description="warm-started after every sub-sequence")
    planner: StructureGuidedOptions = Field(default_factory=StructureGuidedOptions)
    max_batch: int = Field(8, ge=1, description="scans reconstructed in one batched call (memory)")

    @field_validator("final_recon", mode="before")
    @classmethod
    def _final_recon_over_default(cls, value):
        """A config's ``final_recon`` fields change the default recipe, the fields it leaves out keep the default's; unless it
        names another optimizer, preconditioner, step or batch: then the recipe is its own (ReconOptions' defaults for the rest)."""
        if isinstance(value, dict) and not RECIPE_FIELDS & value.keys():
            return {**default_final_recon().model_dump(), **value}
        return value


@dataclass
class Case:
    """One dataset prepared for evaluation."""

    name: str
    dataset: Dataset4D
    fov_nm: tuple[float, float, float, float]
    grid: ObjectGrid
    source: MeasurementSource
    specimen_kind: str
    full_raster_patterns: np.ndarray | None = None
    """Noise-free patterns of the full raster, simulated once and shared by the noise seeds."""

    @cached_property
    def truth_on_grid(self) -> np.ndarray:
        """The ground truth low-passed and sampled on ``grid`` (rad): the oracle's input and the figure's reference."""
        return ground_truth_on_grid(self.dataset.ground_truth, self.grid)

    @property
    def area_nm2(self) -> float:
        return self.fov_nm[2] * self.fov_nm[3]

    @property
    def beam_key(self) -> tuple:
        d = self.dataset
        return (d.energy_ev, d.convergence_mrad, d.detector_pixels, d.detector_pixel_mrad, d.defocus_nm)

    def budget(self, options: EvaluationOptions) -> int:
        n = options.budget or max(1, round(options.density_per_nm2 * self.area_nm2))
        if n > len(self.source.candidates_nm):
            raise ValueError(f"{self.name}: budget {n} exceeds its {len(self.source.candidates_nm)} candidate positions")
        return n


def prepare_case(dataset: Dataset4D, name: str, options: EvaluationOptions, device=None) -> Case:
    """A Case: field = the dataset's positions' bounding box; simulated candidates when the ground truth allows."""
    fov = fov_of(dataset.positions_nm)
    mode = options.measurement
    if mode == "auto":
        mode = "simulate" if dataset.ground_truth is not None else "raster"
    if dataset.ground_truth is None:
        raise ValueError(f"{name}: evaluation needs a dataset with ground truth")
    source = SimulatedSource(dataset, fov, options.candidate_step_nm, device) if mode == "simulate" else RasterSource(dataset)
    kind = dataset.specimen_kind or "unknown"
    return Case(name, dataset, fov, grid_for_dataset(dataset, fov), source, kind)


@dataclass
class Run:
    """One strategy's scan of one case under one noise seed, and its final reconstruction."""

    case: Case
    seed_index: int
    strategy: str
    positions_nm: np.ndarray
    potential: torch.Tensor | None = None
    loss_history: list[float] = field(default_factory=list)
    final_step: float | None = None
    """The final reconstruction's step (smaller than final_recon's where its loss diverged and it was rerun)."""


@dataclass
class _Episode:
    case: Case
    seed_index: int
    rng: np.random.Generator
    visited: np.ndarray
    indices: list[int] = field(default_factory=list)
    patterns: list[np.ndarray] = field(default_factory=list)
    potential: torch.Tensor | None = None

    @property
    def positions_nm(self) -> np.ndarray:
        return self.case.source.candidates_nm[self.indices]

    def measure(self, proposed_nm: np.ndarray, dose: float) -> None:
        """Snap to unmeasured candidates (nearest in nm), take their patterns at ``dose``."""
        idx = snap_to_unvisited(np.asarray(proposed_nm, dtype=np.float64), self.case.source.candidates_nm, self.visited)
        self.indices.extend(idx.tolist())
        self.patterns.append(apply_dose(self.case.source.noise_free(idx), dose, self.rng))


def _adaptive_positions(episodes: list[_Episode], strategy: str, options: EvaluationOptions, live: Reconstructor, runner,
                        planner: StructureGuidedPlanner, bar) -> None:
    """Measure every episode sub-sequence by sub-sequence, planning each next one from what was measured."""
    budget = episodes[0].case.budget(options)
    sizes = chunk_sizes(budget, options.chunk)
    states = None
    for k, size in enumerate(sizes):
        if k == 0:
            for ep in episodes:
                first = (runner.first_positions(ep.case.fov_nm, size) if strategy == "adaptive"
                         else sparse_grid_coarse_to_fine(ep.case.fov_nm, budget)[:size])
                ep.measure(first, options.dose)
            if strategy == "adaptive":
                states = [runner.new_state(ep.case.fov_nm) for ep in episodes]
        else:
            for b, ep in enumerate(episodes):
                grid = ep.case.grid
                if strategy == "adaptive":
                    proposal, states[b] = runner.next_positions(states[b], ep.potential, grid, ep.positions_nm, size)
                else:
                    oracle = strategy == ORACLE
                    pot = ep.potential.numpy() if not oracle else ep.case.truth_on_grid
                    proposal = planner.next_positions(pot, grid.origin_nm, grid.pixel_nm, ep.case.fov_nm, ep.positions_nm, size,
                                                      measured_only=not oracle, budget=budget)
                ep.measure(proposal, options.dose)
        if strategy != ORACLE and k < len(sizes) - 1:
            scans = [ScanChunk(np.concatenate(ep.patterns), ep.positions_nm, ep.case.grid) for ep in episodes]
            results = reconstruct_in_batches(live, scans, [ep.potential for ep in episodes], options.max_batch)
            for ep, res in zip(episodes, results, strict=True):
                ep.potential = res.potential
        bar.update(size * len(episodes))


def run_group(cases: list[Case], options: EvaluationOptions, runner=None, device=None, progress: bool = True) -> list[Run]:
    """Every strategy on every case (all of one beam and detector) and noise seed; returns the runs with final potentials."""
    strategies = list(options.strategies) + ([ORACLE] if options.oracle and "structure-guided" in options.strategies else [])
    if "adaptive" in strategies and runner is None:
        raise ValueError("the adaptive strategy needs a policy checkpoint")
    probe = probe_for(cases[0].dataset)
    final = Reconstructor(probe, options.final_recon, device=device)
    live = Reconstructor(probe, options.live_recon, device=device)
    planner = StructureGuidedPlanner(options.planner)
    runs: list[Run] = []
    total = sum(c.budget(options) for c in cases) * options.seeds * len(strategies)
    bar = tqdm(total=total, desc="evaluate", unit="pos", disable=not progress)
    for strategy in strategies:
        bar.set_postfix(strategy=strategy)
        episodes = [
            _Episode(c, s, np.random.default_rng(draw_key(options.seed, s, c.name, strategy)), np.zeros(len(c.source.candidates_nm), bool))
            for c in cases for s in range(options.seeds)
        ]
        if strategy == "full-raster-low-dose":
            scans = [_full_raster(ep, options) for ep in episodes]
            bar.update(sum(ep.case.budget(options) for ep in episodes))
        else:
            if strategy in ADAPTIVE:
                for group in _by_key(episodes, lambda ep: ep.case.budget(options)).values():  # one sub-sequence plan per budget
                    _adaptive_positions(group, strategy, options, live, runner, planner, bar)
            else:
                for ep in episodes:
                    ep.measure(strategy_positions(strategy, ep.case.fov_nm, ep.case.budget(options),
                                                  position_seed(options.seed, ep.seed_index, ep.case.name)), options.dose)
                    bar.update(ep.case.budget(options))
            scans = [ScanChunk(np.concatenate(ep.patterns), ep.positions_nm, ep.case.grid) for ep in episodes]
        results: list = [None] * len(scans)
        pass_counts = [final_passes(len(scan.positions_nm), options) for scan in scans]
        final_bar = tqdm(total=sum(pass_counts), desc=f"final reconstruction ({strategy})", unit="pass", disable=not progress, leave=False)
        for passes, idx in _by_key(list(range(len(scans))), pass_counts.__getitem__).items():
            done, steps = reconstruct_with_backoff(final, [scans[i] for i in idx], max_passes=passes, tolerance=options.final_tolerance,
                                                   max_batch=options.max_batch, on_pass=lambda _, potentials, bar=final_bar: _advance(bar, len(potentials)))
            for i, res, step in zip(idx, done, steps, strict=True):
                results[i] = (res, step)
        final_bar.close()
        for ep, scan, (res, step) in zip(episodes, scans, results, strict=True):
            runs.append(Run(ep.case, ep.seed_index, strategy, np.asarray(scan.positions_nm), res.potential, res.loss_history, step))
    bar.close()
    return runs


def draw_key(seed: int, seed_index: int, case_name: str, strategy: str = "") -> list[int]:
    """The seed of one (dataset, noise seed, strategy) draw, from names, not from places in a list.

    So a run's noise (and the random strategy's positions) are the same whichever other datasets or strategies share
    the call: before, they came from the dataset's and the strategy's indices, and splitting a table over processes or
    leaving a strategy out changed every draw (bench/RESULTS.md, third session).
    """
    return [seed, seed_index, zlib.crc32(case_name.encode()), zlib.crc32(strategy.encode())]


def position_seed(seed: int, seed_index: int, case_name: str) -> int:
    """The seed of a fixed strategy's positions (random, low-discrepancy) for one dataset and noise seed, from its name."""
    return int(np.random.SeedSequence(draw_key(seed, seed_index, case_name)).generate_state(1)[0])


def _advance(bar, n: int) -> None:
    """``bar.update(n)``, growing its total first if a back-off rerun takes it past it."""
    if bar.total is not None and bar.n + n > bar.total:
        bar.total = bar.n + n
    bar.update(n)


def _by_key(items: list, key) -> dict:
    """``items`` grouped by ``key(item)``, in order of first appearance."""
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def final_passes(n_positions: int, options: EvaluationOptions) -> int:
    """Passes of the final reconstruction of a scan of ``n_positions`` (the same work for every strategy, see the options)."""
    if options.final_position_updates is None:
        return options.final_recon.iterations
    passes = math.ceil(options.final_position_updates / max(n_positions, 1))
    return min(options.final_recon.iterations, max(options.final_min_passes, passes))


def _full_raster(ep: _Episode, options: EvaluationOptions) -> ScanChunk:
    """The dense raster at the same total dose as the budget's positions."""
    budget = ep.case.budget(options)
    source = ep.case.source
    if isinstance(source, SimulatedSource):
        positions = candidate_raster(ep.case.fov_nm, options.full_raster_step_nm)
        if ep.case.full_raster_patterns is None or len(ep.case.full_raster_patterns) != len(positions):
            ep.case.full_raster_patterns = source.patterns_at(positions)
        patterns = apply_dose(ep.case.full_raster_patterns, options.dose * budget / len(positions), ep.rng)
    else:
        positions = source.candidates_nm
        patterns = full_raster_low_dose(source.noise_free(np.arange(len(positions))), budget, options.dose, int(ep.rng.integers(2**31)))
    return ScanChunk(patterns, positions, ep.case.grid)


def evaluate(cases: list[Case], options: EvaluationOptions, runner=None, device=None, progress: bool = True) -> list[Run]:
    """``run_group`` for each group of cases that share beam and detector (one probe per group)."""
    groups: dict[tuple, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.beam_key, []).append(c)
    runs: list[Run] = []
    for group in groups.values():
        runs.extend(run_group(group, options, runner, device, progress))
    return runs


def positions_per_nm2(n: int, fov_nm) -> float:
    """Sampling density of n positions over a field (x0, y0, width, height) nm."""
    area = float(fov_nm[2]) * float(fov_nm[3])
    return n / area if area > 0 else math.inf
