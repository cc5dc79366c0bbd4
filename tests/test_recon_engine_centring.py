"""The reconstructor's binned model is centred like the data (docs/DESIGN.md: zero frequency at (K//2, K//2))."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.binned_model import bin_blocks
from recon.engine import Reconstructor
from recon.options import ReconOptions
from recon.physics import real_space_pixel_angstrom
from recon.probe import make_probe


def _model_vacuum_pattern(k: int, binning: int) -> np.ndarray:
    probe = make_probe(k, real_space_pixel_angstrom(60e3, k, 3.36), 60e3, 33.0)
    recon = Reconstructor(probe, ReconOptions(detector_binning=binning), device="cpu")
    far = torch.fft.fft2(recon.model_probe, norm="ortho")
    pattern = bin_blocks((far * far.conj()).real[None], binning)[0]
    return torch.fft.fftshift(pattern).numpy()  # the engine compares with ifftshifted (centred) targets


@pytest.mark.parametrize("binning", [1, 2])
def test_model_pattern_centroid_is_k_half(binning):
    k = 32
    pattern = _model_vacuum_pattern(k, binning)
    yy, xx = np.indices(pattern.shape)
    centroid = ((pattern * xx).sum() / pattern.sum(), (pattern * yy).sum() / pattern.sum())
    np.testing.assert_allclose(centroid, (k // 2, k // 2), atol=1e-3)  # untilted binned model: K//2 - 0.25


def test_model_pattern_is_centred_like_the_simulators():
    from ase import Atoms

    from sim_microscope import simulate_scan

    k = 32
    vacuum = Atoms("Mo", positions=[(150.0, 150.0, 0.0)], cell=[300.0, 300.0, 10.0])  # far from the probe
    sim = simulate_scan(vacuum, np.array([[3.0, 3.0]]), energy_ev=60e3, convergence_mrad=33.0, detector_pixels=k,
                        detector_pixel_mrad=3.36, binning=2, oversample=1, device="cpu").patterns[0]
    model = _model_vacuum_pattern(k, 2)
    yy, xx = np.indices(model.shape)

    def centroid(p):
        return np.array(((p * xx).sum(), (p * yy).sum())) / p.sum()

    np.testing.assert_allclose(centroid(model), centroid(sim), atol=1e-3)
    mirrored = np.roll(model[::-1, ::-1], 1, axis=(0, 1))  # point reflection about pixel (K//2, K//2)
    np.testing.assert_allclose(model / model.sum(), mirrored / model.sum(), atol=1e-5)
