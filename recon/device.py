"""Device selection: CUDA when present, else CPU."""

from __future__ import annotations

import torch


class DeviceError(RuntimeError, ValueError):
    """The requested device does not exist here (a RuntimeError as before; a ValueError so that the CLI reports it in one line)."""


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """Return ``requested`` as a torch.device, or CUDA if available, else CPU.

    ``"auto"`` and ``None`` both mean: CUDA when present.
    """
    if requested is None or (isinstance(requested, str) and requested == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise DeviceError(f"unknown device {str(requested)!r} (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {str(requested)!r}: CUDA was requested but torch sees no CUDA device (use --device cpu or auto)")
    return device
