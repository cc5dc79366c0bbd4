"""A done session's converged reconstruction, in a file of its own beside the session file.

``<session id>.converged.h5`` holds one dataset ``phase`` (rows y, columns x; float32,
rad) with attributes ``pixel_nm``, ``origin_nm`` (x, y of pixel (0, 0), nm),
``n_positions``, ``passes``, ``loss_history`` and ``recipe`` (the reconstruction options
as JSON); with position correction also ``corrected_positions_nm`` ((N, 2) nm, the received
frames in slot order; attribute ``scan_matrix``, the fitted I + D). It is written to a temporary name and renamed into place, so it is either
complete or absent: a crash mid-write leaves no half file, and a restart makes it again.
The session file itself is closed and never rewritten once its session is done; readers
of it (``GET .../file``, the reconstruction route) never race this writer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

import recon.hdf5_filters  # noqa: F401  (registers the bitshuffle filter: session files' patterns are compressed with it)
from recon.invalid_pixels import invalid_in_file

CONVERGED_SUFFIX = ".converged.h5"


class ConvergedStoreError(OSError):
    """The converged reconstruction cannot be read or written (a one-line reason)."""


@dataclass
class ConvergedReconstruction:
    potential: np.ndarray
    """(ny, nx) float32 projected potential, rad."""
    origin_nm: tuple[float, float]
    pixel_nm: float
    n_positions: int
    passes: int
    loss_history: list[float]
    recipe: dict
    """``recon.options.ReconOptions`` fields it was made with."""
    positions_nm: np.ndarray | None = None
    """(N, 2) corrected positions (x, y) nm of the received frames in slot order, when positions were corrected."""
    scan_matrix: np.ndarray | None = None
    """(2, 2) fitted scan matrix I + D, when positions were corrected."""


def converged_path(session_file: Path) -> Path:
    """Where the converged reconstruction of the session in ``session_file`` (``<id>.h5``) goes."""
    session_file = Path(session_file)
    return session_file.with_name(session_file.stem + CONVERGED_SUFFIX)


def is_converged_file(path: Path) -> bool:
    return Path(path).name.endswith(CONVERGED_SUFFIX)


def write_converged(session_file: Path, rec: ConvergedReconstruction) -> Path:
    """Write ``rec`` for the session in ``session_file``, atomically (temporary file, fsync, rename); its path."""
    final = converged_path(session_file)
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("phase", data=np.asarray(rec.potential, np.float32))
            ds.attrs["pixel_nm"] = float(rec.pixel_nm)
            ds.attrs["origin_nm"] = np.asarray(rec.origin_nm, np.float64)
            ds.attrs["n_positions"] = int(rec.n_positions)
            ds.attrs["passes"] = int(rec.passes)
            ds.attrs["loss_history"] = np.asarray(rec.loss_history, np.float64)
            ds.attrs["recipe"] = json.dumps(rec.recipe)
            if rec.positions_nm is not None:
                pos = f.create_dataset("corrected_positions_nm", data=np.asarray(rec.positions_nm, np.float64))
                if rec.scan_matrix is not None:
                    pos.attrs["scan_matrix"] = np.asarray(rec.scan_matrix, np.float64)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ConvergedStoreError(f"{final.name}: cannot write ({err.strerror or err})") from None
    return final


def read_converged(session_file: Path) -> ConvergedReconstruction | None:
    """The converged reconstruction of the session in ``session_file``; None if there is none yet."""
    path = converged_path(session_file)
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            ds = f["phase"]
            a = ds.attrs
            pos = f.get("corrected_positions_nm")
            return ConvergedReconstruction(
                ds[()], tuple(float(v) for v in a["origin_nm"]), float(a["pixel_nm"]), int(a["n_positions"]), int(a["passes"]),
                [float(v) for v in a["loss_history"]], json.loads(a["recipe"]),
                None if pos is None else pos[()], None if pos is None or "scan_matrix" not in pos.attrs else pos.attrs["scan_matrix"][()],
            )
    except (OSError, KeyError, ValueError) as err:
        raise ConvergedStoreError(f"{path.name}: cannot read ({err})") from None


def read_converged_recipe(session_file: Path) -> dict | None:
    """The recipe (with ``probe_aberrations``) of the session's converged reconstruction, None if there is none (no array read)."""
    path = converged_path(session_file)
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f["phase"].attrs["recipe"])
    except (OSError, KeyError, ValueError) as err:
        raise ConvergedStoreError(f"{path.name}: cannot read ({err})") from None


def read_measured_frames(session_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(patterns (N, K, K) float32 counts, positions (N, 2) nm) of every received frame of a closed session file."""
    return read_measured(session_file)[:2]


def read_measured(session_file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``read_measured_frames`` and the detector pixels that are not measurements ((K, K) bool, ``service.detector_mask``; None: none)."""
    try:
        with h5py.File(session_file, "r") as f:
            received = f["received"][()].astype(bool)
            n = min(len(received), f["patterns"].shape[0], f["positions_nm"].shape[0])
            keep = np.flatnonzero(received[:n])
            raw = f["patterns"][:n]  # the file's own pixel type; float32 only for the received rows (one float copy, not three)
            invalid = invalid_in_file(f, raw)
            patterns = (raw if len(keep) == n else raw[keep]).astype(np.float32)
            positions = np.asarray(f["positions_nm"][:n], np.float64)[keep]
    except (OSError, KeyError, ValueError) as err:
        raise ConvergedStoreError(f"{Path(session_file).name}: cannot read its frames ({err})") from None
    return patterns, positions, invalid
