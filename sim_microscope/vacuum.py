"""Where a specimen is vacuum: one definition for simulation records and evaluation.

A pixel of a ground-truth transmission phase (sigma * v_z, rad) is vacuum when the
phase, blurred with a Gaussian of full width at half maximum ``blur_nm`` (the probe's
size, 0.1 nm: about 0.61 lambda / alpha at 60 kV and 33 mrad; only regions the probe
sees as empty count, not the hollows between a monolayer's atomic columns), is below ``threshold_fraction`` (5 %) of the
blurred phase's ``percentile`` (99th) over the whole array, or below ``floor_rad`` when
that is larger (an all-vacuum array is all vacuum). The vacuum fraction of a dataset is
the fraction of pixels of the raster's field (the probe positions' bounding box) that
are vacuum, the mask being computed on the whole ground-truth array.
"""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms
from scipy.ndimage import gaussian_filter

VACUUM_BLUR_NM = 0.1
"""Full width at half maximum (nm) of the Gaussian blur before thresholding: about the probe size."""
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
VACUUM_THRESHOLD_FRACTION = 0.05
"""Vacuum: blurred phase below this fraction of its VACUUM_PERCENTILE."""
VACUUM_PERCENTILE = 99.0
VACUUM_FLOOR_RAD = 1e-3
"""Lowest threshold (rad), so that an array with (almost) no specimen is vacuum, not specimen."""
_PERIODIC_PAD_ANGSTROM = 10.0


def vacuum_mask(
    phase: np.ndarray,
    pixel_nm: float,
    *,
    blur_nm: float = VACUUM_BLUR_NM,
    threshold_fraction: float = VACUUM_THRESHOLD_FRACTION,
    percentile: float = VACUUM_PERCENTILE,
    floor_rad: float = VACUUM_FLOOR_RAD,
) -> np.ndarray:
    """Boolean (H, W) mask, True where the ground-truth phase is vacuum.

    Args:
        phase: (H, W) transmission phase sigma*v_z in rad, indexed [y, x] (a
            ``GroundTruth.phase``); only its magnitude matters, so a phase with an
            offset should have it removed first.
        pixel_nm: pixel size of ``phase`` in nm.
        blur_nm: full width at half maximum of the Gaussian blur in nm (0: none).
        threshold_fraction: vacuum is below this fraction of the blurred phase's
            ``percentile`` (in percent) over the array ...
        floor_rad: ... or below this many rad when that is larger.
    """
    phase = np.asarray(phase, dtype=np.float64)
    if phase.ndim != 2:
        raise ValueError(f"phase must be 2-D, got shape {phase.shape}")
    if not pixel_nm > 0:
        raise ValueError(f"pixel_nm must be positive, got {pixel_nm!r}")
    blurred = gaussian_filter(phase, blur_nm / _FWHM_PER_SIGMA / pixel_nm, mode="nearest") if blur_nm > 0 else phase
    threshold = max(threshold_fraction * float(np.percentile(blurred, percentile)), floor_rad)
    return blurred < threshold


def box_selection(
    shape: tuple[int, int], pixel_nm: float, origin_nm: tuple[float, float], box_nm: tuple[float, float, float, float]
) -> tuple[slice, slice]:
    """(rows, columns) slices of the pixels of a grid whose centres lie in box (xmin, xmax, ymin, ymax) nm.

    Pixel [iy, ix] sits at origin + (ix, iy) * pixel; a box thinner than a pixel gets the
    nearest pixel, and at least one pixel is always selected.
    """
    xmin, xmax, ymin, ymax = box_nm

    def axis(lo: float, hi: float, o: float, n: int) -> slice:
        start = int(np.ceil((lo - o) / pixel_nm - 1e-9))
        stop = int(np.floor((hi - o) / pixel_nm + 1e-9)) + 1
        if stop <= start:
            start = round((0.5 * (lo + hi) - o) / pixel_nm)
            stop = start + 1
        start, stop = max(0, start), min(n, stop)
        if stop <= start:
            raise ValueError(f"box {box_nm} nm lies outside the grid")
        return slice(start, stop)

    return axis(ymin, ymax, origin_nm[1], shape[0]), axis(xmin, xmax, origin_nm[0], shape[1])


def vacuum_fraction(
    phase: np.ndarray,
    pixel_nm: float,
    origin_nm: tuple[float, float] = (0.0, 0.0),
    *,
    positions_nm: np.ndarray | None = None,
    box_nm: tuple[float, float, float, float] | None = None,
    **mask_options,
) -> float:
    """Fraction in [0, 1] of a field that is vacuum (``vacuum_mask`` of the whole phase array).

    Args:
        phase, pixel_nm: as for ``vacuum_mask``.
        origin_nm: (x, y) in nm of pixel [0, 0].
        positions_nm: (N, 2) probe positions (x, y) in nm: the field is their bounding box.
        box_nm: (xmin, xmax, ymin, ymax) in nm instead; neither: the whole array.
        mask_options: ``vacuum_mask``'s keyword options.
    """
    if positions_nm is not None and box_nm is not None:
        raise ValueError("give positions_nm or box_nm, not both")
    mask = vacuum_mask(phase, pixel_nm, **mask_options)
    if positions_nm is not None:
        pos = np.asarray(positions_nm, dtype=np.float64).reshape(-1, 2)
        box_nm = (pos[:, 0].min(), pos[:, 0].max(), pos[:, 1].min(), pos[:, 1].max())
    if box_nm is not None:
        mask = mask[box_selection(mask.shape, pixel_nm, origin_nm, box_nm)]
    return float(mask.mean())


def specimen_phase(
    atoms: Atoms, pixel_nm: float = 0.03, *, energy_ev: float = 60_000.0
) -> tuple[np.ndarray, tuple[float, float]]:
    """Transmission phase sigma*v_z (rad) of a specimen over its in-plane field, and its origin (x, y) in nm.

    The field is the atoms' cell (``specimen_extent_angstrom``) at ``pixel_nm``; the same
    Kirkland potential as ``simulate_scan`` but without its probe-window margin, for
    previews, tests and vacuum fractions of a specimen before simulating patterns.
    """
    from recon.physics import interaction_parameter
    from recon.potential import projected_potential
    from sim_microscope.simulate import specimen_extent_angstrom

    xmin, xmax, ymin, ymax = specimen_extent_angstrom(atoms)
    pixel = pixel_nm * 10.0
    ny, nx = max(1, round((ymax - ymin) / pixel)), max(1, round((xmax - xmin) / pixel))
    pad = math.ceil(_PERIODIC_PAD_ANGSTROM / pixel)  # the grid is periodic: keep wrapped tails off the field
    origin = (xmin - pad * pixel, ymin - pad * pixel)
    potential = projected_potential(
        atoms.get_chemical_symbols(), atoms.positions[:, :2], (ny + 2 * pad, nx + 2 * pad), pixel, origin
    )
    phase = (interaction_parameter(energy_ev) * potential).numpy()[pad : pad + ny, pad : pad + nx].astype(np.float32)
    return phase, (xmin / 10.0, ymin / 10.0)
