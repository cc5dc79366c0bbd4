"""Reconstruct until the data loss stops falling: one stopping rule for every scan, sparse or dense.

A sparse scan (a few hundred positions over 2 x 2 nm) needs many more passes than a
dense raster, whose every pass makes many more updates; a fixed pass count either
leaves the sparse scan unconverged or spends ten times the work on the dense one.
``reconstruct_until_converged`` runs passes in blocks of ``block`` and stops each scan
once its mean loss fell by less than ``tolerance`` (relative) over the last block, or at
``max_passes``. With gradient descent the blocks continue one another exactly
(``Reconstructor.reconstruct``'s ``first_pass``), so the result is the same as one call
of that many passes; Adam's moments and gradient descent's momentum restart with each
block. With ``tolerance`` 0 there is nothing to check between blocks: one call runs
``max_passes`` (an optimizer with state keeps it throughout).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

from recon.engine import ReconResult, Reconstructor, ScanChunk

DIVERGED_LOSS_RATIO = 2.0
"""A run whose last loss is above this multiple of its lowest (or not finite) has diverged."""


def reconstruct_in_batches(rec: Reconstructor, scans: list[ScanChunk], init: list | None, max_batch: int, **kwargs) -> list[ReconResult]:
    """``rec.reconstruct`` over at most ``max_batch`` scans a call (device memory), results in order; ``kwargs`` go to each call."""
    out: list[ReconResult] = []
    for start in range(0, len(scans), max_batch):
        part_init = None if init is None else init[start : start + max_batch]
        out.extend(rec.reconstruct(scans[start : start + max_batch], init=part_init, **kwargs))
    return out


def reconstruct_until_converged(rec: Reconstructor, scans: list[ScanChunk], *, max_passes: int, block: int = 5,
                                tolerance: float = 2e-3, max_batch: int = 8, on_pass=None) -> list[ReconResult]:
    """Per scan: passes in blocks until the loss falls by less than ``tolerance`` over a block, at most ``max_passes``.

    ``on_pass(pass_number, potentials)`` is called after every pass of every batched call (progress). Returns one
    ``ReconResult`` per scan (its ``loss_history`` holds every pass run).
    """
    if max_passes < 1 or block < 1 or not tolerance >= 0:
        raise ValueError("max_passes and block must be >= 1 and tolerance >= 0")
    if tolerance == 0:
        block = max_passes
    scans = list(scans)  # a block continues the previous one's position correction (corrected_positions_nm)
    potentials: list = [None] * len(scans)
    histories: list[list[float]] = [[] for _ in scans]
    results: list[ReconResult | None] = [None] * len(scans)
    active = list(range(len(scans)))
    done = 0
    while active and done < max_passes:
        n = min(block, max_passes - done)
        out = reconstruct_in_batches(rec, [scans[i] for i in active], [potentials[i] for i in active], max_batch, iterations=n,
                                     first_pass=done, on_pass=on_pass)
        still = []
        for i, res in zip(active, out, strict=True):
            before = histories[i][-1] if histories[i] else None
            histories[i].extend(res.loss_history)
            potentials[i] = res.potential
            results[i] = ReconResult(res.potential, res.grid, list(histories[i]), res.positions_nm, res.scan_matrix)
            if res.positions_nm is not None:
                scans[i] = dataclasses.replace(scans[i], corrected_positions_nm=res.positions_nm)
            after = histories[i][-1]
            if before is None or before - after > tolerance * abs(after):
                still.append(i)
        active = still
        done += n
    return [r for r in results if r is not None]


def diverged(loss_history: list[float]) -> bool:
    """True when the loss ended non-finite or above ``DIVERGED_LOSS_RATIO`` x its lowest value (the step was too large)."""
    if not loss_history:
        return False
    last = loss_history[-1]
    return not math.isfinite(last) or last > DIVERGED_LOSS_RATIO * min(loss_history)


def reconstruct_with_backoff(rec: Reconstructor, scans: list[ScanChunk], *, max_passes: int, tolerance: float = 0.0,
                             max_batch: int = 8, halvings: int = 6, on_pass=None) -> tuple[list[ReconResult], list[float]]:
    """``reconstruct_until_converged``; a scan whose loss diverged is run again from the start with half the step, up to ``halvings`` times.

    Returns the results and the step each scan ended with (rec.options' step for those that never diverged). A scan
    still diverged after the last halving is returned as it is, with a ``RuntimeWarning``.
    """
    results = reconstruct_until_converged(rec, scans, max_passes=max_passes, tolerance=tolerance, max_batch=max_batch, on_pass=on_pass)
    steps = [rec.options.effective_step] * len(scans)
    step = rec.options.effective_step
    for _ in range(halvings):
        again = [i for i, res in enumerate(results) if diverged(res.loss_history)]
        if not again:
            break
        step /= 2
        smaller = Reconstructor(rec.probe, rec.options.model_copy(update={"step_size": step}), device=rec.device, energy_ev=rec.energy_ev,
                                pixel_nm=rec.pixel_nm)
        redone = reconstruct_until_converged(smaller, [scans[i] for i in again], max_passes=max_passes, tolerance=tolerance,
                                             max_batch=max_batch, on_pass=on_pass)
        for i, res in zip(again, redone, strict=True):
            results[i], steps[i] = res, step
    still = [i for i, res in enumerate(results) if diverged(res.loss_history)]
    if still:
        warnings.warn(f"scans {still} still diverge at step {step:g} after {halvings} halvings; their results are not usable",
                      RuntimeWarning, stacklevel=2)
    return results, steps
