"""Probe retrieval before the scan: the aberrations that best explain the patterns measured so far.

A generalisation of ``recon.probe_fit.estimate_defocus`` from one coefficient picked
from a list to defocus, two-fold astigmatism (magnitude and angle) and Cs fitted
together. The objective of a set of aberrations is the final data loss of a short
reconstruction of (at most ``max_positions`` of) the positions with the probe they make:
the right probe explains the patterns with one object, a wrong one cannot (the loss is
comparable across probes because the patterns and the probes are normalised the same
way). It needs no raster and no vacuum pattern, only overlapping positions, so it works
on the first chunk of a sparse adaptive scan. The search runs in three stages:

1. defocus on a grid (astigmatism 0, Cs as given);
2. astigmatism on a polar grid (magnitudes x angles) at that defocus;
3. Nelder-Mead over (defocus, C12a, C12b, Cs) from the best point so far, C12a/C12b being
   the Cartesian astigmatism |C12| (cos 2 phi12, sin 2 phi12), continuous where the angle wraps.

With ``global_search`` off, stages 1 and 2 are skipped: the starting aberrations are
scored first and stage 3 searches around them (a refinement of an earlier estimate on
more positions; it never returns a point that scored worse than its start).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import minimize

from recon.aberrations import ProbeAberrations
from recon.engine import Reconstructor, ScanChunk
from recon.options import ReconOptions


class RetrievalOptions(BaseModel):
    """How to search the aberrations. Units: nm for defocus and astigmatism, deg, um for Cs."""

    model_config = ConfigDict(extra="forbid")

    max_positions: int = Field(256, ge=4, description="positions used (when there are more: see ``subset``)")
    subset: Literal["central", "random"] = Field(
        "central",
        description="which positions when there are more than max_positions: the ones nearest the centre of the scanned field (the "
        "densest overlap: a sharper loss minimum, measured on MoS2) or a seeded random subset",
    )
    iterations: int = Field(5, ge=1, description="passes of each short reconstruction")
    recon: ReconOptions = Field(
        default_factory=lambda: ReconOptions(), description="options of the short reconstructions (iterations is set from ``iterations``)"
    )
    defocus_range_nm: tuple[float, float] = Field((-20.0, 20.0), description="stage 1: defocus grid from, to (nm)")
    defocus_step_nm: float = Field(2.0, gt=0, description="stage 1: defocus grid step (nm)")
    astigmatism_magnitudes_nm: tuple[float, ...] = Field((1.5, 3.0, 4.5), description="stage 2: |C12| values tried (nm); empty: skip")
    astigmatism_angles: int = Field(6, ge=1, description="stage 2: angles tried per magnitude, evenly over [0, 180) deg")
    fit_astigmatism: bool = Field(True, description="fit C12 (else it stays 0)")
    fit_cs: bool = Field(True, description="fit Cs in stage 3 (else it stays at the starting value)")
    refine_evaluations: int = Field(80, ge=0, description="stage 3: Nelder-Mead evaluations (0: no refinement)")
    refine_steps: tuple[float, float, float] = Field(
        (1.0, 1.0, 2.0), description="stage 3: initial simplex steps: defocus and astigmatism (nm), Cs (um)"
    )
    seed: int = Field(0, description="seed of the random position subset")
    global_search: bool = Field(
        True, description="run stages 1 and 2 (the defocus and astigmatism grids); off: score the start, then only stage 3 around it"
    )

    @model_validator(mode="after")
    def _check(self) -> RetrievalOptions:
        lo, hi = self.defocus_range_nm
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"defocus_range_nm must be finite with from <= to, got {self.defocus_range_nm}")
        if any(not (m > 0 and math.isfinite(m)) for m in self.astigmatism_magnitudes_nm):
            raise ValueError(f"astigmatism_magnitudes_nm must be positive, got {self.astigmatism_magnitudes_nm}")
        if any(not s > 0 for s in self.refine_steps):
            raise ValueError(f"refine_steps must be positive, got {self.refine_steps}")
        return self


@dataclass
class RetrievalResult:
    """The retrieved aberrations and how they were found."""

    aberrations: ProbeAberrations
    loss: float
    """Final loss of the short reconstruction with them."""
    evaluations: list[tuple[ProbeAberrations, float]] = field(default_factory=list)
    """Every (aberrations, loss) tried, in order."""
    positions_used: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0


def retrieve_aberrations(
    chunk: ScanChunk,
    *,
    energy_ev: float,
    convergence_mrad: float,
    start: ProbeAberrations | None = None,
    options: RetrievalOptions | None = None,
    device=None,
    between: Callable[[], None] | None = None,
) -> RetrievalResult:
    """Estimate defocus, two-fold astigmatism and Cs from a scan's patterns (no truth needed).

    Args:
        chunk: the patterns and nominal positions so far, on their grid (``chunk.grid``'s
            pixel must be the reconstruction pixel for K = the pattern size).
        energy_ev: beam energy (eV); convergence_mrad: probe semi-angle (mrad).
        start: where the search starts (the nominal beam); its Cs is kept when
            ``options.fit_cs`` is off, and stage 1 uses it.
        options: ``RetrievalOptions``.
        device: torch device of the short reconstructions.
        between: called before each short reconstruction (a service pauses there for its decisions; it may raise to stop).
    """
    options = options or RetrievalOptions()
    start = start or ProbeAberrations()
    wall, cpu = time.perf_counter(), time.process_time()
    sub = _subset(chunk, options)
    k = int(np.asarray(sub.patterns).shape[-1])
    pixel_a = sub.grid.pixel_nm * 10.0
    recon_options = options.recon.model_copy(update={"iterations": options.iterations})
    evaluations: list[tuple[ProbeAberrations, float]] = []

    def loss_of(aberrations: ProbeAberrations) -> float:
        if between is not None:
            between()
        probe = aberrations.probe(k, pixel_a, energy_ev, convergence_mrad)
        history = Reconstructor(probe, recon_options, device).reconstruct([sub])[0].loss_history
        loss = float(history[-1]) if math.isfinite(history[-1]) else float("inf")
        evaluations.append((aberrations, loss))
        return loss

    if not options.global_search:
        best, best_loss = start, loss_of(start)
        if options.refine_evaluations > 0 and math.isfinite(best_loss):
            best, best_loss = _refine(best, loss_of, evaluations, options)
        return RetrievalResult(best, best_loss, evaluations, len(sub.positions_nm), time.perf_counter() - wall, time.process_time() - cpu)
    # stage 1: defocus
    lo, hi = options.defocus_range_nm
    grid = np.arange(lo, hi + 0.5 * options.defocus_step_nm, options.defocus_step_nm)
    best = min((start.model_copy(update={"defocus_nm": float(d), "astigmatism_nm": 0.0}) for d in grid), key=loss_of)
    best_loss = min(loss for _, loss in evaluations)
    # stage 2: astigmatism on a polar grid at that defocus
    if options.fit_astigmatism:
        for magnitude in options.astigmatism_magnitudes_nm:
            for i in range(options.astigmatism_angles):
                trial = best.model_copy(update={"astigmatism_nm": magnitude, "astigmatism_angle_deg": 180.0 * i / options.astigmatism_angles})
                loss = loss_of(trial)
                if loss < best_loss:
                    best, best_loss = trial, loss
        best, best_loss = _best_of(evaluations)
    # stage 3: Nelder-Mead over the coefficients that are fitted
    if options.refine_evaluations > 0:
        best, best_loss = _refine(best, loss_of, evaluations, options)
    return RetrievalResult(best, best_loss, evaluations, len(sub.positions_nm), time.perf_counter() - wall, time.process_time() - cpu)


def _best_of(evaluations: list[tuple[ProbeAberrations, float]]) -> tuple[ProbeAberrations, float]:
    return min(evaluations, key=lambda e: e[1])


def _refine(best: ProbeAberrations, loss_of, evaluations, options: RetrievalOptions) -> tuple[ProbeAberrations, float]:
    """Nelder-Mead from ``best`` over defocus, (C12a, C12b) if fitted and Cs if fitted; the best point seen."""
    c12a, c12b = best.astigmatism_cartesian_nm
    step_df, step_c12, step_cs = options.refine_steps
    names = ["defocus"] + (["c12a", "c12b"] if options.fit_astigmatism else []) + (["cs"] if options.fit_cs else [])
    x0 = {"defocus": best.defocus_nm, "c12a": c12a, "c12b": c12b, "cs": best.cs_um}
    steps = {"defocus": step_df, "c12a": step_c12, "c12b": step_c12, "cs": step_cs}

    def unpack(x: np.ndarray) -> ProbeAberrations:
        values = {**x0, **dict(zip(names, (float(v) for v in x), strict=True))}
        return ProbeAberrations.from_cartesian(values["defocus"], values["c12a"], values["c12b"], values["cs"])

    start = np.array([x0[n] for n in names])
    simplex = np.vstack([start] + [start + steps[n] * np.eye(len(names))[i] for i, n in enumerate(names)])
    minimize(
        lambda x: loss_of(unpack(x)),
        start,
        method="Nelder-Mead",
        options={"initial_simplex": simplex, "maxfev": options.refine_evaluations, "xatol": 0.05, "fatol": 0.0},
    )
    return _best_of(evaluations)


def central_indices(positions_nm: np.ndarray, n: int) -> np.ndarray:
    """Indices (ascending) of the ``n`` positions (N, 2) nm nearest the centre of their bounding box (ties: the earlier)."""
    positions = np.asarray(positions_nm, dtype=np.float64)
    centre = 0.5 * (positions.min(axis=0) + positions.max(axis=0))
    return np.sort(np.argsort(((positions - centre) ** 2).sum(axis=1), kind="stable")[:n])


def _subset(chunk: ScanChunk, options: RetrievalOptions) -> ScanChunk:
    """At most ``options.max_positions`` positions of ``chunk`` (central or seeded random), same grid."""
    positions = np.asarray(chunk.positions_nm, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) == 0:
        raise ValueError(f"probe retrieval needs (N, 2) positions with N >= 1, got shape {positions.shape}")
    n = options.max_positions
    if len(positions) <= n:
        return chunk
    if options.subset == "random":
        return chunk.subset(np.sort(np.random.default_rng(options.seed).choice(len(positions), size=n, replace=False)))
    return chunk.subset(central_indices(positions, n))
