"""Incoherent probe modes (ReconOptions.coherence, recon.probe_modes): off is unchanged, the model and gradient with modes, the gain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from recon_testing import blob_phase

from recon.coherence import PartialCoherence
from recon.engine import Reconstructor, ScanChunk
from recon.forward import forward_intensity, fourier_shift
from recon.grid import ObjectGrid
from recon.options import ReconOptions
from recon.probe import make_probe
from recon.probe_modes import coherent_modes

K = 16
PIXEL_NM = 0.05
ENERGY_EV = 60e3
GOLDEN = Path(__file__).parent / "fixtures" / "recon_coherent_golden.npz"
GOLDEN_OPTIONS = {
    "default": {},
    "binned_intensity": dict(detector_binning=2, loss="intensity", optimizer="gd", step_size=300.0, subpixel_steps=8),
    "adam_preconditioned": dict(optimizer="adam", precondition="relative", batch_positions=7, tv_weight=1e-3),
}
"""Options of the golden reconstructions (tests/fixtures/recon_coherent_golden.npz, written by ``golden_results`` before probe modes)."""


def probe(defocus_nm: float = 4.0, dtype=torch.complex64) -> torch.Tensor:
    return make_probe(K, PIXEL_NM * 10, ENERGY_EV, 30.0, defocus_angstrom=10 * defocus_nm, dtype=dtype)


def scan(side: int = 5, seed: int = 0, coherence: PartialCoherence | None = None, step_nm: float = 0.06) -> tuple[ScanChunk, torch.Tensor]:
    """A side x side raster over a blob phase; patterns from the coherent probe, or the incoherent sum over ``coherence``'s modes."""
    xs = np.arange(side) * step_nm + 0.013
    positions = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    grid = ObjectGrid.covering((positions[:, 0].min(), positions[:, 1].min(), np.ptp(positions[:, 0]), np.ptp(positions[:, 1])), PIXEL_NM, K)
    truth = blob_phase(grid.shape, np.random.default_rng(seed))
    px = torch.tensor(grid.positions_px(positions), dtype=torch.float64)
    transmission = torch.polar(torch.ones_like(truth), truth)
    p = probe(dtype=torch.complex128)
    modes = p[None] if coherence is None else coherent_modes(p, coherence, PIXEL_NM, ENERGY_EV)
    patterns = sum(forward_intensity(transmission, mode, px) for mode in modes)
    return ScanChunk(patterns.float().numpy(), positions, grid), truth


def golden_results() -> dict[str, np.ndarray]:
    """The coherent reconstructions the golden file holds (run on the code before probe modes to write it)."""
    chunk, _ = scan()
    out = {}
    for name, extra in GOLDEN_OPTIONS.items():
        options = ReconOptions(**{"iterations": 3, **extra})
        out[name] = Reconstructor(probe(), options, "cpu").reconstruct([chunk])[0].potential.numpy()
    return out


GOLDEN_TOLERANCE = {"default": 2e-3, "binned_intensity": 1e-5, "adam_preconditioned": 0.15}
"""Largest difference from the golden array accepted, as a fraction of its largest value. The golden file was written on
another CPU; float rounding differs between CPUs and three iterations amplify it, most under Adam's normalisation (measured
on a 2-core Xeon VM, 2026-12-01: 5.5e-4, 1.4e-7, 0.082). Bit identity holds on one machine and is checked in-process."""


def test_without_modes_the_results_are_bit_identical_to_before():
    """Coherent (no option, or zero spreads) gives the arrays the engine gave before probe modes existed: bit-identical to each
    other on this machine, and to the golden file (written before probe modes, on another CPU) within float rounding."""
    golden = np.load(GOLDEN)
    chunk, _ = scan()
    for name, extra in GOLDEN_OPTIONS.items():
        results = [
            Reconstructor(probe(), ReconOptions(**{"iterations": 3, **extra, "coherence": coherence}), "cpu").reconstruct([chunk])[0].potential.numpy()
            for coherence in (None, PartialCoherence())
        ]
        np.testing.assert_array_equal(results[0], results[1], err_msg=name)
        scale = np.abs(golden[name]).max()
        assert np.abs(results[0] - golden[name]).max() <= GOLDEN_TOLERANCE[name] * scale, name


