"""Options of the gradient reconstructor (pydantic; defaults from the paper where it gives one).

The paper (Schloz et al. 2023) reconstructs with 5 iterations of plain gradient descent
(step 525) on the intensity loss (1/P) sum_p || |F[probe(r - R_p) exp(iV)]|^2 - J_p ||^2.
Here the default is gradient descent (step 50) on the amplitude loss
|| |F[...]| - sqrt(J_p) ||^2 with mini-batches of 32 positions and a K x K far field
(the detector's binning not modelled), which reached SSIM >= 0.9 in 5 iterations on
held-out project- and abTEM-simulated MoS2 at a quarter of the binned model's cost
(bench/RESULTS.md; README "Reconstruction"). ``loss="intensity",
optimizer="gd", step_size=525, batch_positions=None`` is the paper's recipe.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recon.coherence import PartialCoherence

PAPER_GD_STEP = 525.0
"""The paper's fixed gradient-descent step for the intensity loss (patterns normalised to unit sum)."""


class PositionCorrectionOptions(BaseModel):
    """Position correction: each probe position refined with the object, as a global affine scan model plus a bounded residual.

    Every ``every_passes`` passes from pass ``start_pass`` on, each position moves by
    ``step`` times a Gauss-Newton step of its own data loss (its gradient from the
    object's pass, by a Fourier shift of the probe), at most ``max_step_nm``. The moved
    positions are fitted by the global affine (scale, shear, rotation about the scan's
    nominal centre: scan distortion, at most ``max_distortion``); what the affine does not
    explain is each position's residual, pulled towards 0 by ``affine_pull`` per update
    (so that positions with few neighbours, where the data say little, stay on the
    affine model) and bounded by ``max_shift_nm`` from the nominal position (affine part
    included). A common translation of all positions is invisible in the data and is
    removed. Needs the amplitude loss.
    """

    model_config = ConfigDict(extra="forbid")

    start_pass: int = Field(
        10, ge=0, description="passes of the object alone before the positions move (the object must exist first); counted from the "
        "first pass of a warm-started series (reconstruct's first_pass)",
    )
    every_passes: int = Field(1, ge=1, description="passes between two position updates")
    step: float = Field(
        1.0, gt=0, le=2, description="fraction of the Gauss-Newton step per update; the step's curvature is an upper bound (2 ||dP/dx||^2), "
        "so 1 is about half a Newton step",
    )
    max_step_nm: float = Field(0.01, gt=0, description="largest move of one position in one update, nm")
    max_shift_nm: float = Field(
        0.08, ge=0, description="largest correction of a position from its nominal place, nm (affine part included); 0.08 nm is about "
        "the radius of the in-focus 33 mrad, 60 kV probe (0.61 wavelength / semi-angle = 0.09 nm)",
    )
    affine: bool = Field(True, description="fit the global affine scan model (else positions move alone, each pulled towards its nominal place)")
    max_distortion: float = Field(0.05, ge=0, description="bound on every element of the affine's distortion D (true = centre + (I + D)(nominal - centre))")
    affine_pull: float = Field(
        0.05, ge=0, description="per update, residuals off the affine model shrink by 1 / (1 + step * affine_pull); a residual the data "
        "determine settles at about curvature / (curvature + affine_pull) of its true value (curvature ~0.5), one they do not decays "
        "to the affine model; 0: free",
    )


