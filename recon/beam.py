"""The probe a reconstruction uses: the dataset's own, else one built from the beam parameters."""

from __future__ import annotations

import torch

from recon.dataset import Dataset4D
from recon.physics import real_space_pixel_angstrom
from recon.probe import make_probe


def reconstruction_pixel_nm(energy_ev: float, detector_pixels: int, detector_pixel_mrad: float) -> float:
    """The docs/DESIGN.md pixel: wavelength / (K * detector_pixel_mrad * 1e-3), in nm (0.04526 nm at 60 kV, K=64, 1.68 mrad)."""
    return real_space_pixel_angstrom(energy_ev, detector_pixels, detector_pixel_mrad) / 10.0


def probe_for(
    dataset: Dataset4D | None = None,
    *,
    energy_ev: float | None = None,
    convergence_mrad: float | None = None,
    detector_pixels: int | None = None,
    detector_pixel_mrad: float | None = None,
    defocus_nm: float | None = None,
    use_stored: bool = True,
) -> torch.Tensor:
    """(K, K) complex64 probe on the reconstruction grid, unit norm.

    With a dataset that stores a ``probe`` (and ``use_stored``), that probe; otherwise an
    aperture probe built from the beam parameters (keywords override the dataset's):
    energy (eV), convergence semi-angle (mrad), K, detector mrad/pixel, defocus (nm).
    """
    if dataset is not None and dataset.probe is not None and use_stored and defocus_nm is None:
        probe = torch.as_tensor(dataset.probe).to(torch.complex64)
        return probe / torch.sqrt(torch.sum(torch.abs(probe) ** 2))
    params = {
        "energy_ev": energy_ev,
        "convergence_mrad": convergence_mrad,
        "detector_pixels": detector_pixels,
        "detector_pixel_mrad": detector_pixel_mrad,
        "defocus_nm": defocus_nm,
    }
    if dataset is not None:
        own = {
            "energy_ev": dataset.energy_ev,
            "convergence_mrad": dataset.convergence_mrad,
            "detector_pixels": dataset.detector_pixels,
            "detector_pixel_mrad": dataset.detector_pixel_mrad,
            "defocus_nm": dataset.defocus_nm,
        }
        params = {key: own[key] if value is None else value for key, value in params.items()}
    if params["defocus_nm"] is None:
        params["defocus_nm"] = 0.0
    missing = [key for key, value in params.items() if value is None]
    if missing:
        raise ValueError(f"probe_for needs a dataset or the beam parameters; missing: {', '.join(missing)}")
    k = int(params["detector_pixels"])
    pixel_a = real_space_pixel_angstrom(params["energy_ev"], k, params["detector_pixel_mrad"])
    return make_probe(k, pixel_a, params["energy_ev"], params["convergence_mrad"], defocus_angstrom=10.0 * params["defocus_nm"])
