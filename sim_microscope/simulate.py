"""4D-STEM simulation: single-slice diffraction of a probe through a thin specimen.

The specimen's projected potential (Kirkland scattering factors, ``recon.potential``)
is sampled on a grid ``oversample`` times finer than the reconstruction pixel so that
the transmission function exp(i sigma v_z) is well sampled; the exit wave is computed
with the same forward model the reconstructor uses (``recon.forward``) on a window
``oversample`` times larger, its far field is cropped to the detector's angular range
(K x K pixels at the detector's mrad/pixel), then binned. Each pattern is normalised to
sum to 1 (the beam current reaching the detector; what scatters beyond the detector's
edge, typically 1-3 % for MoS2 at 60 kV / 33 mrad / 64 px, is reported by
``SimulationResult.detector_fraction``). With a dose, counts are Poisson draws.

With binning, the far field is sampled half a raw pixel off the FFT grid (even binning,
a tilt of the exit wave) so that the zero frequency falls at the centre of binned pixel
(K//2, K//2), the convention of docs/DESIGN.md and of the reconstructor's forward model;
without it a 2x-binned pattern is centred at K//2 - 0.25.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from tqdm.auto import tqdm

from recon.aberrations import ProbeAberrations
from recon.coherence import PartialCoherence
from recon.device import pick_device
from recon.forward import bin_patterns, exit_waves, far_field_intensity
from recon.physics import interaction_parameter, real_space_pixel_angstrom
from recon.potential import projected_potential

POTENTIAL_PIXEL_TARGET_ANGSTROM = 0.12
"""Finest pixel the potential needs; sets the default oversampling (see bench/fidelity_abtem.py)."""
_MEMORY_PER_BATCH_BYTES = 256 * 2**20


@dataclass
class SimulationResult:
    """Patterns and what was used to make them."""

    patterns: np.ndarray
    """(N, K, K) float32 normalised patterns, or uint32 counts when a dose was given."""
    phase: np.ndarray
    """(H, W) float32 transmission phase sigma*v_z in rad on the simulation grid."""
    phase_pixel_nm: float
    phase_origin_nm: tuple[float, float]
    """(x, y) in nm of phase pixel [0, 0]."""
    probe: np.ndarray
    """(K, K) complex64 probe on the reconstruction grid."""
    detector_fraction: np.ndarray
    """(N,) fraction of the incident beam that lands on the detector."""


def specimen_extent_angstrom(atoms: Atoms) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) of the specimen: its cell if it has an in-plane one, else the atoms' bounds."""
    cell = atoms.cell
    if cell.rank >= 2 and cell.orthorhombic and cell[0, 0] > 0 and cell[1, 1] > 0:
        return 0.0, float(cell[0, 0]), 0.0, float(cell[1, 1])
    if len(atoms) == 0:
        raise ValueError("the specimen has no atoms and no in-plane cell")
    xy = atoms.positions[:, :2]
    return float(xy[:, 0].min()), float(xy[:, 0].max()), float(xy[:, 1].min()), float(xy[:, 1].max())


def _check_positions(positions_nm: np.ndarray, atoms: Atoms) -> np.ndarray:
    positions = np.asarray(positions_nm, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2 or positions.shape[0] == 0:
        raise ValueError(f"positions_nm must have shape (N, 2) with N >= 1, got {positions.shape}")
    if not np.isfinite(positions).all():
        raise ValueError(f"positions_nm contains NaN or infinite values (first at row {int(np.argwhere(~np.isfinite(positions))[0, 0])})")
    xmin, xmax, ymin, ymax = (v * 0.1 for v in specimen_extent_angstrom(atoms))
    tol = 1e-9
    outside = (
        (positions[:, 0] < xmin - tol) | (positions[:, 0] > xmax + tol) | (positions[:, 1] < ymin - tol) | (positions[:, 1] > ymax + tol)
    )
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{int(outside.sum())} position(s) lie outside the specimen "
            f"(x {xmin:.3f}..{xmax:.3f} nm, y {ymin:.3f}..{ymax:.3f} nm); first: row {i} at "
            f"({positions[i, 0]:.3f}, {positions[i, 1]:.3f}) nm"
        )
    return positions


