"""The scanning environment: one episode = one specimen (a dataset file).

The agent proposes sub-sequences of continuous positions in fov units [0, 1]^2; each
proposed position snaps to the nearest candidate position not yet visited (greedily, in
order, so a sub-sequence never repeats a position). The candidates and their patterns
come from a ``policy.measurement`` source, as in the evaluation: the file's own dense
raster (``measurement="raster"``), or candidates on a 0.02 nm raster over the field with
patterns simulated on demand from the file's ground truth (``"simulate"``: the paper's
regime without storing a 10,000-pattern raster per specimen). After every sub-sequence the whole history of each episode is
reconstructed, all episodes of a batch in ONE batched ``Reconstructor.reconstruct``
call, each warm-started from its previous potential.

Rewards (Schloz et al. 2023, gamma = 0): the Voronoi diagram of all positions measured
so far is computed on the reconstruction's pixels inside the fov (jump flooding); the
reward of position m is the reconstructed phase summed over m's cell divided by P, the
number of positions measured so far. ``credit="total"`` instead gives every position
of the sub-sequence the total (the sum over all cells, i.e. over the fov, / P).

Which phase is summed (``reward_phase``): a constant added to V is invisible in the
intensities (a global phase factor), so the reconstructor never changes the mean of V
and the literal sum of V over the fov stays ~0 whatever was scanned ("raw", the paper's
wording). "contrast" (default) sums |V - mean over the fov|, the phase contrast
recovered, which does not depend on that unobservable constant. On training specimen
mos2_0800 (10 nm defocus, 80 positions) it ranks sparse grid >= random > a clustered
scan, as SSIM does (bench/RESULTS.md "Policy").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from policy.baselines import apply_dose, sparse_grid_unit, to_unit
from policy.measurement import MeasurementSource, RasterSource, SimulatedSource
from policy.models import reconstruction_image
from policy.quality_reward import fitted_error, initial_error, quality_rewards
from policy.voronoi import cell_sums, jfa_voronoi
from recon.dataset import Dataset4D
from recon.engine import Reconstructor, ScanChunk
from recon.grid import ObjectGrid
from recon.inputs import fov_of, grid_for_dataset
from recon.metrics import ground_truth_on_grid

MEASUREMENTS = ("raster", "simulate", "auto")


@dataclass
class Specimen:
    """A dataset prepared for episodes: its field, reconstruction grid and where its patterns come from."""

    dataset: Dataset4D
    fov_nm: tuple[float, float, float, float]
    grid: ObjectGrid
    name: str = ""
    source: MeasurementSource | None = None
    """Candidates and their noise-free patterns; None: the dataset's raster."""

    def __post_init__(self):
        if self.source is None:
            self.source = RasterSource(self.dataset)
        self.unit_positions = to_unit(self.source.candidates_nm, self.fov_nm)
        """(N, 2) candidate positions in fov units."""

    @classmethod
    def from_dataset(cls, dataset: Dataset4D, name: str = "", *, measurement: str = "raster", candidate_step_nm: float = 0.02,
                     device=None, cached_patterns: int | None = 1024) -> Specimen:
        """The field is the bounding box of the dataset's positions; ``measurement`` as in the module docstring ("auto":
        simulate when the file has a ground truth); ``device`` runs the on-demand simulation, which keeps the
        ``cached_patterns`` most recently used patterns (a 2 x 2 nm field has 10,201 candidates: ~170 MB of 64 x 64
        patterns, per specimen, for the whole run)."""
        if measurement not in MEASUREMENTS:
            raise ValueError(f"unknown measurement {measurement!r} (use {', '.join(MEASUREMENTS)})")
        if measurement == "auto":
            measurement = "simulate" if dataset.ground_truth is not None else "raster"
        if measurement == "simulate" and dataset.ground_truth is None:
            raise ValueError(f"{name or 'dataset'}: measurement 'simulate' needs a dataset with a ground truth")
        fov = fov_of(dataset.positions_nm)
        source = (SimulatedSource(dataset, fov, candidate_step_nm, device, cache_limit=cached_patterns) if measurement == "simulate"
                  else RasterSource(dataset))
        return cls(dataset, fov, grid_for_dataset(dataset, fov), name, source)

    @property
    def n_candidates(self) -> int:
        return len(self.unit_positions)


@dataclass
class Episode:
    specimen: Specimen
    rng: np.random.Generator
    visited: np.ndarray
    indices: list[int] = field(default_factory=list)
    patterns: list[np.ndarray] = field(default_factory=list)
    potential: torch.Tensor | None = None
    error: torch.Tensor | None = None
    """reward "quality": the fitted error map over the field after the last sub-sequence (``policy.quality_reward``)."""

    @property
    def positions_nm(self) -> np.ndarray:
        return self.specimen.source.candidates_nm[self.indices]


