"""Batched gradient ptychography (ROP-style): many independent scans in one call.

For every scan b the potential V_b (rad; transmission exp(i V_b)) on its own grid is
fitted to the measured patterns J_p at its positions R_p by minimising

    amplitude loss:  (1/P) sum_p || |F[probe(r - R_p) exp(i V_b)]| - sqrt(J_p) ||^2
    intensity loss:  (1/P) sum_p || |F[probe(r - R_p) exp(i V_b)]|^2 - J_p ||^2   (the paper)

with Adam or plain gradient descent, optionally over mini-batches of positions. The B
scans are stacked on one padded (B, H, W) tensor and their positions are concatenated
(each step knows each position's scan, as ``recon.forward``'s ``scan_index``); every scan keeps its
own optimizer state and step count, so a scan reconstructed in a batch gives the same
result as reconstructed alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from recon.binned_model import bin_blocks, binned_centre_tilt, pad_centred
from recon.detector_mask import check_invalid_pixels, pixel_weights, valid_fraction, valid_sum, weights_of
from recon.device import pick_device
from recon.engine_inputs import check_positions, check_windows_fit, initial_potential, patterns_on_device, raise_bad_patterns
from recon.forward import split_positions
from recon.grid import ObjectGrid
from recon.options import ReconOptions
from recon.position_correction import PositionCorrector, position_gradient, slope_curvature
from recon.probe_modes import coherent_modes, exit_waves_of_modes, incoherent_sum, phase_gradient_of_modes, total_power
from recon.schedule import minibatches, planned_passes
from recon.shifted_probes import ShiftedProbeCache, subpixel_steps_that_fit

_ADAM_EPS = 1e-8


@dataclass
class ScanChunk:
    """One scan's data so far: all patterns and positions measured up to now, and its grid."""

    patterns: torch.Tensor | np.ndarray
    """(N, K, K) intensities (float or counts), centred."""
    positions_nm: torch.Tensor | np.ndarray
    """(N, 2) probe positions (x, y) in nm."""
    grid: ObjectGrid
    corrected_positions_nm: torch.Tensor | np.ndarray | None = None
    """(N, 2) where position correction starts (a previous call's ``ReconResult.positions_nm``, to continue it); its bounds stay
    relative to ``positions_nm``. Ignored without ``options.position_correction``."""
    invalid_pixels: torch.Tensor | np.ndarray | None = None
    """(K, K) bool, True where the detector pixel is not a measurement (masked, saturated): left out of the loss and of the
    normalisation (``recon.detector_mask``); None: every pixel is valid."""

    def subset(self, pick: np.ndarray) -> ScanChunk:
        """The positions ``pick`` (indices) of this chunk, as numpy arrays: same grid, same invalid pixels."""
        corrected = None if self.corrected_positions_nm is None else np.asarray(self.corrected_positions_nm)[pick]
        return ScanChunk(np.asarray(self.patterns)[pick], np.asarray(self.positions_nm)[pick], self.grid, corrected, self.invalid_pixels)


@dataclass
class ReconResult:
    """The reconstruction of one scan."""

    potential: torch.Tensor
    """(ny, nx) float32 phase V in rad (transmission exp(iV)) on ``grid``, on the CPU."""
    grid: ObjectGrid
    loss_history: list[float]
    """Mean data loss per position for each iteration (the optimizer's running value)."""
    positions_nm: np.ndarray | None = None
    """(N, 2) corrected probe positions (x, y) in nm with ``options.position_correction``; None without."""
    scan_matrix: np.ndarray | None = None
    """(2, 2) the fitted affine scan model I + D (true = centre + (I + D)(nominal - centre)) with position correction; None without."""


