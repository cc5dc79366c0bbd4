"""Position correction (recon.position_correction): the position gradient, off is unchanged, bounds, bad options (tiny, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from recon_testing import blob_phase

from recon.engine import Reconstructor, ScanChunk
from recon.forward import forward_intensity
from recon.grid import ObjectGrid
from recon.options import PositionCorrectionOptions, ReconOptions
from recon.probe import make_probe

K = 16
PIXEL_NM = 0.05


def _case(jitter_nm: float = 0.01):
    rng = np.random.default_rng(0)
    xs = np.arange(8) * 0.05 + 0.013
    nominal = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    grid = ObjectGrid.covering((nominal[:, 0].min() - 0.05, nominal[:, 1].min() - 0.05, 0.45, 0.45), PIXEL_NM, K)
    truth = blob_phase(grid.shape, rng)
    true = nominal + rng.normal(0, jitter_nm, nominal.shape)
    probe = make_probe(K, PIXEL_NM * 10, 60e3, 60.0)
    patterns = forward_intensity(torch.polar(torch.ones_like(truth), truth), probe.to(torch.complex128), torch.tensor(grid.positions_px(true)))
    return probe, grid, truth, nominal, true, patterns.numpy()


def _options(correction: PositionCorrectionOptions | None, **kw) -> ReconOptions:
    base = dict(optimizer="gd", step_size=0.25, momentum=0.9, precondition="absolute", batch_positions=None, iterations=12)
    return ReconOptions(**{**base, **kw}, position_correction=correction)


def test_position_gradient_matches_finite_differences():
    probe, grid, truth, nominal, _, patterns = _case()
    nominal = nominal + 0.011  # off pixel boundaries, where the window (and the tiny probe's wrap-around) jumps
    rec = Reconstructor(probe, _options(PositionCorrectionOptions(), dtype="float64"), "cpu")
    batch = rec._prepare([ScanChunk(patterns, nominal, grid)])
    n = len(nominal)
    found = torch.zeros((n, 2), dtype=torch.float64)
    rec._accumulate_gradient(truth[None].clone(), torch.zeros((1, *truth.shape), dtype=torch.float64), batch, torch.arange(n),
                             torch.full((n,), 1.0 / n, dtype=torch.float64), found)
    target = torch.as_tensor(patterns) / (patterns.sum() / n)

    def loss(i, p_nm):
        intensity = forward_intensity(torch.polar(torch.ones_like(truth), truth), rec.probe, torch.tensor(grid.positions_px(p_nm[None])))
        return float(((intensity.sqrt() - target[i].sqrt()) ** 2).sum())

    h = 1e-4
    for i in (0, 9, 30):
        numeric = [(loss(i, nominal[i] + h * e) - loss(i, nominal[i] - h * e)) / (2 * h) * PIXEL_NM for e in np.eye(2)]
        np.testing.assert_allclose(found[i].numpy(), numeric, rtol=2e-3, atol=1e-7)


def test_correction_that_cannot_move_leaves_the_object_bit_for_bit():
    probe, grid, _, nominal, _, patterns = _case()
    chunk = ScanChunk(patterns, nominal, grid)
    off = Reconstructor(probe, _options(None), "cpu").reconstruct([chunk])[0]
    still = Reconstructor(probe, _options(PositionCorrectionOptions(start_pass=2, max_shift_nm=0.0)), "cpu").reconstruct([chunk])[0]
    assert off.positions_nm is None and off.scan_matrix is None
    assert torch.equal(off.potential, still.potential)
    np.testing.assert_allclose(still.positions_nm, nominal, rtol=0, atol=1e-12)  # nm -> px -> nm


def test_correction_lowers_the_loss_and_the_bound_holds():
    probe, grid, _, nominal, _, patterns = _case()
    chunk = ScanChunk(patterns, nominal, grid)
    off = Reconstructor(probe, _options(None, iterations=40), "cpu").reconstruct([chunk])[0]
    bound = 0.006
    on = Reconstructor(probe, _options(PositionCorrectionOptions(start_pass=5, max_shift_nm=bound), iterations=40), "cpu").reconstruct([chunk])[0]
    assert on.loss_history[-1] < 0.7 * off.loss_history[-1]
    moved = np.linalg.norm(on.positions_nm - nominal, axis=1)
    assert moved.max() <= bound + 1e-9 and moved.max() > 0.5 * bound
    assert np.abs(on.scan_matrix - np.eye(2)).max() <= PositionCorrectionOptions().max_distortion


def test_bad_options_give_clear_errors():
    with pytest.raises(ValidationError, match="needs loss 'amplitude'"):
        ReconOptions(loss="intensity", position_correction=PositionCorrectionOptions())
    with pytest.raises(ValidationError, match="max_shift_nm"):
        PositionCorrectionOptions(max_shift_nm=-0.1)
    with pytest.raises(ValidationError, match="step"):
        PositionCorrectionOptions(step=5)
    with pytest.raises(ValidationError, match="extra"):
        PositionCorrectionOptions(max_shift=0.1)


@pytest.mark.parametrize("offset_nm", [(-0.6, -0.6), (-0.6, 0.0)], ids=["both-axes", "x-only"])
def test_corrected_start_positions_off_the_grid_are_refused(offset_nm):
    """Regression: corrected start positions were checked for shape only; off the grid in x alone the flat window index
    wrapped into the row above (no error, wrong pixels), in y a torch IndexError."""
    probe, grid, _, nominal, _, patterns = _case()
    options = _options(PositionCorrectionOptions(start_pass=0), iterations=2)
    chunk = ScanChunk(patterns, nominal, grid, corrected_positions_nm=nominal + np.array(offset_nm))
    with pytest.raises(ValueError, match="corrected position"):
        Reconstructor(probe, options, "cpu").reconstruct([chunk])


@pytest.mark.parametrize("penalty", [{"l2_weight": 10.0}, {"tv_weight": 1.0}], ids=["l2", "tv"])
def test_regularisation_acts_with_and_without_position_correction(penalty):
    """Regression: merging position correction left the valid-region mask set only inside its branch, so TV and L2
    penalties did nothing in every other run (the mask was all False)."""
    probe, grid, _, nominal, _, patterns = _case()
    for correction in (None, PositionCorrectionOptions(start_pass=0)):
        kw = {"corrected_positions_nm": nominal} if correction is not None else {}
        chunk = ScanChunk(patterns, nominal, grid, **kw)
        free = Reconstructor(probe, _options(correction, iterations=3), "cpu").reconstruct([chunk])[0].potential
        penalised = Reconstructor(probe, _options(correction, iterations=3, **penalty), "cpu").reconstruct([chunk])[0].potential
        assert not torch.allclose(free, penalised), f"{penalty} had no effect (correction {correction is not None})"
