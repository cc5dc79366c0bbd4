"""Diffraction patterns at any probe position, simulated on demand from a known phase object.

Evaluation at the paper's sampling density chooses a few hundred positions out of a
0.02 nm raster (10,000 candidates over 2 x 2 nm): simulating the whole raster up front
would cost far more than the positions actually measured. A dataset with ground truth
(``ground_truth/phase``, the transmission phase sigma*V in rad on the simulator's fine
grid) holds everything needed to simulate the patterns at exactly the positions a
strategy chooses.

The model is the simulator's single-slice one (``sim_microscope.simulate``) without
the detector's binning: the exit wave probe(r - R) * exp(i phase) on a window of
K * oversample fine pixels, its far field cropped to K x K detector pixels. Probe
centres are rounded to the nearest fine pixel (at most half a fine pixel, 0.0057 nm for
MoS2 at 60 kV and 64 px), so that one FFT per pattern suffices; probe positions in a
real microscope are not known better than that either.
"""

from __future__ import annotations

import numpy as np
import torch

from recon.aberrations import ProbeAberrations
from recon.dataset import Dataset4D
from recon.device import pick_device
from recon.physics import real_space_pixel_angstrom
from recon.probe import make_probe

_BATCH_BYTES = 128 * 2**20


class PhaseObjectSimulator:
    """Noise-free patterns (N, K, K), each summing to 1, of a phase object at arbitrary positions.

    Args:
        phase: (H, W) transmission phase in rad on a fine grid.
        pixel_nm: the phase grid's pixel, nm; must divide the reconstruction pixel
            wavelength / (K * detector_pixel_mrad) an integer number of times.
        origin_nm: (x, y) of phase pixel [0, 0], nm.
        energy_ev, convergence_mrad, detector_pixels, detector_pixel_mrad, defocus_nm:
            beam (eV, mrad, nm) and detector (K, mrad per pixel).
        aberrations: the probe's aberrations (defocus nm, astigmatism nm and deg, Cs um);
            when given they replace ``defocus_nm``.
        device: torch device (default CUDA when present).
        max_window: largest simulation window, pixels: a finer phase grid is block-averaged
            by the smallest divisor of its oversampling that fits (the DWCNT case, 86 px at
            0.0104 nm, would need 516 px; averaged 2 x 2 it runs at 258, ~4x faster). 0: never.
    """

    def __init__(self, phase: np.ndarray, pixel_nm: float, origin_nm: tuple[float, float], *, energy_ev: float,
                 convergence_mrad: float, detector_pixels: int, detector_pixel_mrad: float, defocus_nm: float = 0.0,
                 aberrations: ProbeAberrations | None = None, device: torch.device | str | None = None, max_window: int = 384):
        recon_pixel_nm = real_space_pixel_angstrom(energy_ev, detector_pixels, detector_pixel_mrad) / 10.0
        ratio = recon_pixel_nm / pixel_nm
        oversample = round(ratio)
        if oversample < 1 or abs(ratio - oversample) > 1e-3 * ratio:
            raise ValueError(
                f"the phase grid's pixel ({pixel_nm:.5f} nm) is not an integer fraction of the reconstruction pixel "
                f"({recon_pixel_nm:.5f} nm): cannot simulate patterns of this detector from it"
            )
        phase = np.asarray(phase, dtype=np.float32)
        factor = _coarsening(oversample, int(detector_pixels), max_window)
        if factor > 1:
            ny, nx = (phase.shape[0] // factor) * factor, (phase.shape[1] // factor) * factor
            phase = phase[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))
            shift = 0.5 * (factor - 1) * pixel_nm
            origin_nm = (origin_nm[0] + shift, origin_nm[1] + shift)
            pixel_nm, oversample = pixel_nm * factor, oversample // factor
        self.device = pick_device(device)
        self.detector_pixels = int(detector_pixels)
        self.pixel_nm = float(pixel_nm)
        self.origin_nm = (float(origin_nm[0]), float(origin_nm[1]))
        self.window = self.detector_pixels * oversample
        phase_t = torch.as_tensor(phase, device=self.device)
        self.transmission = torch.polar(torch.ones_like(phase_t), phase_t)
        if aberrations is None:
            self.probe = make_probe(self.window, pixel_nm * 10.0, energy_ev, convergence_mrad, defocus_angstrom=defocus_nm * 10.0,
                                    device=self.device)
        else:
            self.probe = aberrations.probe(self.window, pixel_nm * 10.0, energy_ev, convergence_mrad, device=self.device)

    @classmethod
    def from_dataset(cls, dataset: Dataset4D, device: torch.device | str | None = None, max_window: int = 384) -> PhaseObjectSimulator:
        """The simulator of a dataset's ground truth (raises ValueError when it has none).

        The probe is the true one when the dataset was read with its acquisition truth
        (``read_dataset(..., with_acquisition_truth=True)``: the microscope's side), else
        the nominal beam's. Scan errors are not applied to the positions asked for.
        """
        gt = dataset.ground_truth
        if gt is None:
            raise ValueError("the dataset has no ground truth phase to simulate patterns from")
        truth = dataset.acquisition_truth
        aberrations = None if truth is None else ProbeAberrations(**truth.aberrations)
        return cls(gt.phase, gt.pixel_nm, gt.origin_nm, energy_ev=dataset.energy_ev, convergence_mrad=dataset.convergence_mrad,
                   detector_pixels=dataset.detector_pixels, detector_pixel_mrad=dataset.detector_pixel_mrad,
                   defocus_nm=dataset.defocus_nm, aberrations=aberrations, device=device, max_window=max_window)

    def reachable(self, positions_nm: np.ndarray) -> np.ndarray:
        """(N,) bool: is each position's whole probe window on the phase grid?"""
        return self._inside(self._corners(positions_nm))

    def _inside(self, corner: np.ndarray) -> np.ndarray:
        ny, nx = self.transmission.shape
        return (corner[:, 0] >= 0) & (corner[:, 1] >= 0) & (corner[:, 0] + self.window <= nx) & (corner[:, 1] + self.window <= ny)

    def _corners(self, positions_nm: np.ndarray) -> np.ndarray:
        pos = np.asarray(positions_nm, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(pos).all():
            raise ValueError("positions_nm contains NaN or infinite values")
        centre = np.rint((pos - np.asarray(self.origin_nm)) / self.pixel_nm).astype(np.int64)
        return centre - self.window // 2

    def patterns(self, positions_nm: np.ndarray) -> np.ndarray:
        """(N, K, K) float32 noise-free patterns at (N, 2) positions (x, y) in nm, each summing to 1."""
        corner = self._corners(positions_nm)
        inside = self._inside(corner)
        if not inside.all():
            bad = int(np.flatnonzero(~inside)[0])
            raise ValueError(f"position {bad} {np.asarray(positions_nm)[bad].tolist()} nm: its probe window leaves the phase grid")
        out = np.empty((len(corner), self.detector_pixels, self.detector_pixels), dtype=np.float32)
        batch = max(1, _BATCH_BYTES // (self.window * self.window * 8 * 4))
        steps = torch.arange(self.window, device=self.device)
        k = self.detector_pixels
        # the K x K detector pixels around the zero frequency, read straight from the unshifted FFT
        # (fftshift and |.|^2 of the whole window cost as much as the FFT itself)
        crop = (torch.arange(k, device=self.device) - k // 2) % self.window
        with torch.no_grad():
            for start in range(0, len(corner), batch):
                c = torch.as_tensor(corner[start : start + batch], device=self.device)
                rows = (c[:, 1, None] + steps[None, :])[:, :, None]
                cols = (c[:, 0, None] + steps[None, :])[:, None, :]
                waves = self.probe[None] * self.transmission[rows, cols]
                far = torch.fft.fft2(waves, norm="ortho")[:, crop][:, :, crop]
                intensity = far.real.square() + far.imag.square()
                intensity = intensity / intensity.sum(dim=(-2, -1), keepdim=True)
                out[start : start + batch] = intensity.cpu().numpy()
        return out


def _coarsening(oversample: int, detector_pixels: int, max_window: int) -> int:
    """Smallest divisor f of ``oversample`` with detector_pixels * oversample / f <= max_window (1 when none is needed)."""
    if max_window <= 0:
        return 1
    for f in range(1, oversample + 1):
        if oversample % f == 0 and detector_pixels * oversample // f <= max_window:
            return f
    return oversample
