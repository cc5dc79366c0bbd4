"""Probe refinement during reconstruction: the aberration coefficients updated with the object.

The engine (``recon.engine.Reconstructor``) keeps its probe fixed (its shifted probes are
cached). ``reconstruct_refining_aberrations`` alternates with it: a block of
``passes_per_block`` engine passes on the object (warm-started from the previous block,
the mini-batch order continuing), then ``steps_per_block`` Adam steps on the aberration
coefficients (defocus, C12a, C12b, Cs) with the object held, by automatic
differentiation of the same forward model (``recon.forward``) and loss over at most
``max_positions`` positions (nearest the field's centre), then the next block with the
probe they make. Off unless called: the engine's own results do not change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from recon.aberrations import ProbeAberrations
from recon.detector_mask import check_invalid_pixels, valid_fraction, valid_sum
from recon.engine import ReconResult, Reconstructor, ScanChunk
from recon.forward import exit_waves, far_field_intensity
from recon.options import ReconOptions
from recon.physics import wavelength_angstrom
from recon.probe import aberration_phase, aperture, probe_from_spectrum, spatial_frequencies
from recon.probe_retrieval import central_indices


class ProbeRefinementOptions(BaseModel):
    """How the aberration coefficients are refined between blocks of object passes."""

    model_config = ConfigDict(extra="forbid")

    passes_per_block: int = Field(10, ge=1, description="engine passes on the object between two probe updates")
    steps_per_block: int = Field(10, ge=1, description="Adam steps on the coefficients per probe update")
    learning_rate: tuple[float, float, float] = Field(
        (0.2, 0.2, 0.4),
        description="Adam step per update: defocus (nm), astigmatism C12a/C12b (nm), Cs (um); measured on MoS2 (500 positions, 60 "
        "passes): 0.05 nm does not get from the nominal probe to 4 nm defocus, 0.2 does and jitters ~0.1-0.3 nm about the optimum",
    )
    fit_astigmatism: bool = Field(True, description="refine C12 (else it stays as started)")
    fit_cs: bool = Field(True, description="refine Cs (else it stays as started)")
    max_positions: int = Field(256, ge=1, description="positions in the coefficients' loss (nearest the field's centre)")


@dataclass
class RefinementResult:
    """The reconstruction and the aberrations it ended with."""

    result: ReconResult
    aberrations: ProbeAberrations
    history: list[ProbeAberrations] = field(default_factory=list)
    """The aberrations after each probe update."""
    wall_s: float = 0.0


def reconstruct_refining_aberrations(
    chunk: ScanChunk,
    start: ProbeAberrations,
    *,
    energy_ev: float,
    convergence_mrad: float,
    options: ReconOptions,
    refinement: ProbeRefinementOptions | None = None,
    passes: int | None = None,
    device=None,
    between: Callable[[], None] | None = None,
) -> RefinementResult:
    """Reconstruct one scan for ``passes`` (default ``options.iterations``) passes, refining the probe's aberrations.

    ``options`` are the engine's (``detector_binning`` must be 1: the coefficients' loss models a K x K far field);
    energy in eV, convergence semi-angle in mrad; ``start`` the aberrations to begin with (nominal or retrieved);
    ``between`` is called before each block of passes and each probe update (a service pauses there; it may raise to stop).
    """
    if options.detector_binning != 1:
        raise ValueError("probe refinement models a K x K far field: use detector_binning 1")
    refinement = refinement or ProbeRefinementOptions()
    total = passes or options.iterations
    wall = time.perf_counter()
    k = int(np.asarray(chunk.patterns).shape[-1])
    model = _CoefficientModel(chunk, k, energy_ev, convergence_mrad, options, refinement)
    coefficients = model.pack(start)
    potential = None
    done = 0
    history = []
    result = None
    while done < total:
        block = min(refinement.passes_per_block, total - done)
        if between is not None:
            between()
        probe = model.probe(coefficients).detach()
        (result,) = Reconstructor(probe, options, device).reconstruct([chunk], init=[potential], iterations=block, first_pass=done)
        if result.loss_history and not math.isfinite(result.loss_history[-1]):
            break
        potential = result.potential
        done += block
        if done < total:
            if between is not None:
                between()
            coefficients = model.refine(coefficients, potential)
            history.append(model.unpack(coefficients))
    return RefinementResult(result, model.unpack(coefficients), history, time.perf_counter() - wall)


class _CoefficientModel:
    """The data loss of a subset of positions as a function of (defocus, C12a, C12b, Cs) with the object held."""

    def __init__(self, chunk: ScanChunk, k: int, energy_ev: float, convergence_mrad: float, options: ReconOptions,
                 refinement: ProbeRefinementOptions) -> None:
        self.options, self.refinement = options, refinement
        pixel_a = chunk.grid.pixel_nm * 10.0
        self.wavelength = wavelength_angstrom(energy_ev)
        self.kx, self.ky = spatial_frequencies(k, pixel_a)
        self.aperture = aperture(k, pixel_a, energy_ev, convergence_mrad)
        patterns = torch.as_tensor(np.asarray(chunk.patterns), dtype=torch.float64)
        positions = np.asarray(chunk.positions_nm, dtype=np.float64)
        invalid = check_invalid_pixels(chunk.invalid_pixels, k, 0)
        valid = None if invalid is None else torch.from_numpy(~invalid)
        self.pixel_weight = None if valid is None else valid.to(torch.float32)
        """(K, K) 1 valid / 0 invalid detector pixel (centred, as the patterns): the engine's weight; None: all valid."""
        if options.normalize_patterns:  # as the engine normalises: the valid pixels' total, scaled to the whole detector
            total = float(valid_sum(patterns, valid)) / len(patterns)
            if valid is not None:
                total /= valid_fraction(self.probe(self.pack(ProbeAberrations())), 1, valid)
            patterns = patterns / total
        pick = central_indices(positions, refinement.max_positions)
        chosen = patterns[torch.as_tensor(pick)].float()
        self.targets = chosen.sqrt() if options.loss == "amplitude" else chosen
        self.positions_px = torch.as_tensor(chunk.grid.positions_px(positions[pick]), dtype=torch.float32)
        fitted = [True, refinement.fit_astigmatism, refinement.fit_astigmatism, refinement.fit_cs]
        self.mask = torch.tensor([1.0 if f else 0.0 for f in fitted], dtype=torch.float64)
        self.learning_rate = [refinement.learning_rate[0], refinement.learning_rate[1], refinement.learning_rate[1], refinement.learning_rate[2]]

    @staticmethod
    def pack(aberrations: ProbeAberrations) -> torch.Tensor:
        a, b = aberrations.astigmatism_cartesian_nm
        return torch.tensor([aberrations.defocus_nm, a, b, aberrations.cs_um], dtype=torch.float64)

    @staticmethod
    def unpack(coefficients: torch.Tensor) -> ProbeAberrations:
        d, a, b, cs = (float(v) for v in coefficients)
        return ProbeAberrations.from_cartesian(d, a, b, cs)

    def probe(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(K, K) complex64 unit-norm probe; differentiable in the coefficients (nm, nm, nm, um)."""
        chi = aberration_phase(self.kx, self.ky, self.wavelength, defocus_angstrom=10.0 * coefficients[0],
                               astigmatism_a_angstrom=10.0 * coefficients[1], astigmatism_b_angstrom=10.0 * coefficients[2],
                               cs_angstrom=1e4 * coefficients[3])
        spectrum = self.aperture * torch.exp(-1j * chi)
        return probe_from_spectrum(spectrum).to(torch.complex64)

    def loss(self, coefficients: torch.Tensor, transmission: torch.Tensor) -> torch.Tensor:
        intensity = far_field_intensity(exit_waves(transmission, self.probe(coefficients), self.positions_px))
        model = (intensity + 1e-12).sqrt() if self.options.loss == "amplitude" else intensity
        squared = (model - self.targets) ** 2
        if self.pixel_weight is not None:  # invalid detector pixels: no loss (recon.detector_mask)
            squared = squared * self.pixel_weight
        return squared.sum(dim=(-2, -1)).mean()

    def refine(self, coefficients: torch.Tensor, potential: torch.Tensor) -> torch.Tensor:
        """``steps_per_block`` Adam steps from ``coefficients`` with the object exp(i potential) held; the new coefficients."""
        transmission = torch.polar(torch.ones_like(potential), potential.float())
        c = coefficients.clone().requires_grad_(True)
        rates = torch.tensor(self.learning_rate, dtype=torch.float64)
        m1, m2 = torch.zeros_like(c), torch.zeros_like(c)
        b1, b2 = 0.9, 0.999
        for t in range(1, self.refinement.steps_per_block + 1):
            (grad,) = torch.autograd.grad(self.loss(c, transmission), c)
            with torch.no_grad():
                grad = grad * self.mask
                m1 = b1 * m1 + (1 - b1) * grad
                m2 = b2 * m2 + (1 - b2) * grad**2
                c -= rates * (m1 / (1 - b1**t)) / ((m2 / (1 - b2**t)).sqrt() + 1e-30) * self.mask
        return c.detach()
