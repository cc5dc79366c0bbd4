"""Read-only access to a session file (``service.store``'s layout) without opening it for writing: its state, a finished
session's summary (attributes and counts, no frames) and its latest reconstruction.

What a restart reads of a finished session (``service.restore``) and what answers for it
afterwards (``service.finished``); a reader may run while the service writes other files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

import recon.hdf5_filters  # noqa: F401  (registers the bitshuffle filter: session files' patterns are compressed with it)
from service.store import (
    StoredReconstruction,
    StoreError,
    check_format,
    error_text,
    probe_attr,
    read_reconstruction,
    session_header,
)


@dataclass
class SessionSummary:
    """What a finished session's status needs, read without its frames (a few hundred bytes in memory)."""

    session_id: str
    params: dict
    state: str
    error: str | None
    planner: dict
    created_unix: float
    positions_issued: int
    frames_received: int
    batches_issued: int
    batches_reconstructed: int
    reconstruction: dict | None
    """shape, pixel_nm, origin_nm, final_loss of the latest reconstruction, or None."""
    probe: dict | None = None
    """the probe retrieval's outcome, None if none was recorded."""
    tells: dict[int, tuple[int, int]] = field(default_factory=dict)
    """batch id -> (series of its last tell, slots bound to it): a repeated tell of a finished session is recognised."""


def read_state(path: Path) -> str:
    """The state attribute of a session file (opened read-only, nothing else read); StoreError if unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return str(check_format(f, Path(path))["state"])
    except (OSError, KeyError, ValueError) as err:
        raise StoreError(f"{Path(path).name}: cannot read session file ({error_text(err, Path(path))})") from None


def read_summary(path: Path) -> SessionSummary:
    """A finished session's summary: attributes and counts, no frames, no reconstruction arrays (read-only)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            a = check_format(f, path)
            recons = f["reconstructions"]
            names = sorted(recons)
            latest = None
            if names:
                ds = recons[names[-1]]["phase"]
                losses = ds.attrs["loss_history"]
                latest = {
                    "shape": list(ds.shape),
                    "pixel_nm": float(ds.attrs["pixel_nm"]),
                    "origin_nm": [float(v) for v in ds.attrs["origin_nm"]],
                    "final_loss": float(losses[-1]) if len(losses) else None,
                }
            slot_batch = f["slot_batch"][()]
            slot_series = f["slot_series"][()]
            tells = {}
            if "batch_series" in f:
                for bid, series in enumerate(f["batch_series"][()]):
                    if series >= 0:
                        tells[bid] = (int(series), int(((slot_batch == bid) & (slot_series == series)).sum()))
            return SessionSummary(
                **session_header(a),
                positions_issued=int(f["positions_issued_nm"].shape[0]),
                frames_received=int(f["received"][()].astype(bool).sum()),
                batches_issued=len(np.unique(slot_batch)),
                batches_reconstructed=len(names),
                reconstruction=latest,
                tells=tells,
                probe=probe_attr(a),
            )
    except StoreError:
        raise
    except (OSError, KeyError, ValueError, IndexError) as err:
        raise StoreError(f"{path.name}: damaged session file ({error_text(err, path)})") from None


def read_latest_reconstruction(path: Path) -> tuple[StoredReconstruction, int] | None:
    """(the latest reconstruction, how many are stored) of a session file, None if it has none (read-only)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            recons = f["reconstructions"]
            names = sorted(recons)
            return (read_reconstruction(recons[names[-1]]["phase"]), len(names)) if names else None
    except (OSError, KeyError, ValueError) as err:
        raise StoreError(f"{path.name}: cannot read reconstruction ({error_text(err, path)})") from None
