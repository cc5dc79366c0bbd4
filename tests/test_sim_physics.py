"""Physics checks of the simulator and the shared forward model against known values.

Each check compares with an independent number (tabulated wavelengths, Kirkland's
interaction parameter, Kirkland's real-space potential, the aperture geometry), so a
wrong constant, sign, orientation or normalisation fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms

from recon.forward import bin_patterns, fourier_shift
from recon.physics import interaction_parameter, real_space_pixel_angstrom, wavelength_angstrom
from recon.potential import projected_potential, projected_potential_radial
from recon.probe import make_probe
from sim_microscope import simulate_scan, tmd_monolayer
from sim_microscope.simulate import binned_centre_offset

BEAM = dict(energy_ev=60e3, convergence_mrad=20.0)


def vacuum(size_nm: float = 4.0) -> Atoms:
    return Atoms(cell=[size_nm * 10, size_nm * 10, 10.0])


def centroid(pattern: np.ndarray) -> tuple[float, float]:
    yy, xx = np.indices(pattern.shape)
    total = pattern.sum()
    return float((pattern * xx).sum() / total), float((pattern * yy).sum() / total)


@pytest.mark.parametrize(("kv", "angstrom"), [(60, 0.048661), (100, 0.037014), (200, 0.025079), (300, 0.019687)])
def test_wavelength_matches_tabulated_values(kv, angstrom):
    assert wavelength_angstrom(kv * 1e3) == pytest.approx(angstrom, rel=1e-4)


def test_interaction_parameter_at_200_kv():
    # Kirkland (2010), table 5.1: sigma = 7.29e-4 rad/(V A) at 200 kV.
    assert interaction_parameter(200e3) == pytest.approx(7.29e-4, rel=2e-3)
    assert interaction_parameter(60e3) > interaction_parameter(200e3)  # slower electrons scatter more


def test_real_space_pixel_of_the_paper_setting():
    assert real_space_pixel_angstrom(60e3, 64, 1.68) == pytest.approx(0.4526, rel=1e-3)


@pytest.mark.parametrize("symbol", ["Mo", "S"])
def test_fourier_potential_matches_kirkland_real_space_formula(symbol):
    pixel, n = 0.05, 400
    centre = (n // 2 * pixel, n // 2 * pixel)
    grid = projected_potential([symbol], np.array([centre]), (n, n), pixel).numpy()
    yy, xx = np.indices(grid.shape)
    rr = np.hypot(yy - n // 2, xx - n // 2) * pixel
    expected = projected_potential_radial(symbol, rr)
    # The band limit (Nyquist 10 / A) makes the grid ring pixel to pixel around the exact
    # curve; averaged over annuli 0.1 A wide, 0.3 .. 2.5 A from the nucleus, they agree.
    for r0 in np.arange(0.3, 2.5, 0.1):
        ring = (rr >= r0) & (rr < r0 + 0.1)
        assert grid[ring].mean() == pytest.approx(expected[ring].mean(), rel=0.01), f"{symbol} at {r0:.1f} A"
    # Orientation-free sanity: the grid is isotropic ([y, x] versus [x, y]).
    np.testing.assert_allclose(grid, grid.T, atol=1e-9 * grid.max())


def test_potential_places_atoms_at_their_x_y():
    pixel, x, y = 0.1, 7.3, 2.1
    grid = projected_potential(["Mo"], np.array([[x, y]]), (60, 120), pixel).numpy()
    iy, ix = np.unravel_index(np.argmax(grid), grid.shape)
    assert (ix * pixel, iy * pixel) == (pytest.approx(x, abs=pixel), pytest.approx(y, abs=pixel))


def test_probe_is_normalised_with_the_aperture_radius():
    size, pixel = 96, 0.3
    probe = make_probe(size, pixel, 60e3, 20.0)
    assert float((probe.abs() ** 2).sum()) == pytest.approx(1.0, rel=1e-5)
    # Centred at size//2 (the centroid sits a little off: the even grid's Nyquist row is one-sided).
    assert np.unravel_index(np.argmax(probe.abs().numpy()), probe.shape) == (size // 2, size // 2)
    spectrum = torch.fft.fftshift(torch.fft.fft2(probe, norm="ortho")).abs().numpy() ** 2
    dalpha = wavelength_angstrom(60e3) / (size * pixel) * 1e3
    radius_px = 20.0 / dalpha
    yy, xx = np.indices(spectrum.shape)
    rr = np.hypot(yy - size // 2, xx - size // 2)
    assert spectrum[rr > radius_px + 1].sum() < 1e-6
    inside = spectrum[rr < radius_px - 1]
    assert inside.std() / inside.mean() < 1e-3  # flat-topped disc
    # The soft edge has amplitude 1/2 (intensity 1/4) at the convergence angle.
    assert (spectrum > 0.25 * inside.mean()).sum() == pytest.approx(math.pi * radius_px**2, rel=0.03)


def test_integer_fourier_shift_equals_roll(rng):
    waves = torch.as_tensor(rng.normal(size=(2, 16, 16)) + 1j * rng.normal(size=(2, 16, 16)), dtype=torch.complex128)
    shift = torch.tensor([[3.0, -2.0], [0.0, 5.0]], dtype=torch.float64)
    shifted = fourier_shift(waves, shift)
    for i in range(2):
        expected = torch.roll(waves[i], shifts=(int(shift[i, 1]), int(shift[i, 0])), dims=(0, 1))  # (x, y) -> dims (1, 0)
        torch.testing.assert_close(shifted[i], expected)
    half = fourier_shift(fourier_shift(waves, shift / 2), shift / 2)
    torch.testing.assert_close(half, shifted)


@pytest.mark.parametrize(("oversample", "binning"), [(1, 1), (3, 1), (2, 2)])
def test_vacuum_pattern_is_the_probe_disc(oversample, binning):
    k, pixel_mrad = 32, 2.0
    result = simulate_scan(
        vacuum(),
        np.array([[2.0, 2.0], [2.13, 1.91]]),
        **BEAM,
        detector_pixels=k,
        detector_pixel_mrad=pixel_mrad,
        binning=binning,
        oversample=oversample,
    )
    patterns = result.patterns
    np.testing.assert_allclose(patterns.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(result.detector_fraction, 1.0, atol=1e-4)
    # Vacuum: the position does not matter. With binning the far field is sampled half a
    # pixel off the FFT grid, where the probe's wrapped tails differ by position: ~1 % at
    # the disc's edge pixels.
    np.testing.assert_allclose(patterns[0], patterns[1], atol=1e-6 if binning == 1 else 2e-5)
    for pattern in patterns:
        assert centroid(pattern) == (pytest.approx(k // 2, abs=0.01), pytest.approx(k // 2, abs=0.01))
    radius_px = BEAM["convergence_mrad"] / pixel_mrad
    assert (patterns[0] > 0.25 * patterns[0].max()).sum() == pytest.approx(math.pi * radius_px**2, rel=0.05)
    if binning == 1:  # exactly the far field of the probe the dataset records
        disc = torch.fft.fftshift(torch.fft.fft2(torch.as_tensor(result.probe), norm="ortho")).abs().numpy() ** 2
        np.testing.assert_allclose(patterns[0], disc, atol=2e-6)


@pytest.mark.parametrize(("k", "binning"), [(16, 2), (15, 2), (16, 3)])
def test_binned_patterns_are_centred_at_k_half(k, binning):
    result = simulate_scan(
        vacuum(),
        np.array([[2.0, 2.0]]),
        energy_ev=60e3,
        convergence_mrad=10.0,
        detector_pixels=k,
        detector_pixel_mrad=2.0,
        binning=binning,
        oversample=1,
    )
    assert centroid(result.patterns[0]) == (pytest.approx(k // 2, abs=0.01), pytest.approx(k // 2, abs=0.01))
    assert binned_centre_offset(64, 2) == 0.5 and binned_centre_offset(64, 1) == 0


def test_specimen_patterns_sum_to_one_and_scatter_where_the_atom_is():
    atoms = Atoms("Mo", positions=[[25.0, 27.0, 0.0]], cell=[50.0, 50.0, 10.0])
    # Probe on the atom, and at the position with x and y swapped: only the first scatters strongly.
    result = simulate_scan(
        atoms, np.array([[2.5, 2.7], [2.7, 2.5]]), **BEAM, detector_pixels=32, detector_pixel_mrad=2.0, oversample=2
    )
    np.testing.assert_allclose(result.patterns.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    yy, xx = np.indices((32, 32))
    dark = np.hypot(yy - 16, xx - 16) > 20.0 / 2.0 + 1.5
    on, off = result.patterns[:, dark].sum(axis=1)
    assert on > 5 * off
    # The phase map puts the atom at its (x, y).
    iy, ix = np.unravel_index(np.argmax(result.phase), result.phase.shape)
    x0, y0 = result.phase_origin_nm
    assert x0 + ix * result.phase_pixel_nm == pytest.approx(2.5, abs=result.phase_pixel_nm)
    assert y0 + iy * result.phase_pixel_nm == pytest.approx(2.7, abs=result.phase_pixel_nm)


def test_mos2_patterns_sum_to_one_with_a_small_loss_beyond_the_detector():
    atoms = tmd_monolayer("MoS2", (3.0, 3.0), seed=2)
    result = simulate_scan(
        atoms,
        np.array([[1.5, 1.5], [1.6, 1.4]]),
        energy_ev=60e3,
        convergence_mrad=33.0,
        detector_pixels=32,
        detector_pixel_mrad=3.36,
        binning=2,
    )
    np.testing.assert_allclose(result.patterns.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert np.all((result.detector_fraction > 0.95) & (result.detector_fraction < 1.0))


def test_dose_gives_seeded_poisson_counts_with_the_right_mean():
    positions = np.array([[2.0, 2.0]] * 40)
    kwargs = dict(**BEAM, detector_pixels=16, detector_pixel_mrad=4.0, oversample=1, dose=500.0)
    counts = simulate_scan(vacuum(), positions, **kwargs, seed=7).patterns
    assert counts.dtype == np.uint32
    assert counts.sum(axis=(1, 2)).mean() == pytest.approx(500.0, rel=0.03)
    expected = simulate_scan(vacuum(), positions[:1], **{**kwargs, "dose": None}).patterns[0] * 500.0
    np.testing.assert_allclose(counts.mean(axis=0), expected, atol=4 * np.sqrt(expected.max() / 40))
    np.testing.assert_array_equal(counts, simulate_scan(vacuum(), positions, **kwargs, seed=7).patterns)
    assert not np.array_equal(counts, simulate_scan(vacuum(), positions, **kwargs, seed=8).patterns)


def test_binning_sums_blocks(rng):
    patterns = torch.as_tensor(rng.random((3, 12, 12)))
    binned = bin_patterns(patterns, 3)
    expected = patterns.numpy().reshape(3, 4, 3, 4, 3).sum(axis=(2, 4))
    np.testing.assert_allclose(binned.numpy(), expected)
    assert float(binned.sum()) == pytest.approx(float(patterns.sum()))
    with pytest.raises(ValueError, match="not divisible"):
        bin_patterns(patterns, 5)


def test_simulate_patterns_of_an_empty_cell_is_the_probe_disc():
    from sim_microscope import simulate_patterns

    k = 32
    patterns = simulate_patterns(
        vacuum(), np.array([[1.0, 3.0]]), **BEAM, detector_pixels=k, detector_pixel_mrad=2.0, oversample=2
    )
    probe = make_probe(k, real_space_pixel_angstrom(60e3, k, 2.0), 60e3, BEAM["convergence_mrad"])
    disc = torch.fft.fftshift(torch.fft.fft2(probe, norm="ortho")).abs().numpy() ** 2
    np.testing.assert_allclose(patterns[0], disc, atol=2e-6)