def snap_to_unvisited(unit_positions: np.ndarray, raster_unit: np.ndarray, visited: np.ndarray) -> np.ndarray:
    """Indices of the nearest unvisited raster positions, greedily in order; marks them visited.

    ``unit_positions`` (n, 2) and ``raster_unit`` (N, 2) are in fov units; ``visited`` (N,)
    bool is updated in place.
    """
    n_free = int((~visited).sum())
    if len(unit_positions) > n_free:
        raise ValueError(f"asked for {len(unit_positions)} positions but only {n_free} raster positions are left")
    d2 = ((np.asarray(unit_positions)[:, None, :] - raster_unit[None, :, :]) ** 2).sum(-1)
    out = np.empty(len(unit_positions), dtype=np.int64)
    for i in range(len(unit_positions)):
        row = np.where(visited, np.inf, d2[i])
        j = int(np.argmin(row))
        visited[j] = True
        out[i] = j
    return out


def fov_crop(grid: ObjectGrid, fov_nm) -> tuple[slice, slice]:
    """Row and column slices of the grid pixels whose centres lie inside the fov."""
    x0, y0, width, height = fov_nm
    c0 = max(0, math.ceil((x0 - grid.origin_nm[0]) / grid.pixel_nm - 1e-9))
    r0 = max(0, math.ceil((y0 - grid.origin_nm[1]) / grid.pixel_nm - 1e-9))
    c1 = min(grid.shape[1], math.floor((x0 + width - grid.origin_nm[0]) / grid.pixel_nm + 1e-9) + 1)
    r1 = min(grid.shape[0], math.floor((y0 + height - grid.origin_nm[1]) / grid.pixel_nm + 1e-9) + 1)
    return slice(r0, r1), slice(c0, c1)


def crop_pixels(grid: ObjectGrid, rows: slice, cols: slice, positions_nm: np.ndarray) -> np.ndarray:
    """(N, 2) positions (x, y) in pixels of the crop ``grid[rows, cols]`` (``fov_crop``), pixel centres at integers."""
    origin = np.array([grid.origin_nm[0] + cols.start * grid.pixel_nm, grid.origin_nm[1] + rows.start * grid.pixel_nm])
    return (np.asarray(positions_nm, dtype=np.float64) - origin) / grid.pixel_nm


REWARD_PHASES = ("contrast", "raw")
REWARDS = ("phase", "quality")


def position_rewards(episode: Episode, new: int, credit: str = "voronoi", reward_phase: str = "contrast") -> tuple[np.ndarray, float]:
    """Rewards (new,) of the last ``new`` positions and the total reward of the episode's reconstruction."""
    spec = episode.specimen
    rows, cols = fov_crop(spec.grid, spec.fov_nm)
    phase = episode.potential[rows, cols].to(torch.float32)
    if reward_phase == "contrast":
        phase = (phase - phase.mean()).abs()
    elif reward_phase != "raw":
        raise ValueError(f"unknown reward_phase {reward_phase!r} (use {' or '.join(REWARD_PHASES)})")
    seeds = torch.as_tensor(crop_pixels(spec.grid, rows, cols, episode.positions_nm), dtype=torch.float32)[None]
    p = seeds.shape[1]
    total = float(phase.sum()) / p
    if credit == "total":
        return np.full(new, total), total
    if credit != "voronoi":
        raise ValueError(f"unknown credit {credit!r} (use 'voronoi' or 'total')")
    labels = jfa_voronoi(seeds, tuple(phase.shape))
    sums = cell_sums(labels, phase[None], p)[0].numpy() / p
    return sums[p - new :], total