def test_modes_are_the_weighted_defocused_and_shifted_probes():
    p = probe(dtype=torch.complex128)
    spread = PartialCoherence(focal_spread_nm=3.0, source_size_nm=0.02)
    modes = coherent_modes(p, spread, PIXEL_NM, ENERGY_EV)
    assert modes.shape == (27, K, K) and modes.dtype == torch.complex128
    assert float(modes.abs().square().sum()) == pytest.approx(1.0, abs=1e-9)  # unitary: total power kept
    for mode, (dz, dx, dy, w) in zip(modes, spread.nodes(), strict=True):
        expected = probe(defocus_nm=4.0 + dz, dtype=torch.complex128)  # make_probe's own defocus
        if dx or dy:
            expected = fourier_shift(expected, torch.tensor([dx / PIXEL_NM, dy / PIXEL_NM], dtype=torch.float64))
        torch.testing.assert_close(mode, np.sqrt(w) * expected, atol=1e-9, rtol=0)
    assert torch.equal(coherent_modes(p, PartialCoherence(), PIXEL_NM, ENERGY_EV), p[None])


def test_engine_model_with_modes_is_the_weighted_sum_of_coherent_models():
    """A zero-step pass returns the model's loss: with modes it is the loss of the incoherent sum of single-probe forward models."""
    spread = PartialCoherence(focal_spread_nm=3.0, source_size_nm=0.02)
    chunk, truth = scan(side=3)
    px = torch.tensor(chunk.grid.positions_px(chunk.positions_nm), dtype=torch.float64)
    transmission = torch.polar(torch.ones_like(truth), truth)
    p = probe(dtype=torch.complex128)
    # each node's coherent probe (its defocus; its source offset as a shift inside the window, as the modes have it) at the positions
    by_hand = sum(w * forward_intensity(transmission, fourier_shift(probe(4.0 + dz, torch.complex128), torch.tensor([dx, dy], dtype=torch.float64) / PIXEL_NM), px)
                  for dz, dx, dy, w in spread.nodes())
    target = by_hand * 1.3 + 1e-3  # a data set the model does not fit: the loss compares the two models
    options = ReconOptions(iterations=1, optimizer="gd", step_size=1e-30, batch_positions=None, normalize_patterns=False, dtype="float64",
                           loss="intensity", coherence=spread)
    rec = Reconstructor(p, options, "cpu", energy_ev=ENERGY_EV, pixel_nm=PIXEL_NM)
    loss = rec.reconstruct([ScanChunk(target.numpy(), chunk.positions_nm, chunk.grid)], init=[truth])[0].loss_history[0]
    assert loss == pytest.approx(float((by_hand - target).square().sum(dim=(-2, -1)).mean()), rel=1e-9)
    orthogonal = Reconstructor(p, options.model_copy(update={"coherence_mode_power": 1.0}), "cpu", energy_ev=ENERGY_EV, pixel_nm=PIXEL_NM)
    assert orthogonal.modes.shape[0] >= 20  # the same mixed state (27 nodes, some weights tiny), as its eigenmodes
    same = orthogonal.reconstruct([ScanChunk(target.numpy(), chunk.positions_nm, chunk.grid)], init=[truth])[0].loss_history[0]
    assert same == pytest.approx(loss, rel=1e-9), "any decomposition of the mixed state gives the same patterns"
    fewer = Reconstructor(p, options.model_copy(update={"coherence_mode_power": 0.95}), "cpu", energy_ev=ENERGY_EV, pixel_nm=PIXEL_NM)
    assert len(fewer.modes) < 10 and float(fewer.modes.abs().square().sum()) == pytest.approx(1.0)
    coherent = Reconstructor(p, options.model_copy(update={"coherence": None}), "cpu")
    other = coherent.reconstruct([ScanChunk(target.numpy(), chunk.positions_nm, chunk.grid)], init=[truth])[0].loss_history[0]
    assert abs(other - loss) > 1e-3 * loss, "the modes change the model"


