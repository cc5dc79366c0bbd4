"""``ptychoscan reconstruct`` end to end on a tiny simulated dataset."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from ptychoscan.cli import main


def test_reconstruct_cli_writes_output_and_prints_ssim_last(tmp_path, tiny_dataset_file, capsys):
    out = tmp_path / "recon.h5"
    png = tmp_path / "recon.png"
    code = main(["reconstruct", str(tiny_dataset_file), "--out", str(out), "--iterations", "3", "--detector-binning", "1", "--png", str(png)])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("ssim=")
    score = float(lines[-1].split("=")[1])
    assert -1.0 <= score <= 1.0
    assert png.stat().st_size > 1000
    with h5py.File(out) as f:
        phase = f["phase"]
        assert phase.dtype == np.float32 and phase.ndim == 2
        assert phase.attrs["pixel_nm"] > 0 and len(phase.attrs["origin_nm"]) == 2
        assert f["positions_nm"].shape == (36, 2)
        loss = f["loss_history"][()]
        assert len(loss) == 3 and loss[-1] < loss[0]
        assert f.attrs["ssim"] == pytest.approx(score, abs=1e-4)


def test_reconstruct_cli_subsets(tmp_path, tiny_dataset_file, capsys):
    out = tmp_path / "r.h5"
    assert main(["reconstruct", str(tiny_dataset_file), "--out", str(out), "--iterations", "1", "--detector-binning", "1", "--positions-subset", "sparse-grid:9"]) == 0
    with h5py.File(out) as f:
        assert f["positions_nm"].shape == (9, 2)
    indices = tmp_path / "idx.npy"
    np.save(indices, np.array([0, 5, 7, 20]))
    assert main(["reconstruct", str(tiny_dataset_file), "--out", str(out), "--iterations", "1", "--detector-binning", "1", "--positions-subset", str(indices)]) == 0
    with h5py.File(out) as f:
        assert f["positions_nm"].shape == (4, 2)


@pytest.mark.parametrize(
    ("subset", "message"),
    [("random:0", "empty subset"), ("random:999", "asks for 999"), ("grid:3", "use sparse-grid"), ("sparse-grid:x", "integer N")],
)
def test_reconstruct_cli_bad_subset(tmp_path, tiny_dataset_file, capsys, subset, message):
    code = main(["reconstruct", str(tiny_dataset_file), "--out", str(tmp_path / "r.h5"), "--positions-subset", subset])
    assert code == 2
    assert message in capsys.readouterr().err


def test_batch_positions_flag_is_validated_with_the_config(tmp_path, tiny_dataset_file, capsys):
    """--batch-positions used to be applied after validation: 16 slipped an absolute preconditioner into mini-batches
    (which diverge), and 0 (full batch) could not rescue a config that needs it."""
    config = tmp_path / "abs.yaml"
    config.write_text("precondition: absolute\nstep_size: 0.25\nmomentum: 0.9\n")
    out = str(tmp_path / "r.h5")
    base = ["reconstruct", str(tiny_dataset_file), "--out", out, "--iterations", "1", "--detector-binning", "1", "--config", str(config)]
    assert main([*base, "--batch-positions", "16"]) == 2
    assert "full batches" in capsys.readouterr().err
    assert main([*base, "--batch-positions", "0"]) == 0


def test_reconstruct_converged_is_the_evaluations_recipe_with_flags_on_top(tmp_path, tiny_dataset_file, capsys):
    """The README's walk-through ended on the service's 5-pass live image, which shows the scan pattern, not the lattice;
    ``--converged`` gives the session file the evaluation's final reconstruction."""
    import json

    out = tmp_path / "recon.h5"
    assert main(["reconstruct", str(tiny_dataset_file), "--out", str(out), "--converged", "--iterations", "4"]) == 0
    with h5py.File(out) as f:
        options = json.loads(f.attrs["options"])
        assert len(f["loss_history"][()]) == 4
    assert (options["optimizer"], options["momentum"], options["precondition"], options["batch_positions"]) == ("gd", 0.9, "absolute", None)
    assert main(["reconstruct", str(tiny_dataset_file), "--out", str(out), "--converged", "--config", str(out)]) == 2
    assert "exclusive" in capsys.readouterr().err


def test_position_correction_flag_keeps_the_configs_position_correction_options(tmp_path, tiny_dataset_file):
    """Regression: --position-correction replaced the config's position_correction options with the defaults, silently."""
    config = tmp_path / "opts.yaml"
    config.write_text("detector_binning: 1\niterations: 2\nposition_correction:\n  start_pass: 0\n  max_shift_nm: 0.0\n")
    out = tmp_path / "r.h5"
    assert main(["reconstruct", str(tiny_dataset_file), "--out", str(out), "--config", str(config), "--position-correction"]) == 0
    with h5py.File(out) as f:
        used = json.loads(f.attrs["options"])["position_correction"]
    assert used["max_shift_nm"] == 0.0 and used["start_pass"] == 0, used
    plain = tmp_path / "plain.yaml"
    plain.write_text("detector_binning: 1\niterations: 2\n")
    assert main(["reconstruct", str(tiny_dataset_file), "--out", str(out), "--config", str(plain), "--position-correction"]) == 0
    with h5py.File(out) as f:
        assert json.loads(f.attrs["options"])["position_correction"]["max_shift_nm"] > 0, "the flag alone: the defaults"
