"""`ptychoscan train` and `ptychoscan evaluate` end to end on tiny data, and their bad-input errors."""

import json

import pytest

from ptychoscan.cli import main
from tests.policy_helpers import write_tiny_config, write_tiny_datasets


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    files = write_tiny_datasets(root / "data", 2)
    config = write_tiny_config(root / "tiny.yaml", files, root / "run", autoencoder=2, pretrain=2, rl=2)
    return root, files, config


def test_train_all_stages_then_evaluate(setup):
    root, files, config = setup
    for stage in ("autoencoder", "pretrain", "rl"):
        assert main(["train", stage, "--config", str(config)]) == 0
    assert main(["train", "rl", "--config", str(config), "--credit", "total", "--out-dir", str(root / "run_total"),
                 "--iterations", "1"]) == 2  # no pretrain.pt in that folder: one-line error
    for png in ("autoencoder_curve.png", "pretrain_curve.png", "rl_curve.png", "policy.pt"):
        assert (root / "run" / png).exists()
    out = root / "eval.json"
    rc = main(["evaluate", "--datasets", *files, "--policy", str(root / "run" / "policy.pt"), "--budget", "10", "--chunk", "4",
               "--seeds", "1", "--final-iterations", "2", "--json", str(out), "--threads", "1"])
    assert rc == 0
    data = json.loads(out.read_text())
    strategies = {r["strategy"] for r in data["results"]}
    assert {"adaptive", "structure-guided", "sparse-grid", "random", "low-discrepancy", "full-raster-low-dose"} <= strategies
    for r in data["results"]:
        assert r["n_positions"] == 10 or r["strategy"] == "full-raster-low-dose"
        assert -1 <= r["ssim"] <= 1


@pytest.mark.parametrize("extra,message", [
    (["--budget", "1000"], "exceeds"),
    (["--budget", "10", "--strategies", "zigzag"], "unknown strategy"),
    (["--budget", "10", "--density", "-1"], "density_per_nm2"),
])
def test_evaluate_bad_input(setup, capsys, extra, message):
    root, files, _ = setup
    rc = main(["evaluate", "--datasets", *files, "--strategies", "sparse-grid", "--json", str(root / "x.json"), *extra]
              if "--strategies" not in extra else ["evaluate", "--datasets", *files, "--json", str(root / "x.json"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_train_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl: {sigma: -1}\n")
    assert main(["train", "rl", "--config", str(bad)]) == 2
    assert "sigma" in capsys.readouterr().err