@pytest.mark.parametrize("binning", [1, 2])
@pytest.mark.parametrize("loss", ["amplitude", "intensity"])
def test_gradient_with_modes_equals_autograd_of_the_mode_summed_loss(binning, loss):
    """One full-batch GD step with modes moves V by -step * dL/dV, dL/dV from autograd of the loss of the incoherent sum."""
    from recon.forward import bin_patterns, exit_waves, far_field_intensity

    spread = PartialCoherence(focal_spread_nm=3.0, source_size_nm=0.02, nodes_per_axis=2)
    chunk, truth = scan(side=4, seed=8, coherence=spread)
    k = K // binning
    patterns = bin_patterns(torch.as_tensor(chunk.patterns, dtype=torch.float64), binning)
    p = make_probe(k, PIXEL_NM * 10, ENERGY_EV, 30.0, defocus_angstrom=40.0, dtype=torch.complex128)
    grid = ObjectGrid.covering((0.013, 0.013, 0.18, 0.18), PIXEL_NM, k)
    start = torch.zeros(grid.shape, dtype=torch.float64)
    start[2:-2, 2:-2] = 0.5 * truth[: grid.shape[0] - 4, : grid.shape[1] - 4]
    options = ReconOptions(detector_binning=binning, loss=loss, iterations=1, optimizer="gd", step_size=1.0, batch_positions=None,
                           normalize_patterns=False, dtype="float64", coherence=spread)
    rec = Reconstructor(p, options, "cpu", energy_ev=ENERGY_EV, pixel_nm=PIXEL_NM)
    assert rec.model_probe.shape == (8, K, K)  # 2 focal x 2 x 2 source nodes, on the K * b window
    pad = rec.pad
    v = start.clone().requires_grad_(True)
    padded = torch.nn.functional.pad(v, (pad, pad, pad, pad))
    px = torch.as_tensor(grid.positions_px(chunk.positions_nm), dtype=torch.float64) + pad
    transmission = torch.polar(torch.ones_like(padded), padded)
    model = sum(bin_patterns(far_field_intensity(exit_waves(transmission, mode, px)), binning) for mode in rec.model_probe)
    residual = model.sqrt() - patterns.sqrt() if loss == "amplitude" else model - patterns
    residual.square().sum(dim=(-2, -1)).mean().backward()
    step = 0.05 / float(v.grad.abs().max())
    options = options.model_copy(update={"step_size": step})
    moved = Reconstructor(p, options, "cpu", energy_ev=ENERGY_EV, pixel_nm=PIXEL_NM).reconstruct(
        [ScanChunk(patterns.numpy(), chunk.positions_nm, grid)], init=[start])[0].potential.double()
    move, expected = moved - start, -step * v.grad
    assert float((move - expected).norm() / expected.norm()) < 1e-4


def test_the_right_modes_fit_partially_coherent_data_better_than_a_coherent_probe():
    spread = PartialCoherence(focal_spread_nm=4.0)
    chunk, _ = scan(side=6, seed=3, coherence=spread, step_nm=0.04)
    options = ReconOptions(iterations=40, optimizer="adam", step_size=0.02, batch_positions=None)
    coherent = Reconstructor(probe(), options, "cpu").reconstruct([chunk])[0].loss_history[-1]
    mixed = Reconstructor(probe(), options.model_copy(update={"coherence": spread}), "cpu", energy_ev=ENERGY_EV,
                          pixel_nm=PIXEL_NM).reconstruct([chunk])[0].loss_history[-1]
    assert mixed < 0.5 * coherent, (mixed, coherent)