def _fft_friendly(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def simulate_scan(
    atoms: Atoms,
    positions_nm: np.ndarray,
    *,
    energy_ev: float,
    convergence_mrad: float,
    detector_pixels: int,
    detector_pixel_mrad: float,
    defocus_nm: float = 0.0,
    cs_mm: float = 0.0,
    aberrations: ProbeAberrations | None = None,
    binning: int = 1,
    oversample: int | None = None,
    dose: float | None = None,
    dose_per_a2: float | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    coherence: PartialCoherence | None = None,
) -> SimulationResult:
    """Simulate patterns at every position and return them with the phase and probe used.

    Args:
        atoms: specimen, beam along z, Angstrom (ase units).
        positions_nm: (N, 2) probe positions (x, y) in nm in the atoms' frame.
        energy_ev: beam energy (eV); convergence_mrad: probe semi-angle (mrad).
        detector_pixels: K, pixels per side of the returned (binned) patterns.
        detector_pixel_mrad: angular size of one returned (binned) pixel in mrad.
        defocus_nm: defocus (nm, abTEM's sign); cs_mm: spherical aberration (mm).
        aberrations: the probe's aberrations (defocus, two-fold astigmatism, Cs); when
            given they replace ``defocus_nm`` and ``cs_mm``.
        binning: the detector is simulated at K*binning pixels of
            detector_pixel_mrad/binning and summed binning x binning.
        oversample: potential sampling relative to the reconstruction pixel; None picks
            the smallest integer giving a pixel <= 0.12 A.
        dose: electrons per pattern (Poisson counts are returned as uint32).
        dose_per_a2: electrons per A^2 instead; per pattern = dose_per_a2 * (mean
            nearest-neighbour spacing)^2 (the step^2 of a raster).
        seed: seed of the Poisson noise.
        device: torch device; default CUDA when present.
        progress: show a progress bar.
        coherence: partial coherence (``recon.coherence``): each pattern is the weighted
            sum of the intensities of ``coherence.nodes()`` coherent probes (defocus and position
            offsets), at that many times the cost; None or coherent: one probe. The returned
            ``probe`` is the coherent one.
    """
    if dose is not None and dose_per_a2 is not None:
        raise ValueError("give dose (per pattern) or dose_per_a2, not both")
    if binning < 1 or detector_pixels < 1:
        raise ValueError("binning and detector_pixels must be >= 1")
    positions = _check_positions(positions_nm, atoms)
    device = pick_device(device)
    if aberrations is None:
        aberrations = ProbeAberrations(defocus_nm=defocus_nm, cs_um=cs_mm * 1e3)
    raw_pixels = detector_pixels * binning
    pixel = real_space_pixel_angstrom(energy_ev, raw_pixels, detector_pixel_mrad / binning)
    if oversample is None:
        oversample = max(1, math.ceil(pixel / POTENTIAL_PIXEL_TARGET_ANGSTROM - 1e-9))
    fine_pixel = pixel / oversample
    window = raw_pixels * oversample

    nodes = [(0.0, 0.0, 0.0, 1.0)] if coherence is None or coherence.is_coherent else coherence.nodes()
    reach_a = 10.0 * max(max(abs(dx), abs(dy)) for _, dx, dy, _ in nodes)  # the farthest position offset, A

    # Potential grid: every probe window (and its partially coherent offsets) plus a 2-pixel margin.
    pos_a = positions * 10.0
    margin = window // 2 + 2 + math.ceil(reach_a / fine_pixel)
    origin = pos_a.min(axis=0) - margin * fine_pixel
    span = (pos_a.max(axis=0) - pos_a.min(axis=0)) / fine_pixel
    nx = _fft_friendly(math.ceil(span[0]) + 2 * margin + 1)
    ny = _fft_friendly(math.ceil(span[1]) + 2 * margin + 1)
    xy = atoms.positions[:, :2]
    extent = np.array([nx, ny]) * fine_pixel
    keep = np.all((xy >= origin) & (xy < origin + extent), axis=1)
    symbols = np.asarray(atoms.get_chemical_symbols())[keep].tolist()
    potential = projected_potential(symbols, xy[keep], (ny, nx), fine_pixel, tuple(origin), device=device)
    phase = (interaction_parameter(energy_ev) * potential).float()
    transmission = torch.polar(torch.ones_like(phase), phase)

    probes = {dz: aberrations.model_copy(update={"defocus_nm": aberrations.defocus_nm + dz}).probe(window, fine_pixel, energy_ev,
                                                                                                   convergence_mrad, device=device)
              for dz in {node[0] for node in nodes}}
    positions_px = torch.as_tensor((pos_a - origin) / fine_pixel, device=device, dtype=torch.float32)
    ramp = _binned_centre_ramp(window, raw_pixels, detector_pixels, binning, device)
    batch = max(1, _MEMORY_PER_BATCH_BYTES // (window * window * 8 * 6))
    patterns = torch.empty((len(positions), detector_pixels, detector_pixels), dtype=torch.float32)
    fraction = torch.empty(len(positions), dtype=torch.float32)
    for start in tqdm(range(0, len(positions), batch), desc="patterns", unit="batch", disable=not progress, leave=False):
        intensity = None
        for dz, dx, dy, weight in nodes:  # intensities of the coherent probes add (one node when coherent)
            offset = torch.tensor([dx * 10.0 / fine_pixel, dy * 10.0 / fine_pixel], device=device, dtype=torch.float32)
            waves = exit_waves(transmission, probes[dz], positions_px[start : start + batch] + offset)
            if ramp is not None:
                waves = waves * ramp
            part = weight * bin_patterns(far_field_intensity(waves, crop=raw_pixels), binning)
            intensity = part if intensity is None else intensity + part
        total = intensity.sum(dim=(-2, -1))
        fraction[start : start + batch] = total.cpu()
        patterns[start : start + batch] = (intensity / total[:, None, None]).cpu()

    result = patterns.numpy()
    if dose_per_a2 is not None:
        dose = dose_per_a2 * _area_per_position_a2(pos_a)
    if dose is not None:
        if not dose > 0:
            raise ValueError(f"dose must be positive, got {dose}")
        rng = np.random.default_rng(seed)
        result = rng.poisson(result.astype(np.float64) * dose).astype(np.uint32)
    probe = aberrations.reconstruction_probe(energy_ev, convergence_mrad, detector_pixels, detector_pixel_mrad)
    return SimulationResult(
        patterns=result,
        phase=phase.cpu().numpy(),
        phase_pixel_nm=fine_pixel / 10.0,
        phase_origin_nm=(float(origin[0] / 10.0), float(origin[1] / 10.0)),
        probe=probe.numpy(),
        detector_fraction=fraction.numpy(),
    )


def binned_centre_offset(detector_pixels: int, binning: int) -> float:
    """Raw-detector pixels by which the far field must move so that binned pixel (K//2, K//2) is centred on the zero frequency.

    The unbinned far field of ``detector_pixels * binning`` pixels has its zero frequency
    at raw pixel (K*b)//2; binned pixel K//2 covers raw pixels b*(K//2) .. b*(K//2)+b-1,
    whose centre is b*(K//2) + (b-1)/2. For K even and b = 2 the offset is +0.5.
    """
    return binning * (detector_pixels // 2) + (binning - 1) / 2 - (detector_pixels * binning) // 2


def _binned_centre_ramp(window: int, raw_pixels: int, detector_pixels: int, binning: int, device) -> torch.Tensor | None:
    """Phase ramp exp(2 pi i d (x + y) / window) that moves the far field by d = binned_centre_offset pixels."""
    offset = binned_centre_offset(detector_pixels, binning)
    if offset == 0:
        return None
    ramp = torch.exp(2j * math.pi * offset * torch.arange(window, dtype=torch.float64, device=device) / window)
    return (ramp[:, None] * ramp[None, :]).to(torch.complex64)


def _area_per_position_a2(positions_a: np.ndarray) -> float:
    """Mean nearest-neighbour spacing squared (A^2): the step^2 of a raster."""
    if len(positions_a) < 2:
        raise ValueError("dose_per_a2 needs at least two positions to define an area per position")
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(positions_a).query(positions_a, k=2)
    return float(np.mean(distances[:, 1]) ** 2)


def simulate_patterns(
    atoms: Atoms,
    positions_nm: np.ndarray,
    *,
    energy_ev: float,
    convergence_mrad: float,
    detector_pixels: int,
    detector_pixel_mrad: float,
    defocus_nm: float = 0.0,
    dose: float | None = None,
    seed: int | None = None,
    **options,
) -> np.ndarray:
    """Diffraction patterns (N, K, K) of ``atoms`` at probe positions (x, y) in nm.

    Patterns are centred (zero frequency at pixel (K//2, K//2), detector x along the
    last axis) and sum to 1 per position when ``dose`` is None; with a dose (electrons
    per pattern) they are Poisson counts (uint32). Further keyword options
    (``binning``, ``oversample``, ``cs_mm``, ``dose_per_a2``, ``device``,
    ``progress``) are those of ``simulate_scan``.
    """
    return simulate_scan(
        atoms,
        positions_nm,
        energy_ev=energy_ev,
        convergence_mrad=convergence_mrad,
        detector_pixels=detector_pixels,
        detector_pixel_mrad=detector_pixel_mrad,
        defocus_nm=defocus_nm,
        dose=dose,
        seed=seed,
        **options,
    ).patterns