class ReconOptions(BaseModel):
    """How to reconstruct the potential V (transmission exp(iV), V in rad) from patterns."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(5, ge=1, description="passes over all positions (paper: 5)")
    loss: Literal["amplitude", "intensity"] = Field(
        "amplitude", description="amplitude: || |Psi| - sqrt(J) ||^2 (default, converges far faster); intensity: the paper's || |Psi|^2 - J ||^2"
    )
    optimizer: Literal["adam", "gd"] = Field("gd", description="adam, or plain gradient descent with a fixed step (the paper)")
    step_size: float | None = Field(
        None, gt=0, description="gd: step on the gradient (paper: 525 for the intensity loss); adam: learning rate in rad; None: default for the optimizer"
    )
    batch_positions: int | None = Field(
        32, ge=1, description="mini-batch of positions per update (per scan); None: one full-batch update per iteration"
    )
    detector_binning: int = Field(
        1,
        ge=1,
        description="model the detector's b x b binning: a (K*b)^2 far field at 1/b of the pixel angle, summed b x b; "
        "1 (default): a K^2 far field, as good on 2x-binned data at ~1/4 of the cost; 2 scores ~0.01 higher on noise-free defocused "
        "full rasters and ~0.01 lower on noisy 5 % scans",
    )
    momentum: float = Field(
        0.0, ge=0, lt=1, description="gd only: Nesterov momentum (0 = plain gradient descent); speeds up the slowly converging large-scale "
        "phase of specimens with vacuum by up to 1 / (1 - momentum). Lower the step with it: mini-batches at step 50 with 0.8-0.9 diverge, "
        "25 converges (bench/RESULTS.md); restarts with every reconstruct call",
    )
    precondition: Literal["none", "relative", "absolute"] = Field(
        "none",
        description="divide each scan's gradient by its probe illumination sum_p |P_p|^2 (ePIE-style, evens out the step over the "
        "field): relative = normalised to its peak (the step keeps its units); absolute = divided by the scan's N positions (any "
        "probe; the loss is a mean over them), so the step is a fraction of a Newton step at any N (full batches only): 0.25 for "
        "evaluate's final reconstruction, 1 diverges on 250-position flake scans; a 5 %-of-peak floor either way",
    )
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam moment decay rates")
    tv_weight: float = Field(0.0, ge=0, description="total-variation regularisation weight on V (rad^-1 per pixel), 0 = off")
    l2_weight: float = Field(0.0, ge=0, description="ridge penalty pulling V towards 0, 0 = off")
    nonnegative: bool = Field(False, description="clamp V >= 0 after every update (a potential of atoms is positive)")
    normalize_patterns: bool = Field(
        True, description="scale each scan's patterns to unit mean total intensity (counts -> probabilities; the probe has unit norm)"
    )
    seed: int = Field(0, description="seed of the mini-batch order (each scan draws its own order from seed and its index)")
    probe_cache_mb: float = Field(
        256.0, ge=0, description="memory for shifted probes kept between calls (a warm-started scan revisits its positions); 0 = off"
    )
    subpixel_steps: int | None = Field(
        None,
        ge=2,
        description="round each probe position to 1/subpixel_steps of a grid pixel, so that shifted probes (one inverse FFT each) are "
        "reused from the cache for new positions too; None: exact. 32 (the service's): <= 0.7 pm at 0.045 nm pixels, SSIM unchanged. "
        "Lowered to what probe_cache_mb holds ((steps + 1)^2 probes; at K = 256 the default holds 512: 1/21 px)",
    )
    chunk_positions: int = Field(512, ge=1, description="positions per forward/backward pass (memory only; results do not depend on it)")
    dtype: Literal["float32", "float64"] = Field("float32", description="real dtype of V (complex64/complex128 waves)")
    progress: bool = Field(False, description="show a progress bar over iterations")
    position_correction: PositionCorrectionOptions | None = Field(
        None, description="refine the probe positions with the object (PositionCorrectionOptions); None (default): the positions as given"
    )
    coherence: PartialCoherence | None = Field(
        None, description="partial coherence of the beam (focal spread, source size, nm, 1 sigma; Gauss-Hermite nodes per spread): each "
        "pattern is modelled as the weighted sum of the intensities of that many incoherent probe modes (recon.probe_modes), at about "
        "that many times the cost per update; the Reconstructor then needs energy_ev and pixel_nm. None or zero spreads (default): one "
        "coherent probe",
    )
    coherence_mode_power: float | None = Field(
        None, gt=0, le=1, description="with coherence: replace the quadrature nodes' probes by the fewest orthogonal modes of the same "
        "mixed state that hold this fraction of its power (e.g. 0.99: a 0.02 nm source's 9 probes -> 6 modes, 3 nm focal spread and 0.02 nm source together 27 -> 10, at the 60 kV 33 mrad probe); "
        "None: the nodes' probes",
    )

    @field_validator("precondition", mode="before")
    @classmethod
    def _precondition_from_bool(cls, value):
        """true/false (older configs) mean relative/none."""
        if isinstance(value, bool):
            return "relative" if value else "none"
        return value

    @model_validator(mode="after")
    def _check(self) -> ReconOptions:
        b1, b2 = self.adam_betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")
        if self.momentum > 0 and self.optimizer != "gd":
            raise ValueError("momentum applies to optimizer 'gd' only (Adam has its own moments)")
        if self.precondition == "absolute" and self.batch_positions is not None:
            raise ValueError("precondition 'absolute' needs full batches (batch_positions None): its step is a Newton fraction of the "
                             "whole scan's loss, and a mini-batch of m positions would take N / m times that step")
        if self.position_correction is not None and self.loss != "amplitude":
            raise ValueError("position_correction needs loss 'amplitude' (its step is a Gauss-Newton step of the amplitude loss)")
        if self.coherence is not None and not self.coherence.is_coherent and self.position_correction is not None:
            raise ValueError("coherence (probe modes) and position_correction cannot be combined yet: position correction moves a single "
                             "coherent probe")
        return self

    @property
    def effective_step(self) -> float:
        """The step actually used: ``step_size`` or the optimizer's default."""
        if self.step_size is not None:
            return self.step_size
        if self.optimizer == "adam":
            return DEFAULT_ADAM_LR
        return PAPER_GD_STEP if self.loss == "intensity" else DEFAULT_GD_STEP_AMPLITUDE


DEFAULT_ADAM_LR = 0.01
"""Adam learning rate in rad per update (tuned on simulated MoS2, bench/RESULTS.md)."""
DEFAULT_GD_STEP_AMPLITUDE = 50.0
"""Gradient-descent step for the amplitude loss, patterns normalised to unit sum (tuned on simulated MoS2, bench/RESULTS.md)."""
