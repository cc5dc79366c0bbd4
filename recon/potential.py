"""Projected atomic potentials from Kirkland's (2010) electron scattering factors.

The projected potential of a set of atoms is computed in Fourier space: the 2D Fourier
transform of v_z(x, y) is 47.878 V*A^2 * f_e(q_x, q_y, q_z=0) * sum_j exp(-2 pi i q.r_j),
which is exact for the grid's band limit (no real-space cut-off radius, no aliasing of
the potential itself). The structure factor of each element is one complex matrix
product (rows x atoms x columns), so the cost is small next to the diffraction FFTs.
Atoms are taken as given (no thermal smearing); the grid is periodic, so give it a
margin around the region that matters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
from scipy.special import k0

from recon.physics import KIRKLAND_POTENTIAL_PREFACTOR_V_A2

_TABLE_FILE = "kirkland2010.json"


@lru_cache(maxsize=1)
def _kirkland_table() -> dict[str, np.ndarray]:
    text = resources.files("recon").joinpath("data", _TABLE_FILE).read_text()
    raw = json.loads(text)["elements"]
    return {symbol: np.asarray(values, dtype=np.float64).reshape(4, 3) for symbol, values in raw.items()}


def kirkland_parameters(symbol: str) -> np.ndarray:
    """Kirkland's fit parameters for an element as a (4, 3) array: rows a, b, c, d."""
    table = _kirkland_table()
    if symbol not in table:
        raise ValueError(f"no Kirkland scattering factor for element {symbol!r}")
    return table[symbol]


def scattering_factor(symbol: str, q2: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Electron scattering factor f_e in Angstrom at squared spatial frequency q2 (1/A^2)."""
    a, b, c, d = kirkland_parameters(symbol)
    exp = torch.exp if isinstance(q2, torch.Tensor) else np.exp
    f = 0.0
    for i in range(3):
        f = f + a[i] / (q2 + b[i]) + c[i] * exp(-d[i] * q2)
    return f


def projected_potential_radial(symbol: str, r_angstrom: np.ndarray) -> np.ndarray:
    """Real-space projected potential of one atom in V*A at radius r (A), Kirkland eq. C.20.

    Used to cross-check the Fourier-space grid potential; diverges logarithmically at r=0.
    """
    a, b, c, d = kirkland_parameters(symbol)
    r = np.asarray(r_angstrom, dtype=np.float64)
    a0e = KIRKLAND_POTENTIAL_PREFACTOR_V_A2 / (2.0 * math.pi)  # a0 * e in V*A^2
    v = np.zeros_like(r)
    for i in range(3):
        v += 4.0 * math.pi**2 * a0e * a[i] * k0(2.0 * math.pi * r * math.sqrt(b[i]))
        v += 2.0 * math.pi**2 * a0e * c[i] / d[i] * np.exp(-(math.pi**2) * r**2 / d[i])
    return v


def projected_potential(
    symbols: Sequence[str],
    positions_xy_angstrom: np.ndarray,
    shape: tuple[int, int],
    pixel_angstrom: float,
    origin_angstrom: tuple[float, float] = (0.0, 0.0),
    *,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Projected potential v_z in V*A on a periodic grid, as a float64 tensor (ny, nx).

    Args:
        symbols: chemical symbol of every atom.
        positions_xy_angstrom: (n_atoms, 2) atom positions (x, y) in Angstrom.
        shape: grid shape (ny, nx); pixel [iy, ix] sits at origin + (ix, iy) * pixel.
        pixel_angstrom: square pixel size in Angstrom.
        origin_angstrom: (x, y) in Angstrom of pixel [0, 0].
        device: torch device for the computation.
    """
    ny, nx = shape
    positions = np.asarray(positions_xy_angstrom, dtype=np.float64).reshape(-1, 2)
    if len(symbols) != len(positions):
        raise ValueError(f"{len(symbols)} symbols but {len(positions)} positions")
    device = torch.device(device)
    qx = torch.fft.fftfreq(nx, d=pixel_angstrom, dtype=torch.float64, device=device)
    qy = torch.fft.fftfreq(ny, d=pixel_angstrom, dtype=torch.float64, device=device)
    q2 = qy[:, None] ** 2 + qx[None, :] ** 2
    spectrum = torch.zeros((ny, nx), dtype=torch.complex128, device=device)
    symbols_arr = np.asarray(symbols)
    relative = torch.as_tensor(positions - np.asarray(origin_angstrom)[None, :], device=device)
    for symbol in sorted(set(symbols_arr.tolist())):
        sel = torch.as_tensor(np.flatnonzero(symbols_arr == symbol), device=device)
        xy = relative[sel]
        # Structure factor S(qy, qx) = sum_j exp(-2 pi i (qy y_j + qx x_j)) as one matmul.
        phase_y = torch.exp(-2j * math.pi * qy[None, :] * xy[:, 1:2])  # (n, ny)
        phase_x = torch.exp(-2j * math.pi * qx[None, :] * xy[:, 0:1])  # (n, nx)
        structure = phase_y.transpose(0, 1) @ phase_x
        spectrum += scattering_factor(symbol, q2) * structure
    spectrum *= KIRKLAND_POTENTIAL_PREFACTOR_V_A2 / pixel_angstrom**2
    return torch.fft.ifft2(spectrum).real
