"""Data-parallel training with torchrun: 2 CPU processes (gloo), replicas stay in sync."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from policy.checkpoint import read_checkpoint
from policy.config import TrainConfig
from policy.training import run_stage
from ptychoscan.config import load_model
from tests.policy_helpers import write_tiny_config, write_tiny_datasets

REPO = Path(__file__).resolve().parents[1]


def _torchrun(stage: str, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "ptychoscan.cli", "train", stage, "--config", str(config)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_ddp_two_processes_keep_parameters_in_sync(tmp_path):
    files = write_tiny_datasets(tmp_path / "data", 2)
    out = tmp_path / "run"
    config = write_tiny_config(tmp_path / "tiny.yaml", files, out)
    run_stage("autoencoder", load_model(TrainConfig, config))  # single process
    before = read_checkpoint(out / "autoencoder.pt")["policy"]
    for stage in ("pretrain", "rl"):
        proc = _torchrun(stage, config)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "terminate called" not in proc.stderr
        sync = json.loads((out / "ddp_sync.json").read_text())
        assert sync["stage"] == stage and sync["world_size"] == 2
        assert len(sync["digests"]) == 2 and sync["digests"][0] == sync["digests"][1]
    after = read_checkpoint(out / "rl.pt")
    assert after["iteration"] == 2
    assert any(not torch.equal(before[k], after["policy"][k]) for k in before)  # it did train
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["stage"] == "rl"] == [0, 1]
