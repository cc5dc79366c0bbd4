"""Device selection: CUDA when present, else CPU."""

from __future__ import annotations

import torch


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """Return ``requested`` as a torch.device, or CUDA if available, else CPU.

    ``"auto"`` and ``None`` both mean: CUDA when present.
    """
    if requested is None or (isinstance(requested, str) and requested == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but torch.cuda.is_available() is False")
    return device
