"""Data-parallel training with torchrun: 2 CPU processes (gloo), replicas stay in sync."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from policy.checkpoint import read_checkpoint
from policy.config import TrainConfig
from policy.training import run_stage
from ptychoscan.config import load_model
from tests.policy_helpers import write_tiny_config, write_tiny_datasets
from tests.subprocess_env import repo_env

REPO = Path(__file__).resolve().parents[1]


def _torchrun(stage: str, config: Path) -> subprocess.CompletedProcess:
    env = repo_env(OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "ptychoscan.cli", "train", stage, "--config", str(config)]
    # own process group: on a timeout the workers go too (killing torchrun alone orphans them)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun {stage} timed out after 120 s: {err[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_ddp_two_processes_keep_parameters_in_sync(tmp_path):
    files = write_tiny_datasets(tmp_path / "data", 2)
    out = tmp_path / "run"
    config = write_tiny_config(tmp_path / "tiny.yaml", files, out)
    run_stage("autoencoder", load_model(TrainConfig, config))  # single process
    before = read_checkpoint(out / "autoencoder.pt")["policy"]
    for stage in ("pretrain", "rl"):
        if stage == "rl":  # a learned sigma is no DDP module: its gradient is averaged by hand (it drifted apart without)
            data = yaml.safe_load(config.read_text())
            data["rl"].update({"learn_sigma": True, "sigma": 0.05, "sigma_lr": 0.1, "entropy_coef": 0.1})
            config.write_text(yaml.safe_dump(data))
        proc = _torchrun(stage, config)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "terminate called" not in proc.stderr
        sync = json.loads((out / "ddp_sync.json").read_text())
        assert sync["stage"] == stage and sync["world_size"] == 2
        assert len(sync["digests"]) == 2 and sync["digests"][0] == sync["digests"][1]
    after = read_checkpoint(out / "rl.pt")
    assert after["iteration"] == 2
    assert not torch.allclose(after["exploration"]["log_sigma"].exp(), torch.tensor([0.05, 0.05]))  # sigma was learned
    assert any(not torch.equal(before[k], after["policy"][k]) for k in before)  # it did train
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["stage"] == "rl"] == [0, 1]