class ScanEnv:
    """A batch of episodes stepped together.

    Args:
        specimens: the prepared datasets episodes are drawn from.
        reconstructor: runs after every sub-sequence, batched over episodes.
        chunk: positions per sub-sequence (the first one is a sparse grid).
        dose: electrons per position (Poisson / binomial, see ``apply_dose``); None: patterns as stored.
        image_size: side of the normalised reconstruction image handed to the encoder.
        credit: "voronoi" or "total" reward assignment.
        reward_phase: "contrast" (|V - mean|) or "raw" (V) summed per cell, see the module docstring.
        reward: "phase" (the paper's, above) or "quality" (the gain in fit to the ground truth, ``policy.quality_reward``;
            the datasets need a ground truth).
    """

    def __init__(self, specimens: list[Specimen], reconstructor: Reconstructor, chunk: int, *, dose: float | None = None,
                 image_size: int = 64, credit: str = "voronoi", reward_phase: str = "contrast", reward: str = "phase"):
        if not specimens:
            raise ValueError("the environment needs at least one specimen")
        if credit not in ("voronoi", "total"):
            raise ValueError(f"unknown credit {credit!r} (use 'voronoi' or 'total')")
        if reward_phase not in REWARD_PHASES:
            raise ValueError(f"unknown reward_phase {reward_phase!r} (use {' or '.join(REWARD_PHASES)})")
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r} (use {' or '.join(REWARDS)})")
        if reward == "quality" and any(sp.dataset.ground_truth is None for sp in specimens):
            raise ValueError("reward 'quality' needs datasets with a ground truth")
        self.reward_phase = reward_phase
        self.reward = reward
        self._truths: dict[int, torch.Tensor] = {}
        self.specimens = specimens
        self.reconstructor = reconstructor
        self.chunk = chunk
        self.dose = dose
        self.image_size = image_size
        self.credit = credit
        self.episodes: list[Episode] = []

    def reset(self, specimen_indices: list[int], seed: int, first: np.ndarray | None = None,
              noise_groups: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Start one episode per index with the sparse-grid sub-sequence (or ``first`` (B, n, 2), fov units).

        ``noise_groups`` (B,): episodes of one group draw their noise from the same seed (common random numbers, for
        leave-one-out baselines); None: every episode its own.
        Returns (first positions (B, n, 2) in fov units as measured, images (B, 1, S, S)).
        """
        groups = list(range(len(specimen_indices))) if noise_groups is None else list(noise_groups)
        if len(groups) != len(specimen_indices):
            raise ValueError(f"noise_groups has {len(groups)} entries for {len(specimen_indices)} episodes")
        self.episodes = [
            Episode(self.specimens[i], np.random.default_rng([seed, g]), np.zeros(self.specimens[i].n_candidates, bool))
            for i, g in zip(specimen_indices, groups, strict=True)
        ]
        if first is None:
            first = np.tile(sparse_grid_unit(self.chunk)[None], (len(self.episodes), 1, 1))
        positions, images, _, _ = self.step(first)
        return positions, images

    def step(self, unit_positions: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Measure one sub-sequence per episode, reconstruct all episodes in one batched call.

        Args:
            unit_positions: (B, n, 2) proposed positions in fov units (clipped into [0, 1]);
                n is normally ``chunk``.

        Returns measured positions (B, n, 2) in fov units, encoder images (B, 1, S, S),
        per-position rewards (B, n) and total rewards (B,).
        """
        proposed = np.clip(np.asarray(torch.as_tensor(unit_positions).detach().cpu(), dtype=np.float64), 0.0, 1.0)
        if proposed.ndim != 3 or proposed.shape[0] != len(self.episodes) or proposed.shape[2] != 2 or proposed.shape[1] < 1:
            raise ValueError(f"positions must be (B={len(self.episodes)}, n, 2), got {proposed.shape}")
        new = proposed.shape[1]
        measured = np.empty_like(proposed)
        for ep, prop, out in zip(self.episodes, proposed, measured, strict=True):
            idx = snap_to_unvisited(prop, ep.specimen.unit_positions, ep.visited)
            ep.indices.extend(idx.tolist())
            ep.patterns.append(apply_dose(ep.specimen.source.noise_free(idx), self.dose, ep.rng))
            out[:] = ep.specimen.unit_positions[idx]
        scans = [ScanChunk(np.concatenate(ep.patterns), ep.positions_nm, ep.specimen.grid) for ep in self.episodes]
        results = self.reconstructor.reconstruct(scans, init=[ep.potential for ep in self.episodes])
        rewards = np.empty((len(self.episodes), new))
        totals = np.empty(len(self.episodes))
        images = []
        for b, (ep, res) in enumerate(zip(self.episodes, results, strict=True)):
            ep.potential = res.potential
            if self.reward == "quality":
                rewards[b], totals[b] = self._quality_rewards(ep, new)
            else:
                rewards[b], totals[b] = position_rewards(ep, new, self.credit, self.reward_phase)
            images.append(reconstruction_image(res.potential, res.grid, ep.specimen.fov_nm, self.image_size))
        return (torch.as_tensor(measured, dtype=torch.float32), torch.stack(images), torch.as_tensor(rewards, dtype=torch.float32),
                torch.as_tensor(totals, dtype=torch.float32))

    def quality(self, ep: Episode) -> float:
        """reward "quality": the episode's fitted quality q (Pearson r^2 against the ground truth) after its last sub-sequence."""
        if ep.error is None:
            raise ValueError("no quality yet: the environment's reward is not 'quality' or nothing was measured")
        return 1.0 - float(ep.error.sum())

    def _quality_rewards(self, ep: Episode, new: int) -> tuple[np.ndarray, float]:
        """reward "quality": per-position error falls and the quality gain of the last ``new`` positions."""
        spec = ep.specimen
        rows, cols = fov_crop(spec.grid, spec.fov_nm)
        key = id(spec)
        if key not in self._truths:
            self._truths[key] = torch.as_tensor(ground_truth_on_grid(spec.dataset.ground_truth, spec.grid)[rows, cols])
        truth = self._truths[key]
        before = ep.error if ep.error is not None else initial_error(truth)  # a fresh episode (reset) has none yet
        ep.error = fitted_error(ep.potential[rows, cols], truth)
        return quality_rewards(before, ep.error, crop_pixels(spec.grid, rows, cols, ep.positions_nm[-new:]), self.credit)
