"""Shifted probes for the reconstructor: the probe moved by each position's sub-pixel fraction, cached between calls."""

from __future__ import annotations

import logging
import math

import torch

from recon.options import ReconOptions

log = logging.getLogger(__name__)


class ShiftedProbeCache:
    """Shifted probes by sub-pixel fraction, kept between calls up to ``options.probe_cache_mb``.

    A warm-started scan (the service's chunk updates) revisits positions it has seen; their
    shifted probes (one inverse FFT each) are looked up by their exact fraction instead.
    When the cache is full it starts over; a batch larger than the cache gets its own.
    """

    def __init__(self, spectrum: torch.Tensor, options: ReconOptions) -> None:
        self.spectrum = spectrum
        self.chunk = options.chunk_positions
        per_probe = spectrum.numel() * spectrum.element_size()
        self.capacity = int(options.probe_cache_mb * 2**20 // per_probe)
        self.bank = spectrum.new_empty((0, *spectrum.shape))
        self.index: dict[tuple[float, float], int] = {}

    def rows(self, fractions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probes, rows): the shifted probe of position i is probes[rows[i]]; fractions (M, 2) float64 (x, y)."""
        real = torch.float64 if self.spectrum.dtype == torch.complex128 else torch.float32
        keys = [tuple(f) for f in fractions.cpu().tolist()]
        unique = list(dict.fromkeys(keys))
        if len(unique) > self.capacity:  # larger than the cache: this batch's own probes
            own = self.spectrum.new_empty((len(unique), *self.spectrum.shape))
            shift_probe(self.spectrum, torch.tensor(unique, dtype=real, device=own.device), self.chunk, own)
            where = {k: i for i, k in enumerate(unique)}
            return own, torch.tensor([where[k] for k in keys], dtype=torch.long, device=own.device)
        missing = [k for k in unique if k not in self.index]
        if len(self.index) + len(missing) > self.capacity:
            self.index.clear()
            missing = unique
        if missing:
            start = len(self.index)
            if start + len(missing) > len(self.bank):
                grown = self.spectrum.new_empty((min(self.capacity, max(2 * len(self.bank), start + len(missing))), *self.spectrum.shape))
                grown[:start] = self.bank[:start]
                self.bank = grown
            shift_probe(self.spectrum, torch.tensor(missing, dtype=real, device=self.bank.device), self.chunk, self.bank[start : start + len(missing)])
            self.index.update((k, start + i) for i, k in enumerate(missing))
        return self.bank, torch.tensor([self.index[k] for k in keys], dtype=torch.long, device=self.bank.device)


def subpixel_steps_that_fit(steps: int | None, capacity: int) -> int | None:
    """``steps``, or the most whose (steps + 1)^2 shifted probes the cache holds (logged once per call site).

    Above that, a call with more distinct fractions than the cache holds shifts all its
    probes afresh (``ShiftedProbeCache.rows``), and rounding would save nothing: at
    K = 256 the default 256 MiB holds 512 probes, not 33^2 = 1,089.
    """
    if not steps or (steps + 1) ** 2 <= capacity or capacity < 9:  # a cache this small is off in practice: round as asked
        return steps
    fitted = math.isqrt(capacity) - 1
    log.info("subpixel_steps %d needs %d cached probes, the cache holds %d: rounding to 1/%d px instead", steps, (steps + 1) ** 2, capacity, fitted)
    return fitted


def shift_probe(spectrum: torch.Tensor, fraction: torch.Tensor, chunk: int, out: torch.Tensor) -> torch.Tensor:
    """Write into ``out`` (M, K, K) the probe shifted by (M, 2) sub-pixel offsets (x, y), from its spectrum fft2(probe).

    A spectrum of (n, K, K) probe modes gives (M, n, K, K), every mode shifted alike.

    Same as ``recon.forward.fourier_shift`` but with the probe's FFT taken once and the
    phase ramp applied as its separable y and x factors, in place.
    """
    size_y, size_x = spectrum.shape[-2:]
    fy = torch.fft.fftfreq(size_y, device=spectrum.device, dtype=fraction.dtype)
    fx = torch.fft.fftfreq(size_x, device=spectrum.device, dtype=fraction.dtype)
    for start in range(0, len(fraction), chunk):
        part = fraction[start : start + chunk]
        ramp_x = torch.exp(-2j * math.pi * part[:, 0, None] * fx[None, :]).to(spectrum.dtype)
        ramp_y = torch.exp(-2j * math.pi * part[:, 1, None] * fy[None, :]).to(spectrum.dtype)
        modes = (1,) * (spectrum.ndim - 2)  # a mode axis of (n, K, K) probe modes gets the same shift
        shifted = spectrum * ramp_y.view(len(part), *modes, size_y, 1)
        shifted.mul_(ramp_x.view(len(part), *modes, 1, size_x))
        torch.fft.ifft2(shifted, out=out[start : start + len(part)])
    return out