def test_modes_need_the_beam_and_its_pixel_and_no_position_correction():
    spread = PartialCoherence(source_size_nm=0.02)
    with pytest.raises(ValueError, match="needs the beam"):
        Reconstructor(probe(), ReconOptions(coherence=spread), "cpu")
    rec = Reconstructor(probe(), ReconOptions(coherence=spread), "cpu", energy_ev=ENERGY_EV, pixel_nm=2 * PIXEL_NM)
    with pytest.raises(ValueError, match="modes are made for"):
        rec.reconstruct([scan(side=2)[0]])
    with pytest.raises(ValueError, match="position_correction"):
        ReconOptions(coherence=spread, position_correction={})


def test_reconstruct_cli_coherence_flags_reach_the_options_on_top_of_the_config(tmp_path, tiny_dataset_file, capsys):
    import json
    import re

    import h5py

    from ptychoscan.cli import main

    config = tmp_path / "opts.yaml"
    config.write_text("iterations: 2\ncoherence:\n  focal_spread_nm: 2.0\n  nodes_per_axis: 2\n")
    out = tmp_path / "r.h5"
    assert main(["reconstruct", str(tiny_dataset_file), "--out", str(out), "--config", str(config), "--source-size-nm", "0.02"]) == 0
    assert "partial coherence: 8 incoherent probe modes" in capsys.readouterr().out  # 2 focal x 2 x 2 source nodes
    with h5py.File(out) as f:
        used = json.loads(f.attrs["options"])["coherence"]
    assert used == {"focal_spread_nm": 2.0, "source_size_nm": 0.02, "nodes_per_axis": 2}, used
    assert main(["reconstruct", str(tiny_dataset_file), "--out", str(out), "--config", str(config), "--source-size-nm", "0.02",
                 "--coherence-mode-power", "0.9"]) == 0
    modes = re.search(r"partial coherence: (\d+) incoherent probe modes", capsys.readouterr().out)
    assert modes and int(modes.group(1)) < 8, "fewer orthogonal modes"
    with h5py.File(out) as f:
        assert json.loads(f.attrs["options"])["coherence_mode_power"] == 0.9
    assert main(["reconstruct", str(tiny_dataset_file), "--out", str(out), "--iterations", "2", "--focal-spread-nm", "-1"]) != 0
    assert "focal_spread_nm" in capsys.readouterr().err


def test_estimate_focal_spread_picks_the_spread_the_data_were_made_with():
    from recon.probe_fit import estimate_focal_spread

    chunk, _ = scan(side=6, seed=3, coherence=PartialCoherence(focal_spread_nm=4.0), step_nm=0.04)
    options = ReconOptions(iterations=25, optimizer="adam", step_size=0.02, batch_positions=None)
    best, losses = estimate_focal_spread(chunk, probe(), energy_ev=ENERGY_EV, candidates_nm=[0.0, 2.0, 4.0, 8.0], options=options)
    assert best == 4.0, losses
    with pytest.raises(ValueError, match="candidate"):
        estimate_focal_spread(chunk, probe(), energy_ev=ENERGY_EV, candidates_nm=[])


def test_the_services_live_reconstruction_takes_probe_modes_from_its_options():
    # the service validated a coherence option at start-up, then its first chunk failed: its reconstructor was not given the
    # beam's energy and pixel size the modes are made with
    from service.compute import ReconJob, TorchReconBackend
    from service.spec import Beam

    torch.set_num_threads(2)
    beam, fov = Beam(60_000.0, 25.0, 16, 4.0, 0.0), (0.0, 0.0, 0.2, 0.2)
    xs = np.linspace(0.0, 0.2, 4)
    positions = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    patterns = np.ones((len(positions), 16, 16), np.float32)

    def potential(options):
        job = ReconJob(beam, fov, patterns, positions, None, final=True)
        return TorchReconBackend(update=2, options={"detector_binning": 1, **options}).reconstruct([job])[0].potential

    coherent = potential({})
    modes = potential({"coherence": {"focal_spread_nm": 3.0}})
    assert modes.shape == coherent.shape and np.isfinite(modes).all()
    assert not np.array_equal(modes, coherent)
