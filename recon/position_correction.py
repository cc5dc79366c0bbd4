"""Position correction: per-position shifts and a global affine scan model, refined with the object.

The engine (``recon.engine.Reconstructor``) computes, in the same pass that updates the
object, the gradient of each position's data loss with respect to its probe position
(``position_gradient``: the probe is shifted by a Fourier phase ramp, so its derivative
is exact at any sub-pixel position). A ``PositionCorrector`` turns those gradients into
new positions (``PositionCorrectionOptions``, in ``recon.options``):

1. a Gauss-Newton step per position, ``-step * g / c``, where c = 2 sum |P|^2 (dV/dx)^2
   bounds the curvature of the amplitude loss in that direction (``slope_curvature``),
   limited to ``max_step_nm``;
2. the moved positions fitted by least squares with the global affine
   ``centre + M (nominal - centre) + t`` (M = I + D: scale, shear and rotation of the scan
   coils), D bounded by ``max_distortion``;
3. each position's residual off that model (less the scan's mean residual: a common
   translation is invisible in the data) shrunk by 1 / (1 + step * affine_pull), so a
   position the data do not pin (a sparse scan's lone position) decays onto the affine
   model instead of wandering;
4. the correction from the nominal position bounded by ``max_shift_nm``, and the probe
   window kept on the object grid.

All positions are in padded grid pixels (x, y), the engine's frame; ``pixel_nm`` per scan
converts the bounds.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recon.options import PositionCorrectionOptions


def position_gradient(back: torch.Tensor, patch: torch.Tensor, spectrum: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """(m, 2) gradient (x, y) of the data loss with respect to each probe position, per pixel.

    Args:
        back: (m, W, W) complex, the loss's gradient on the exit waves in the engine's form
            (dL = Re sum conj(back) d(exit wave)).
        patch: (m, W, W) complex, the object exp(iV) under each window.
        spectrum: (W, W) complex, fft2 of the unshifted model probe.
        fractions: (m, 2) real, each probe's sub-pixel shift (x, y) in pixels.

    The exit wave is P_s O with P_s = ifft2(S exp(-2 pi i (f_x x + f_y y))), so
    dL/dx = Re sum conj(back conj(O)) dP_s/dx = (2 pi / N) sum f_x Im(conj(H) S_s) with
    H = fft2(back conj(O)) and S_s the shifted probe's spectrum (Parseval): one FFT per
    position.
    """
    size = spectrum.shape[-1]
    f = torch.fft.fftfreq(size, device=spectrum.device, dtype=fractions.dtype)
    ramp_x = torch.exp(-2j * math.pi * fractions[:, 0, None] * f[None, :]).to(spectrum.dtype)
    ramp_y = torch.exp(-2j * math.pi * fractions[:, 1, None] * f[None, :]).to(spectrum.dtype)
    spectra = spectrum * ramp_y[:, :, None] * ramp_x[:, None, :]
    h = torch.fft.fft2(back * patch.conj())
    weight = (h.conj() * spectra).imag  # (m, W, W)
    scale = 2 * math.pi / (size * size)
    gx = (weight.sum(dim=1) * f[None, :]).sum(dim=1)
    gy = (weight.sum(dim=2) * f[None, :]).sum(dim=1)
    return torch.stack([gx, gy], dim=1) * scale


def slope_curvature(potential: torch.Tensor, base: torch.Tensor, offsets_in_window: torch.Tensor, probes: torch.Tensor,
                    probe_rows: torch.Tensor, chunk: int) -> torch.Tensor:
    """(M, 2) float64: 2 sum |P_s|^2 (dV/dx)^2 and 2 sum |P_s|^2 (dV/dy)^2 over each position's window (per pixel^2).

    The Gauss-Newton curvature of a position's amplitude loss is at most 2 || P d exp(iV)/dx ||^2
    = 2 sum |P|^2 (dV/dx)^2 (moving the probe over the object is moving the object under
    the probe; the far field is unitary and |d|Psi|| <= |dPsi|): large where the probe sees
    structure, ~0 over vacuum. Central differences of V on the (B, H, W) stack.
    """
    slopes = torch.zeros((2, *potential.shape), dtype=potential.dtype, device=potential.device)
    slopes[0, :, :, 1:-1] = (potential[:, :, 2:] - potential[:, :, :-2]) / 2
    slopes[1, :, 1:-1, :] = (potential[:, 2:, :] - potential[:, :-2, :]) / 2
    squared = slopes.square().view(2, -1)
    out = torch.empty((len(base), 2), dtype=torch.float64, device=potential.device)
    for start in range(0, len(base), chunk):
        lin = base[start : start + chunk, None] + offsets_in_window[None, :]
        power = torch.abs(probes.index_select(0, probe_rows[start : start + chunk])).square().flatten(1)
        for axis in range(2):
            out[start : start + chunk, axis] = 2 * (power * squared[axis][lin]).sum(dim=1).double()
    return out


CURVATURE_FLOOR = 0.1
"""Curvatures below this fraction of the scan's median (positions over vacuum) count as that: their steps stay bounded."""


