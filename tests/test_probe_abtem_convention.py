"""Our aberrated probe against abTEM 1.0.11's, from a stored abTEM probe (no abTEM needed).

The fixture is abTEM's ``Probe(defocus=40 A, C12=25 A, phi12=30 deg, Cs=2e4 A)`` at 60 kV,
33 mrad on the reconstruction grid (64^2 at lambda / (64 * 1.68 mrad)), centred at pixel 32,
transposed to our [y, x] (bench/abtem_probe_convention.py --fixture). It pins the sign of
the defocus and the astigmatism angle's origin and sense: a change of either in
``recon.probe`` makes the overlap fall far below 1.
"""

from pathlib import Path

import numpy as np
import pytest

from recon.aberrations import ProbeAberrations

FIXTURE = Path(__file__).parent / "fixtures" / "abtem_probe_aberrated.npz"


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(abs(np.vdot(a, b)) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def stored():
    data = np.load(FIXTURE)
    truth = ProbeAberrations(**{name: float(data[name]) for name in ProbeAberrations.model_fields})
    return data, truth


def ours(data, aberrations: ProbeAberrations) -> np.ndarray:
    k = data["probe"].shape[-1]
    return aberrations.probe(k, float(data["pixel_a"]), float(data["energy_ev"]), float(data["convergence_mrad"])).numpy()


def test_fixture_is_an_aberrated_probe(stored):
    data, truth = stored
    assert truth.astigmatism_nm > 1 and truth.defocus_nm != 0 and truth.cs_um != 0
    assert 0 < truth.astigmatism_angle_deg < 45  # so that mirrored, swapped and turned angles all differ from it
    in_focus = ProbeAberrations().probe(64, float(data["pixel_a"]), float(data["energy_ev"]), float(data["convergence_mrad"])).numpy()
    assert overlap(in_focus, data["probe"]) < 0.8  # measured 0.66


def test_our_probe_matches_abtem_with_the_same_numbers(stored):
    data, truth = stored
    assert overlap(ours(data, truth), data["probe"]) > 0.99


@pytest.mark.parametrize(
    "slip",
    [
        {"astigmatism_angle_deg": lambda a: -a % 180.0},  # y mirrored
        {"astigmatism_angle_deg": lambda a: (90.0 - a) % 180.0},  # x and y exchanged
        {"astigmatism_angle_deg": lambda a: (a + 90.0) % 180.0},  # C12's sign
        {"defocus_nm": lambda d: -d},  # defocus sign
    ],
)
def test_a_convention_slip_does_not_match(stored, slip):
    data, truth = stored
    name, change = next(iter(slip.items()))
    wrong = truth.model_copy(update={name: change(getattr(truth, name))})
    assert overlap(ours(data, wrong), data["probe"]) < 0.9


def test_positive_defocus_means_the_crossover_lies_below_the_entrance(stored):
    """abTEM's FresnelPropagator brings its defocus +40 A probe to focus 40 A downstream (measured: peak
    fraction 0.0072 -> 0.0147 at +40 A, 0.0010 at -40 A); ours, propagated with the same forward kernel
    exp(-i pi lambda k^2 dz), does the same."""
    import math

    import torch

    from recon.physics import wavelength_angstrom
    from recon.probe import spatial_frequencies

    data, _ = stored
    k, pixel, energy, alpha = 64, float(data["pixel_a"]), float(data["energy_ev"]), float(data["convergence_mrad"])
    defocused = ProbeAberrations(defocus_nm=4.0).probe(k, pixel, energy, alpha)
    in_focus = ProbeAberrations().probe(k, pixel, energy, alpha).numpy()
    kx, ky = spatial_frequencies(k, pixel)
    lam = wavelength_angstrom(energy)

    def downstream(dz_a: float) -> np.ndarray:
        kernel = torch.exp(-1j * math.pi * lam * (kx**2 + ky**2) * dz_a)
        return torch.fft.ifft2(torch.fft.fft2(defocused) * kernel).numpy()

    assert overlap(downstream(40.0), in_focus) > 0.999
    assert overlap(downstream(-40.0), in_focus) < 0.5