@dataclass
class _Batch:
    """Everything about the B scans that does not change during the iterations."""

    targets: torch.Tensor  # (M, K, K) sqrt(J) or J, normalised; ifftshifted when ``shift_model`` is False
    probes: torch.Tensor  # (P, Kw, Kw) complex shifted probes (the reconstructor's cache, or this batch's own); (P, n, Kw, Kw) with modes
    probe_rows: torch.Tensor  # (M,) long, each position's row in ``probes`` (its sub-pixel fraction's shifted probe)
    base: torch.Tensor  # (M,) long, flat index in the (B, H, W) potential of each window's top-left pixel
    offsets_in_window: torch.Tensor  # (Kw * Kw,) long, flat offsets of a window's pixels from its top-left
    shift_model: bool  # fftshift the model far field (only when the targets could not be ifftshifted instead)
    offsets: list[int]  # start of each scan's positions in the concatenation
    counts: list[int]
    valid: torch.Tensor  # (B, H, W) bool, pixels on each scan's own grid
    illumination: torch.Tensor | None  # (B, H, W) preconditioner sum_p |P_p|^2 (/ max if relative, / N if absolute), regularised; None = off
    positions_px: torch.Tensor  # (M, 2) float64 on the host, probe centres (x, y) in padded grid pixels
    nominal_px: torch.Tensor  # (M, 2) the same as given in the chunks' positions_nm (position correction's reference)
    planes: torch.Tensor  # (M,) long on the host, flat index of each position's scan plane in the (B, H, W) stack
    fractions: torch.Tensor | None  # (M, 2) real on the device, each probe's sub-pixel shift (with position correction only)
    pixel_weights: torch.Tensor | None = None  # (B, K, K) 1 valid / 0 invalid detector pixel, laid out as the targets; None = all valid
    scan_of: torch.Tensor | None = None  # (M,) long on the device, each position's scan (with pixel_weights only)