class PositionCorrector:
    """The positions of the B scans of one reconstruct call and their affine models, updated from position gradients.

    Args:
        options: how to correct.
        nominal_px: (M, 2) float64, the positions as given, padded grid pixels (x, y), all scans concatenated.
        offsets, counts: each scan's rows in ``nominal_px``.
        pixel_nm: each scan's grid pixel, nm.
        lower, upper: (M, 2) float64, the range each position must stay in (its probe window on the grid).
        start_px: (M, 2) where to start (a previous call's corrected positions); default the nominal ones.
    """

    def __init__(self, options: PositionCorrectionOptions, nominal_px: torch.Tensor, offsets: list[int], counts: list[int],
                 pixel_nm: list[float], lower: torch.Tensor, upper: torch.Tensor, start_px: torch.Tensor | None = None) -> None:
        self.options = options
        self.nominal = nominal_px.detach().cpu().double()
        self.current = (self.nominal if start_px is None else start_px.detach().cpu().double()).clone()
        self.rows = [slice(o, o + c) for o, c in zip(offsets, counts, strict=True)]
        self.pixel_nm = pixel_nm
        self.lower, self.upper = lower.double(), upper.double()
        self.matrices = [torch.eye(2, dtype=torch.float64) for _ in counts]
        self.updates = 0

    def due(self, pass_number: int) -> bool:
        """Whether the positions are updated after pass ``pass_number`` (1-based, counting passes of earlier calls)."""
        o = self.options
        return pass_number > o.start_pass and (pass_number - o.start_pass) % o.every_passes == 0

    def update(self, gradient: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
        """New positions (M, 2) float64 (padded px) from the pass's (M, 2) gradients (each divided by its position's loss weight)
        and the (M, 2) curvatures (``slope_curvature``; floored per scan at ``CURVATURE_FLOOR`` of the median)."""
        o = self.options
        g = gradient.detach().cpu().double()
        c = curvature.detach().cpu().double()
        new = self.current.clone()
        for b, rows in enumerate(self.rows):
            max_step = o.max_step_nm / self.pixel_nm[b]
            floor = CURVATURE_FLOOR * c[rows].median(dim=0).values.clamp_min(1e-30)
            move = -o.step * g[rows] / torch.maximum(c[rows], floor)
            move = _clamp_length(move, max_step)
            moved = self.current[rows] + move
            nominal = self.nominal[rows]
            centre = nominal.mean(dim=0)
            if o.affine:
                matrix = _fit_linear(nominal - centre, moved - moved.mean(dim=0))
                matrix = torch.eye(2, dtype=torch.float64) + (matrix - torch.eye(2, dtype=torch.float64)).clamp(-o.max_distortion, o.max_distortion)
            else:
                matrix = torch.eye(2, dtype=torch.float64)
            model = centre + (nominal - centre) @ matrix.T
            residual = moved - model
            residual = (residual - residual.mean(dim=0)) / (1.0 + o.step * o.affine_pull)
            placed = nominal + _clamp_length(model + residual - nominal, o.max_shift_nm / self.pixel_nm[b])
            new[rows] = torch.minimum(torch.maximum(placed, self.lower[rows]), self.upper[rows])
            self.matrices[b] = matrix
        self.current = new
        self.updates += 1
        return new

    def scan_matrix(self, b: int) -> np.ndarray:
        """(2, 2) the affine scan model's I + D of scan ``b`` (true = centre + (I + D)(nominal - centre)), as last fitted."""
        return self.matrices[b].numpy().copy()


def _clamp_length(vectors: torch.Tensor, limit: float) -> torch.Tensor:
    """(N, 2) vectors shortened to at most ``limit`` each (direction kept)."""
    length = torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
    return vectors * torch.clamp(limit / length.clamp_min(1e-30), max=1.0)


def _fit_linear(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(2, 2) M minimising || target - source M^T ||^2 (both centred (N, 2)); the identity when the positions are collinear."""
    gram = source.T @ source
    if len(source) < 3 or float(torch.linalg.det(gram)) <= 1e-12 * float(torch.trace(gram)) ** 2:
        return torch.eye(2, dtype=torch.float64)
    return torch.linalg.solve(gram, source.T @ target).T
