"""Policy checkpoints: the autoencoder and GRU weights with the configuration that built them.

A checkpoint is a ``torch.save`` dict ``{"format": "ptychoscan-policy", "version": 1,
"config": TrainConfig dump, "autoencoder": state_dict, "policy": state_dict,
"stage": str, "iteration": int, "policy_version": str}`` (training checkpoints add the
optimizer and RNG states). Writes go to a temporary file renamed into place, so an
interrupted save never leaves a broken checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from policy.config import TrainConfig
from policy.models import ConvAutoencoder, ScanPolicy

FORMAT = "ptychoscan-policy"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "policy.pt"


class CheckpointError(ValueError):
    """A checkpoint file is missing or malformed."""


@dataclass
class LoadedPolicy:
    config: TrainConfig
    autoencoder: ConvAutoencoder
    policy: ScanPolicy
    version: str
    path: Path


def build_models(config: TrainConfig) -> tuple[ConvAutoencoder, ScanPolicy]:
    ae = ConvAutoencoder(config.model.autoencoder)
    pol = ScanPolicy(config.model.policy, config.model.autoencoder.latent_dim)
    return ae, pol


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """Atomically write ``payload`` (see module docstring) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, "version": 1, **payload}, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such policy checkpoint")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # any unpickling failure means a bad file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a ptychoscan policy checkpoint")
    return data


def load_policy(path: str | Path) -> LoadedPolicy:
    """Load a checkpoint's models in eval mode on the CPU."""
    data = read_checkpoint(path)
    for key in ("config", "autoencoder", "policy"):
        if key not in data:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    config = TrainConfig.model_validate(data["config"])
    ae, pol = build_models(config)
    try:
        ae.load_state_dict(data["autoencoder"])
        pol.load_state_dict(data["policy"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the stored config ({str(err).splitlines()[0]})") from None
    ae.eval()
    pol.eval()
    version = data.get("policy_version") or f"{data.get('stage', 'unknown')}-{data.get('iteration', 0)}"
    return LoadedPolicy(config, ae, pol, version, Path(path))


def load_default_policy() -> LoadedPolicy:
    """The shipped checkpoint ``policy/checkpoints/policy.pt``."""
    return load_policy(DEFAULT_CHECKPOINT)


def weights_digest(state_dict: dict) -> str:
    """Short hash of the weights, part of the policy version string."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        h.update(key.encode())
        h.update(state_dict[key].detach().cpu().numpy().tobytes())
    return h.hexdigest()[:10]