class Reconstructor:
    """Gradient-descent reconstructor with a fixed, known probe. One call at a time (it keeps a cache between calls).

    Args:
        probe: (K, K) complex probe on the reconstruction grid (see ``probe_for``);
            normalised to unit total intensity when ``options.normalize_patterns``.
        options: ``ReconOptions``; default the tuned defaults.
        device: torch device; None or "auto": CUDA when present, else CPU.
        energy_ev: beam energy in eV, and
        pixel_nm: the reconstruction grid's pixel in nm: both needed (only) with a partially coherent
            ``options.coherence``, whose probe modes are the probe defocused and shifted (``recon.probe_modes``).
    """

    def __init__(self, probe: torch.Tensor | np.ndarray, options: ReconOptions | None = None, device: torch.device | str | None = None,
                 *, energy_ev: float | None = None, pixel_nm: float | None = None):
        self.options = options or ReconOptions()
        self.energy_ev, self.pixel_nm = energy_ev, pixel_nm
        self.device = pick_device(device)
        self.real_dtype = torch.float64 if self.options.dtype == "float64" else torch.float32
        self.complex_dtype = torch.complex128 if self.options.dtype == "float64" else torch.complex64
        probe = torch.as_tensor(probe)
        if probe.ndim != 2 or probe.shape[0] != probe.shape[1] or probe.shape[0] < 2:
            raise ValueError(f"probe must be a square (K, K) array, got shape {tuple(probe.shape)}")
        probe = probe.to(self.device, self.complex_dtype)
        if not bool(torch.isfinite(torch.view_as_real(probe)).all()):
            raise ValueError("probe contains NaN or infinite values")
        norm = torch.sqrt(torch.sum(torch.abs(probe) ** 2))
        if not float(norm) > 0:
            raise ValueError("probe is all zeros")
        self.probe = probe / norm if self.options.normalize_patterns else probe
        coherence = self.options.coherence
        self.modes: torch.Tensor | None = None
        """(n, K, K) incoherent probe modes sqrt(w_n) P_n with a partially coherent ``options.coherence``; None: the coherent probe."""
        if coherence is not None and not coherence.is_coherent:
            if energy_ev is None or pixel_nm is None:
                raise ValueError("options.coherence needs the beam: Reconstructor(probe, options, energy_ev=..., pixel_nm=...)")
            self.modes = coherent_modes(self.probe, coherence, pixel_nm, energy_ev, self.options.coherence_mode_power)
        self.model_probe = pad_centred(self.probe if self.modes is None else self.modes, self.model_window) * binned_centre_tilt(
            self.window, self.options.detector_binning, self.device, self.complex_dtype
        )
        self._probe_cache = ShiftedProbeCache(torch.fft.fft2(self.model_probe), self.options)
        self.subpixel_steps = subpixel_steps_that_fit(self.options.subpixel_steps, self._probe_cache.capacity)
        """Steps per pixel the probe positions are rounded to (``options.subpixel_steps``, fewer if the cache cannot hold them all), or None."""

    @property
    def window(self) -> int:
        """K, the probe window and pattern size in pixels."""
        return int(self.probe.shape[-1])

    @property
    def model_window(self) -> int:
        """K * detector_binning: the window of the modelled exit waves, in grid pixels."""
        return self.window * self.options.detector_binning

    @property
    def pad(self) -> int:
        """Extra pixels on each side of a scan's grid that the wider binned-model window needs."""
        b = self.options.detector_binning
        return 0 if b == 1 else self.model_window // 2 - self.window // 2 + 1

    def reconstruct(
        self,
        scans: list[ScanChunk],
        init: list[torch.Tensor | np.ndarray | None] | None = None,
        iterations: int | None = None,
        first_pass: int = 0,
        on_pass: Callable[[int, list[torch.Tensor]], None] | None = None,
    ) -> list[ReconResult]:
        """Reconstruct B independent scans in one batched call (``steps`` run to the end; arguments as there)."""
        return run_to_end(self.steps(scans, init, iterations, first_pass, on_pass))

    def steps(
        self,
        scans: list[ScanChunk],
        init: list[torch.Tensor | np.ndarray | None] | None = None,
        iterations: int | None = None,
        first_pass: int = 0,
        on_pass: Callable[[int, list[torch.Tensor]], None] | None = None,
    ) -> Generator[None, None, list[ReconResult]]:
        """``reconstruct`` one mini-batch step at a time: a generator that yields after every optimizer step.

        Nothing runs (not even the checks) until the first ``next``; its return value (``StopIteration.value``,
        ``run_to_end``) is the results. A caller can pause between steps (a service's final reconstruction
        yields to decisions there) without preparing the scans again. Between steps the reconstructor must
        not be used by other calls: its cache of shifted probes holds this run's probes.

        Args:
            scans: the B scans, each with its own positions, count and grid.
            init: optional per-scan starting potentials (ny, nx) in rad on that scan's
                grid (warm start from a previous chunk's result); None entries start at 0.
            iterations: passes over the positions in this call (None: ``options.iterations``).
            first_pass: passes already run by earlier calls that ``init`` continues: the
                mini-batch order goes on from there, so with plain gradient descent k
                calls of one pass give the same result as one call of k passes (Adam's
                moments and gradient descent's momentum restart with each call).
            on_pass: called after every pass with the pass number (1, 2, ...) and each
                scan's current potential (views on its grid, on the device: copy what is
                kept); convergence curves without restarting the optimizer.

        Returns one ``ReconResult`` per scan, in order.
        """
        if not scans:
            raise ValueError("no scans to reconstruct")
        if init is not None and len(init) != len(scans):
            raise ValueError(f"init has {len(init)} entries but there are {len(scans)} scans")
        if iterations is not None and iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        opts = self.options
        if self.modes is not None and any(not math.isclose(s.grid.pixel_nm, self.pixel_nm, rel_tol=1e-6) for s in scans):
            raise ValueError(f"the probe modes are made for {self.pixel_nm} nm pixels, a scan's grid has {[s.grid.pixel_nm for s in scans]}")
        batch = self._prepare(scans)
        potential = initial_potential([s.grid.shape for s in scans], init, self.pad, self.real_dtype, self.device)
        n_scans = len(scans)
        moment1 = torch.zeros_like(potential)
        moment2 = torch.zeros_like(potential)
        grad = torch.zeros_like(potential)
        steps = torch.zeros(n_scans, dtype=torch.long, device=self.device)
        generators = [torch.Generator().manual_seed(opts.seed) for _ in scans]
        for _ in range(first_pass):  # the orders of the passes already run
            minibatches(batch.counts, opts.batch_positions, generators)
        n_passes = iterations or opts.iterations
        passes = planned_passes(
            n_passes, lambda: minibatches(batch.counts, opts.batch_positions, generators), batch.offsets, n_scans, self.real_dtype, self.device
        )
        totals = torch.zeros((n_passes, n_scans), dtype=torch.float64, device=self.device)
        corrector = self._corrector(batch, scans)
        bar = tqdm(passes, total=n_passes, desc="reconstruct", unit="it", disable=not opts.progress, leave=False)
        for i, schedule in enumerate(bar):
            moving = corrector is not None and corrector.due(first_pass + i + 1)
            position_grad = torch.zeros((len(batch.base), 2), dtype=self.real_dtype, device=self.device) if moving else None
            for step in schedule:
                grad.zero_()
                per_position = self._accumulate_gradient(potential, grad, batch, step.index, step.weights, position_grad)
                totals[i].index_add_(0, step.scan_of, per_position.to(torch.float64))
                if batch.illumination is not None:
                    grad /= batch.illumination
                self._regularise(potential, grad, batch.valid, step.active)
                self._update(potential, grad, moment1, moment2, steps, step.active)
                yield
            if position_grad is not None:
                curvature = slope_curvature(potential, batch.base, batch.offsets_in_window, batch.probes, batch.probe_rows, opts.chunk_positions)
                self._place(batch, corrector.update(position_grad, curvature))
            if opts.progress:
                bar.set_postfix(loss=f"{float(totals[i].sum()) / sum(batch.counts):.3e}")
            if on_pass is not None:
                on_pass(i + 1, [potential[b, self.pad : self.pad + s.grid.shape[0], self.pad : self.pad + s.grid.shape[1]] for b, s in enumerate(scans)])
        # the one wait for the device in the passes: every pass's losses at once
        histories = (totals.cpu() / torch.tensor(batch.counts, dtype=torch.float64)).T.tolist()
        on_host = potential.detach().to("cpu", torch.float32)  # one copy for all scans (a no-op view on the CPU: hence the clones)
        pad = self.pad
        results = [
            ReconResult(on_host[b, pad : pad + scan.grid.shape[0], pad : pad + scan.grid.shape[1]].clone(), scan.grid, histories[b])
            for b, scan in enumerate(scans)
        ]
        if corrector is not None:
            for b, (result, scan) in enumerate(zip(results, scans, strict=True)):
                px = batch.positions_px[batch.offsets[b] : batch.offsets[b] + batch.counts[b]].numpy() - pad
                result.positions_nm = px * scan.grid.pixel_nm + np.asarray(scan.grid.origin_nm)
                result.scan_matrix = corrector.scan_matrix(b)
        return results

    def _corrector(self, batch: _Batch, scans: list[ScanChunk]) -> PositionCorrector | None:
        """The position corrector of this call (``options.position_correction``), or None."""
        if self.options.position_correction is None:
            return None
        kw, pad = self.model_window, self.pad
        lower = torch.full_like(batch.positions_px, float(kw // 2))  # floor(px) - kw//2 >= 0: the window starts on the grid
        sizes = torch.tensor([[s.grid.shape[1] + 2 * pad, s.grid.shape[0] + 2 * pad] for s in scans], dtype=torch.float64)
        scan_of = torch.repeat_interleave(torch.arange(len(scans)), torch.tensor(batch.counts))
        upper = sizes[scan_of] - kw + kw // 2 + 1 - 1e-6  # floor(px) - kw//2 + kw <= size: it ends on the grid
        return PositionCorrector(self.options.position_correction, batch.nominal_px, batch.offsets, batch.counts,
                                 [s.grid.pixel_nm for s in scans], lower, upper, batch.positions_px)

    # ------------------------------------------------------------------ preparation

    def _prepare(self, scans: list[ScanChunk]) -> _Batch:
        k, kw, pad, b_ = self.window, self.model_window, self.pad, self.options.detector_binning
        height = max(s.grid.shape[0] for s in scans) + 2 * pad
        width = max(s.grid.shape[1] for s in scans) + 2 * pad
        # The model far field is left uncentred (no fftshift per update): the targets are
        # ifftshifted once instead. Binning commutes with the shift when the shift is a whole
        # number of b x b blocks (always for even K); otherwise the model is fftshifted.
        shift_model = (kw // 2) % b_ != 0
        values: list[torch.Tensor | None] = [patterns_on_device(scan.patterns, k, b, self.real_dtype, self.device) for b, scan in enumerate(scans)]
        masks = [check_invalid_pixels(scan.invalid_pixels, k, b) for b, scan in enumerate(scans)]
        valid_px = [None if m is None else torch.from_numpy(~m).to(self.device) for m in masks]
        # every scan's checks and normalisation from one transfer: (sum over valid pixels, min) per scan
        stats = torch.stack([torch.stack([valid_sum(v, valid_px[b]), v.min()]) for b, v in enumerate(values)]).double().cpu()
        checked = []
        for b, (intensity, scan) in enumerate(zip(values, scans, strict=True)):  # validate everything before allocating the batch
            total_b, least = float(stats[b, 0]), float(stats[b, 1])
            if not (math.isfinite(total_b) and least >= 0):
                raise_bad_patterns(intensity, b)
            positions = check_positions(scan.positions_nm, intensity.shape[0], b)
            check_windows_fit(scan.grid, positions, k, b, "position(s)")
            if self.options.normalize_patterns:
                mean_total = total_b / intensity.shape[0]
                if valid_px[b] is not None:  # the total over the whole detector, estimated from its valid pixels
                    mean_total /= valid_fraction(self.model_probe, b_, valid_px[b])
                if not mean_total > 0:
                    raise ValueError(f"scan {b}: patterns are all zero")
                intensity = intensity / mean_total  # out of place: the tensor may share memory with the caller's array
                values[b] = None  # the unnormalised copy goes now, not after every scan's (device memory)
            checked.append((intensity, positions))
        counts = [len(positions) for _, positions in checked]
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        total = sum(counts)
        # targets filled in place, scan by scan (no concatenation of per-scan copies); positions split on the host
        targets = torch.empty((total, k, k), dtype=self.real_dtype, device=self.device)
        positions_px = torch.empty((total, 2), dtype=torch.float64)
        planes = torch.empty(total, dtype=torch.long)
        valid = torch.zeros((len(scans), height, width), dtype=torch.bool, device=self.device)
        for b, ((intensity, positions), scan) in enumerate(zip(checked, scans, strict=True)):
            rows = slice(offsets[b], offsets[b] + counts[b])
            source = intensity if shift_model else torch.fft.ifftshift(intensity, dim=(-2, -1))  # elementwise ops commute with the shift
            if self.options.loss == "amplitude":
                torch.sqrt(source, out=targets[rows])  # straight into the batch: no temporary of every pattern
            else:
                targets[rows] = source
            positions_px[rows] = torch.from_numpy(scan.grid.positions_px(positions)) + pad
            planes[rows] = b * height * width
            valid[b, : scan.grid.shape[0] + 2 * pad, : scan.grid.shape[1] + 2 * pad] = True
        nominal_px = positions_px
        if self.options.position_correction is not None and any(s.corrected_positions_nm is not None for s in scans):
            nominal_px = positions_px.clone()
            for b, scan in enumerate(scans):
                if scan.corrected_positions_nm is not None:
                    start = check_positions(scan.corrected_positions_nm, counts[b], b)
                    check_windows_fit(scan.grid, start, k, b, "corrected position(s)")
                    positions_px[offsets[b] : offsets[b] + counts[b]] = torch.from_numpy(scan.grid.positions_px(start)) + pad
        steps = torch.arange(kw, device=self.device)
        in_window = (steps[:, None] * width + steps[None, :]).reshape(-1)
        base, probes, probe_rows, fractions = self._placement(positions_px, planes, width)
        batch = _Batch(targets, probes, probe_rows, base, in_window, shift_model, offsets, counts, valid, None, positions_px, nominal_px, planes,
                       fractions, pixel_weights(masks, k, self.real_dtype, self.device, shifted=not shift_model))
        if batch.pixel_weights is not None:
            batch.scan_of = torch.repeat_interleave(torch.arange(len(scans)), torch.tensor(counts)).to(self.device)
        if self.options.precondition != "none":
            batch.illumination = self._illumination(batch, tuple(valid.shape))
        return batch

    def _placement(self, positions_px: torch.Tensor, planes: torch.Tensor, width: int):
        """(base, probes, probe_rows, fractions) of probes at ``positions_px`` (M, 2) float64 (padded px); fractions only with
        position correction (else None)."""
        origin, fractions = split_positions(positions_px, self.model_window)
        base = (planes + origin[:, 1] * width + origin[:, 0]).to(self.device)
        if self.subpixel_steps:  # at most (steps + 1)^2 distinct shifted probes: new positions hit the cache too
            fractions = torch.round(fractions * self.subpixel_steps) / self.subpixel_steps
        probes, probe_rows = self._probe_cache.rows(fractions)
        moving = self.options.position_correction is not None
        return base, probes, probe_rows, fractions.to(self.device, self.real_dtype) if moving else None

    def _place(self, batch: _Batch, positions_px: torch.Tensor) -> None:
        """Move the batch's probes to ``positions_px`` (position correction): windows, shifted probes, preconditioner."""
        batch.positions_px = positions_px
        batch.base, batch.probes, batch.probe_rows, batch.fractions = self._placement(positions_px, batch.planes, batch.valid.shape[-1])
        if batch.illumination is not None:
            batch.illumination = self._illumination(batch, tuple(batch.valid.shape))

    def _illumination(self, batch: _Batch, shape: tuple[int, int, int]) -> torch.Tensor:
        """Per scan: sum over its positions of |shifted probe|^2 on the grid, + 5 % of its max (regulariser); relative: / the max,
        absolute: / the scan's N positions (the loss is a mean over them, so the step is then a fraction of a Newton step at any N)."""
        illumination = torch.zeros(shape, dtype=self.real_dtype, device=self.device)
        flat = illumination.view(-1)
        for start in range(0, len(batch.base), self.options.chunk_positions):
            part = slice(start, start + self.options.chunk_positions)
            lin = batch.base[part, None] + batch.offsets_in_window[None, :]
            flat.index_add_(0, lin.reshape(-1), total_power(batch.probes[batch.probe_rows[part]], self.modes is not None).reshape(-1))
        peak = illumination.flatten(1).amax(dim=1).clamp_min(1e-30)[:, None, None]
        if self.options.precondition == "absolute":
            positions = torch.tensor(batch.counts, dtype=self.real_dtype, device=self.device)[:, None, None]
            return (illumination + 0.05 * peak) / positions
        return illumination / peak + 0.05

    # ------------------------------------------------------------------ one update

    def _accumulate_gradient(
        self, potential: torch.Tensor, grad: torch.Tensor, batch: _Batch, index: torch.Tensor, weights: torch.Tensor,
        position_grad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Add the gradient of the weighted data loss of positions ``index`` to ``grad``; return per-position losses.

        With ``position_grad`` (M, 2), also add each position's gradient with respect to its probe
        position (px), divided by its weight (``recon.position_correction.position_gradient``).

        The gradient is written out by hand (no autograd graph): with Psi = F[P exp(iV)]
        (orthonormal FFT), I = bin(|Psi|^2) and dL/dI from the loss, the gradient on V is
        Im(conj(P exp(iV)) * F^-1[2 (dL/dI upsampled) Psi]), scattered back with index_add_.
        With probe modes (``recon.probe_modes``) I adds the modes' intensities and the gradient their terms.
        """
        opts = self.options
        k, b_, kw = self.window, opts.detector_binning, self.model_window
        # exp(iV) once per update on the whole stack, not once per window pixel
        flat = torch.complex(torch.cos(potential), torch.sin(potential)).view(-1)
        # every possible window as an overlapping strided view: row i is the window whose top-left is flat pixel i
        width = potential.shape[-1]
        n_origins = flat.numel() - (kw - 1) * width - kw + 1
        windows = flat.as_strided((n_origins, kw, kw), (1, width, 1))
        grad_flat = grad.view(-1)
        losses = []
        modes = self.modes is not None
        for start in range(0, len(index), opts.chunk_positions):
            part = index[start : start + opts.chunk_positions]
            m = len(part)
            bases = batch.base.index_select(0, part)
            waves = windows.index_select(0, bases)  # (m, kw, kw) patches of exp(iV): a strided gather, no index array
            probes = batch.probes.index_select(0, batch.probe_rows.index_select(0, part))
            waves = exit_waves_of_modes(waves, probes) if modes else waves.mul_(probes)  # (m, n, kw, kw) with modes
            far = torch.fft.fft2(waves, norm="ortho")
            if batch.shift_model:
                far = torch.fft.fftshift(far, dim=(-2, -1))
            intensity = far.real.square() + far.imag.square()  # contiguous (|far|^2 via conj-multiply is a strided view)
            if modes:
                intensity = incoherent_sum(intensity)
            if b_ > 1:
                intensity = bin_blocks(intensity, b_)
            target = batch.targets.index_select(0, part)
            w = weights[start : start + m, None, None]
            if opts.loss == "amplitude":
                model = intensity.add_(1e-12).sqrt_()
                residual = model - target
                d_intensity = residual / model * (2.0 * w)  # 2 * dL/dI: the 2 of d|Psi|^2 folded in
            else:
                residual = intensity - target
                d_intensity = residual * (4.0 * w)
            if batch.pixel_weights is not None:  # invalid detector pixels: no loss, no gradient (recon.detector_mask)
                pixel_w = weights_of(batch.pixel_weights, batch.scan_of, part)
                residual.mul_(pixel_w)
                d_intensity.mul_(pixel_w)
            losses.append(residual.square().sum(dim=(-2, -1)))
            if modes:
                d_intensity = d_intensity[:, None]  # the same dL/dI for every mode
            if b_ > 1:
                far.view(*far.shape[:-2], k, b_, k, b_).mul_(d_intensity[..., :, None, :, None])
            else:
                far.mul_(d_intensity)
            if batch.shift_model:
                far = torch.fft.ifftshift(far, dim=(-2, -1))
            back = torch.fft.ifft2(far, norm="ortho")
            if position_grad is not None:
                moved = position_gradient(back, windows.index_select(0, bases), self._probe_cache.spectrum, batch.fractions.index_select(0, part))
                position_grad.index_add_(0, part, moved / w[:, :, 0])
            d_phase = phase_gradient_of_modes(back, waves) if modes else back.mul_(waves.conj()).imag
            lin = (bases[:, None] + batch.offsets_in_window[None, :]).reshape(-1)
            grad_flat.index_add_(0, lin, d_phase.reshape(-1))
        return losses[0] if len(losses) == 1 else torch.cat(losses)

    def _regularise(self, potential: torch.Tensor, grad: torch.Tensor, valid: torch.Tensor, sel: torch.Tensor | slice) -> None:
        """Add the gradients of the TV and ridge penalties of the scans ``sel`` (a device index or ``slice(None)``) to ``grad``."""
        opts = self.options
        if opts.tv_weight == 0 and opts.l2_weight == 0:
            return
        v = potential[sel].detach().clone().requires_grad_(True)
        mask = valid[sel]
        penalty = torch.zeros((), dtype=v.dtype, device=v.device)
        if opts.tv_weight > 0:
            dx = (v[:, :, 1:] - v[:, :, :-1]) * (mask[:, :, 1:] & mask[:, :, :-1])
            dy = (v[:, 1:, :] - v[:, :-1, :]) * (mask[:, 1:, :] & mask[:, :-1, :])
            penalty = penalty + opts.tv_weight * (torch.sqrt(dx**2 + 1e-8).sum() + torch.sqrt(dy**2 + 1e-8).sum())
        if opts.l2_weight > 0:
            penalty = penalty + opts.l2_weight * ((v * mask) ** 2).sum()
        penalty.backward()
        grad[sel] += v.grad

    def _update(
        self, potential: torch.Tensor, grad: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, steps: torch.Tensor, sel: torch.Tensor | slice
    ) -> None:
        """One optimizer step for the scans ``sel`` only (a device index or ``slice(None)``); the others keep V and their state."""
        opts = self.options
        lr = opts.effective_step
        if opts.optimizer == "gd" and opts.momentum > 0:
            # Nesterov: velocity m1 <- mu m1 + g, step g + mu m1; only the active scans (the others' velocity must not move them)
            mu = opts.momentum
            g = grad[sel]
            velocity = m1[sel] * mu + g
            m1[sel] = velocity
            potential[sel] -= lr * (g + mu * velocity)
        elif opts.optimizer == "gd":
            # the inactive scans' gradient is exactly zero: one pass over the whole stack
            potential.sub_(grad, alpha=lr)
        else:
            g = grad[sel]
            b1, b2 = opts.adam_betas
            steps[sel] += 1
            t = steps[sel].to(potential.dtype)[:, None, None]
            m = b1 * m1[sel] + (1 - b1) * g
            v = b2 * m2[sel] + (1 - b2) * g**2
            m1[sel] = m
            m2[sel] = v
            m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            potential[sel] -= lr * m_hat / (torch.sqrt(v_hat) + _ADAM_EPS)
        if opts.nonnegative:
            potential.clamp_(min=0)


def run_to_end(run: Generator[None, None, list[ReconResult]]) -> list[ReconResult]:
    """Every step of ``run`` (``Reconstructor.steps``); its results."""
    while True:
        try:
            next(run)
        except StopIteration as done:
            return done.value
