"""The simulate command and simulate_patterns' bad-input errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ptychoscan.cli import main
from recon.dataset import read_dataset
from service.store import session_files
from sim_microscope import simulate_patterns, tmd_monolayer

BEAM = dict(energy_ev=60e3, convergence_mrad=33.0, detector_pixels=32, detector_pixel_mrad=3.0)


def test_simulate_cli_writes_valid_datasets(tmp_path, capsys):
    code = main(
        [
            "simulate",
            "--specimen",
            "mos2",
            "--n-datasets",
            "2",
            "--out",
            str(tmp_path),
            "--seed",
            "4",
            "--scan-shape",
            "4",
            "5",
            "--step-nm",
            "0.1",
            "--detector-pixels",
            "32",
            "--detector-pixel-mrad",
            "3.0",
            "--binning",
            "1",
            "--oversample",
            "2",
            "--dose-per-a2",
            "1e5",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    files = sorted(tmp_path.glob("*.h5"))
    assert [f.name for f in files] == ["mos2_0004.h5", "mos2_0005.h5"]
    ds = read_dataset(files[0])
    assert ds.patterns.shape == (20, 32, 32) and ds.patterns.dtype == np.uint32
    assert ds.grid_shape == (4, 5)
    # 1e5 e/A^2 * (1 A)^2 step -> ~1e5 electrons per pattern
    assert ds.patterns.reshape(20, -1).sum(1).mean() == pytest.approx(1e5, rel=0.01)
    steps = np.diff(ds.positions_nm[:5, 0])
    np.testing.assert_allclose(steps, 0.1)
    other = read_dataset(files[1])
    assert not np.array_equal(ds.ground_truth.phase, other.ground_truth.phase)


def test_simulate_cli_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("step_nm: -1\n")
    assert main(["simulate", "--out", str(tmp_path), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "step_nm" in err and "\n" not in err


def test_positions_outside_specimen_are_refused():
    atoms = tmd_monolayer("MoS2", (2.0, 2.0), seed=0)
    with pytest.raises(ValueError, match=r"outside the specimen .* first: row 1"):
        simulate_patterns(atoms, np.array([[1.0, 1.0], [2.5, 1.0]]), **BEAM)


def test_nan_positions_are_refused():
    atoms = tmd_monolayer("MoS2", (2.0, 2.0), seed=0)
    with pytest.raises(ValueError, match="NaN"):
        simulate_patterns(atoms, np.array([[1.0, np.nan]]), **BEAM)


def test_dose_and_dose_per_area_conflict():
    atoms = tmd_monolayer("MoS2", (2.0, 2.0), seed=0)
    with pytest.raises(ValueError, match="not both"):
        simulate_patterns(atoms, np.array([[1.0, 1.0]]), dose=10.0, dose_per_a2=5.0, **BEAM)


def test_patterns_sum_to_one_and_counts_are_seeded():
    atoms = tmd_monolayer("MoS2", (2.0, 2.0), seed=0)
    positions = np.array([[1.0, 1.0], [1.03, 1.01]])
    patterns = simulate_patterns(atoms, positions, **BEAM, oversample=2)
    assert patterns.shape == (2, 32, 32) and patterns.dtype == np.float32
    np.testing.assert_allclose(patterns.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert not np.allclose(patterns[0], patterns[1])  # a sub-pixel move changes the pattern
    a = simulate_patterns(atoms, positions, **BEAM, oversample=2, dose=1e4, seed=9)
    b = simulate_patterns(atoms, positions, **BEAM, oversample=2, dose=1e4, seed=9)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint32


def test_closed_loop_demo_runs(tmp_path, capsys):
    """The README's main command on a tiny specimen: service, sim detector and control loop on loopback."""
    code = main([
        "demo", "--out", str(tmp_path), "--scan-shape", "6", "6", "--step-nm", "0.1", "--density", "144", "--chunk", "12",
        "--strategies", "adaptive", "sparse-grid",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "scores adaptive=ssim:" in out and "sparse-grid=ssim:" in out and "per nm^2" in out
    assert "live view: http://127.0.0.1:" in out and "/live#key=" in out  # the operator's page, with the demo's key
    assert (tmp_path / "closed_loop.png").stat().st_size > 10_000
    sessions = session_files(tmp_path / "sessions")
    assert len(sessions) == 2  # the converged reconstructions beside them are not session files
    specimen = read_dataset(next(tmp_path.glob("specimen_*.h5")), load_patterns=False)
    lo, hi = specimen.positions_nm.min(axis=0), specimen.positions_nm.max(axis=0)
    for path in sessions:
        with h5py.File(path, "r") as f:
            assert f.attrs["state"] == "done"
            assert f["received"][()].all(), "every frame the detector sent is in the session file"
            patterns = f["patterns"][()]
            assert patterns.shape == (36, 64, 64) and patterns.reshape(36, -1).sum(1).min() > 0
            positions = f["positions_nm"][()]
            assert (positions >= lo - 1e-9).all() and (positions <= hi + 1e-9).all(), "positions stay in the field of view"
            assert len(f["reconstructions"]) == 3


def test_the_demo_holds_its_service_up_for_the_live_view_on_request(tmp_path):
    """``demo --hold``: after the scans the service stays up and its live view answers at the URL the demo printed."""
    import subprocess
    import sys

    import httpx

    from tests.subprocess_env import repo_env

    cmd = [sys.executable, "-m", "ptychoscan.cli", "demo", "--out", str(tmp_path), "--scan-shape", "6", "6", "--step-nm", "0.1",
           "--density", "144", "--chunk", "12", "--strategies", "sparse-grid", "--hold", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=repo_env())
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("scans done;"):
                url = line.rsplit(": ", 1)[1].strip()
                break
        assert url is not None, "the demo never said it holds the service"
        page, key = url.split("#key=")
        assert httpx.get(page, timeout=10).status_code == 200
        sessions = httpx.get(page.replace("/live", "/api/v1/sessions"), headers={"Authorization": f"Apikey {key}"}, timeout=10)
        assert sessions.status_code == 200 and "done" in sessions.text
        proc.terminate()  # SIGTERM during the hold: the demo stops the service and detector it started (they were orphaned)
        assert proc.wait(timeout=60) != 0
        with pytest.raises(httpx.TransportError):
            httpx.get(page, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_demo_service_starts_with_a_key_that_begins_with_a_dash(tmp_path):
    """Regression: the demo passed its random key as ``--api-key KEY``; a URL-safe key starting with '-' (1 in 32) was
    read as an option and ``serve`` exited with 'expected one argument'."""
    from ptychoscan.cli import build_parser
    from ptychoscan.closed_loop import service_args

    args = build_parser().parse_args(service_args(8000, tmp_path, "-Abc_def", "tcp://127.0.0.1:5555"))
    assert args.api_keys == ["-Abc_def"]
