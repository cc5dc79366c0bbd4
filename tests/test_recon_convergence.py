"""The stopping rule: blocks of gradient-descent passes continue one another exactly, and a scan stops once its loss flattens."""

import numpy as np
import torch

from recon.beam import probe_for
from recon.convergence import reconstruct_until_converged
from recon.engine import Reconstructor
from recon.inputs import chunk_from_dataset
from recon.options import ReconOptions
from sim_microscope.datasets import SimulationConfig, simulate_raster_dataset


def _scans():
    cfg = SimulationConfig(scan_shape=(5, 5), step_nm=0.08, detector_pixels=32, detector_pixel_mrad=3.0, binning=1, oversample=2)
    ds = simulate_raster_dataset(cfg, seed=3)
    return ds, [chunk_from_dataset(ds), chunk_from_dataset(ds, np.arange(0, 25, 2))]


def test_blocks_continue_exactly_and_stop_when_flat():
    torch.set_num_threads(1)
    ds, scans = _scans()
    rec = Reconstructor(probe_for(ds), ReconOptions(iterations=6, batch_positions=8, step_size=5.0), device="cpu")
    whole = rec.reconstruct(scans)
    blocks = reconstruct_until_converged(rec, scans, max_passes=6, block=2, tolerance=1e-12)
    for a, b in zip(whole, blocks, strict=True):
        torch.testing.assert_close(a.potential, b.potential, rtol=1e-5, atol=1e-6)
        assert len(b.loss_history) == 6
    early = reconstruct_until_converged(rec, scans, max_passes=20, block=2, tolerance=10.0)
    assert [len(r.loss_history) for r in early] == [4, 4]  # the second block fell by less than 1000 %: stop


def test_without_a_tolerance_one_call_keeps_the_momentum():
    """Momentum restarts with every block; with nothing to check between blocks (tolerance 0) the passes run as one call."""
    torch.set_num_threads(1)
    ds, scans = _scans()
    options = ReconOptions(iterations=6, batch_positions=None, step_size=0.25, momentum=0.9, precondition="absolute")
    rec = Reconstructor(probe_for(ds), options, device="cpu")
    whole = rec.reconstruct(scans)
    fixed = reconstruct_until_converged(rec, scans, max_passes=6, block=2, tolerance=0.0)
    restarted = reconstruct_until_converged(rec, scans, max_passes=6, block=2, tolerance=1e-12)
    for a, b, c in zip(whole, fixed, restarted, strict=True):
        torch.testing.assert_close(a.potential, b.potential, rtol=1e-5, atol=1e-6)
        assert float((a.potential - c.potential).abs().max()) > 1e-4  # restarting the velocity changes the path


def test_a_diverging_scan_is_rerun_with_half_the_step():
    """Only the scan whose loss blew up is redone, from the start, with a halved step; the stable one keeps its result."""
    from recon.convergence import diverged, reconstruct_with_backoff

    torch.set_num_threads(1)
    ds, scans = _scans()
    assert diverged([1.0, 0.5, 2.0]) and diverged([1.0, float("nan")]) and not diverged([1.0, 0.5, 0.6])
    options = ReconOptions(iterations=8, batch_positions=None, step_size=1e4, momentum=0.9, precondition="absolute")
    rec = Reconstructor(probe_for(ds), options, device="cpu")
    first = rec.reconstruct(scans)
    assert all(diverged(r.loss_history) for r in first)  # the test needs a step that blows up
    results, steps = reconstruct_with_backoff(rec, scans, max_passes=8, halvings=20)
    assert all(step < 1e4 for step in steps)
    assert not any(diverged(r.loss_history) for r in results)
    calm = Reconstructor(probe_for(ds), options.model_copy(update={"step_size": steps[0]}), device="cpu").reconstruct(scans[:1])[0]
    torch.testing.assert_close(results[0].potential, calm.potential)


def test_a_scan_that_still_diverges_after_every_halving_is_flagged():
    import pytest

    from recon.convergence import reconstruct_with_backoff

    torch.set_num_threads(1)
    ds, scans = _scans()
    options = ReconOptions(iterations=4, batch_positions=None, step_size=1e6, momentum=0.9, precondition="absolute")
    rec = Reconstructor(probe_for(ds), options, device="cpu")
    with pytest.warns(RuntimeWarning, match="still diverge"):
        reconstruct_with_backoff(rec, scans[:1], max_passes=4, halvings=1)


def test_the_absolute_step_is_a_newton_fraction_whatever_the_number_of_positions():
    """Measuring every position twice doubles the illumination but not the (mean) loss: the step must not halve.

    Before the step was divided by the scan's N, the doubled scan moved half as far per pass (bench/RESULTS.md: a
    2,601-position raster got ~10x less step than a 250-position scan at the same setting).
    """
    torch.set_num_threads(1)
    ds, _ = _scans()
    once = chunk_from_dataset(ds)
    twice = chunk_from_dataset(ds, np.concatenate([np.arange(25), np.arange(25)]))
    options = ReconOptions(iterations=5, batch_positions=None, step_size=0.25, momentum=0.9, precondition="absolute")
    a, b = Reconstructor(probe_for(ds), options, device="cpu").reconstruct([once, twice])
    assert float(a.potential.abs().max()) > 1e-3  # it moved
    torch.testing.assert_close(a.potential, b.potential, rtol=1e-4, atol=1e-5)


def test_the_absolute_preconditioner_refuses_mini_batches():
    """Its step is a Newton fraction of the whole scan's loss: a mini-batch of m positions took N / m times it and diverged."""
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="full batches"):
        ReconOptions(precondition="absolute", batch_positions=32, step_size=0.25)
    ReconOptions(precondition="absolute", batch_positions=None, step_size=0.25)
    ReconOptions(precondition="relative", batch_positions=32)
