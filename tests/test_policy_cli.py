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


def _rl_from_pretrained(setup, tmp_path) -> dict:
    """The setup's config (a dict) writing to tmp_path/run, which holds a copy of the shared pre-trained checkpoint
    (trained once, by the first test that needs it)."""
    import shutil

    import yaml

    root, _files, config = setup
    if not (root / "run" / "pretrain.pt").exists():
        for stage in ("autoencoder", "pretrain"):
            assert main(["train", stage, "--config", str(config)]) == 0
    cfg = yaml.safe_load(config.read_text())
    cfg["out_dir"] = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    shutil.copy(root / "run" / "pretrain.pt", tmp_path / "run" / "pretrain.pt")
    return cfg


def test_rl_with_leave_one_out_annealed_sigma_clipping_and_the_quality_reward(setup, tmp_path):
    """The variance-reduction options and the quality reward train end to end, from the same pre-trained checkpoint."""
    import yaml

    cfg = _rl_from_pretrained(setup, tmp_path)
    cfg["data"]["measurement"] = "simulate"
    cfg["rl"].update({"rollouts_per_specimen": 2, "normalize_advantages": True, "sigma_start": 0.1, "sigma_anneal_iterations": 2,
                      "max_grad_norm": 1.0, "reward": "quality", "gamma": 1.0})
    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "rl", "--config", str(path)]) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rl = [m for m in lines if m.get("stage") == "rl"]
    assert [round(m["sigma"], 4) for m in rl] == [0.1, round(0.1 * (0.0125 / 0.1) ** 0.5, 4)]
    assert all(0.0 <= m["final_total_reward"] <= 1.0 for m in rl)  # the quality reward logs the final r^2
    cfg["rl"]["batch"] = 3
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "rl", "--config", str(path), "--iterations", "3"]) == 2  # 3 episodes do not split into pairs


def test_rl_learns_sigma_with_the_entropy_bonus_and_resumes_it(setup, tmp_path):
    """A learned sigma is trained (here widened by a strong entropy bonus), saved in rl.pt and picked up on resume."""
    import torch
    import yaml

    cfg = _rl_from_pretrained(setup, tmp_path)
    cfg["rl"].update({"learn_sigma": True, "sigma": 0.05, "sigma_lr": 0.1, "entropy_coef": 10.0, "normalize_advantages": True})
    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "rl", "--config", str(path)]) == 0
    assert main(["train", "rl", "--config", str(path), "--iterations", "3"]) == 0
    rl = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    sigmas = [m["sigma"] for m in rl if m.get("stage") == "rl"]
    assert all(m["cpu_s"] > 0 and m["time_s"] > 0 for m in rl if m.get("stage") == "rl")  # CPU time logged beside wall
    assert sigmas[0] == pytest.approx(0.05) and sigmas[0] < sigmas[1] < sigmas[2]  # resumed, not restarted at 0.05
    saved = torch.load(tmp_path / "run" / "rl.pt", weights_only=False)
    assert float(saved["exploration"]["log_sigma"].exp().mean()) > sigmas[2]
