"""4D-STEM dataset files (HDF5, format "ptychoscan-4dstem", version 1; docs/DESIGN.md section 4).

Simulated data with an aberrated probe or scan errors record what really happened in a
separate group, ``acquisition_truth`` (the true probe, its aberrations, the true
positions), for scoring only: ``read_dataset`` leaves it out unless asked
(``with_acquisition_truth=True``), so what a reconstructor reads by default is the
nominal beam and the nominal (commanded) positions.

Detector pixels that are not measurements (a detector's masked pixels, saturated ones)
are ``Dataset4D.invalid_pixels``: the optional ``detector_mask`` dataset and, for count
patterns, pixels at the pixel type's largest count. The patterns stay as measured.

``read_dataset`` validates shapes, dtypes and attributes and raises ``DatasetError``
with a one-line message that names what is wrong. ``write_dataset`` writes to a
temporary file and renames it into place, so an interrupted write never leaves a
half-written dataset behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

import recon.hdf5_filters  # noqa: F401  (registers the bitshuffle filter: session files' patterns are compressed with it)
from recon.invalid_pixels import DETECTOR_MASK, invalid_in_file

FORMAT_NAME = "ptychoscan-4dstem"
FORMAT_VERSION = 1
PATTERN_DTYPES = (np.dtype(np.float32), np.dtype(np.uint16), np.dtype(np.uint32))
_NAN_CHECK_CHUNK = 1024


class DatasetError(ValueError):
    """A dataset file is malformed; the message names the file and what is wrong."""


@dataclass
class GroundTruth:
    """True transmission phase sigma*V (rad) on a grid; simulated data only."""

    phase: np.ndarray
    """(H, W) float32, indexed [y, x]."""
    pixel_nm: float
    origin_nm: tuple[float, float]
    """(x, y) in nm of pixel [0, 0]."""


ACQUISITION_TRUTH_GROUP = "acquisition_truth"
ABERRATION_NAMES = ("defocus_nm", "astigmatism_nm", "astigmatism_angle_deg", "cs_um")
"""The true probe's aberrations recorded as attributes of the truth group (``recon.aberrations.ProbeAberrations``'s fields)."""


@dataclass
class AcquisitionTruth:
    """What the microscope really did (simulated data only; for scoring, never for reconstructing)."""

    positions_nm: np.ndarray
    """(N, 2) float64 true probe positions (x, y) in nm (the file's ``positions_nm`` are the nominal ones)."""
    probe: np.ndarray
    """(K, K) complex64 true probe on the reconstruction grid."""
    aberrations: dict[str, float]
    """The true probe's aberrations, keys ``ABERRATION_NAMES`` (nm, nm, deg, um)."""


@dataclass
class Dataset4D:
    """A 4D-STEM dataset: patterns at probe positions plus beam and detector parameters."""

    patterns: np.ndarray
    """(N, K, K) diffraction intensities, float32 or uint16/uint32 counts, centred."""
    positions_nm: np.ndarray
    """(N, 2) float64 probe positions (x, y) in nm."""
    energy_ev: float
    convergence_mrad: float
    detector_pixel_mrad: float
    defocus_nm: float = 0.0
    grid_shape: tuple[int, int] | None = None
    """(ny, nx) when positions are a dense row-major raster."""
    probe: np.ndarray | None = None
    """(K, K) complex64 known probe on the reconstruction grid."""
    ground_truth: GroundTruth | None = None
    specimen_kind: str | None = None
    """Simulated data: the specimen kind (``ptychoscan simulate --specimen``); root attribute, optional."""
    specimen_seed: int | None = None
    """Simulated data: the seed the specimen was built from; root attribute, optional."""
    vacuum_fraction: float | None = None
    """Simulated data: fraction in [0, 1] of the positions' bounding box that is vacuum
    (``sim_microscope.vacuum.vacuum_fraction`` of the ground truth); root attribute, optional."""
    invalid_pixels: np.ndarray | None = None
    """(K, K) bool, True where a detector pixel is not a measurement (masked or saturated): the file's ``detector_mask``
    (nonzero) and, for count patterns, pixels that read the pixel type's largest count (``recon.invalid_pixels``); the
    reconstruction leaves them out of its loss. None: every pixel is valid."""
    acquisition_truth: AcquisitionTruth | None = None
    """Simulated data with probe or scan errors: the truth, read only when asked (``read_dataset(with_acquisition_truth=True)``)."""

    @property
    def n_positions(self) -> int:
        return int(self.patterns.shape[0])

    @property
    def detector_pixels(self) -> int:
        return int(self.patterns.shape[-1])

    def validate(self, source: str = "dataset") -> None:
        """Raise DatasetError if any field has the wrong shape, dtype or value."""
        _validate_patterns(self.patterns, source)
        _validate_metadata(self, self.patterns.shape[0], self.patterns.shape[1], source)


def _fail(source: str, message: str) -> None:
    raise DatasetError(f"{source}: {message}")


def _check_finite_patterns(patterns, source: str) -> None:
    for start in range(0, patterns.shape[0], _NAN_CHECK_CHUNK):
        block = np.asarray(patterns[start : start + _NAN_CHECK_CHUNK])
        if block.dtype.kind == "f":
            bad = ~np.isfinite(block)
            if bad.any():
                frame = start + int(np.argwhere(bad)[0, 0])
                _fail(source, f"patterns contain NaN or infinite values (first in frame {frame})")
            if (block < 0).any():
                frame = start + int(np.argwhere(block < 0)[0, 0])
                _fail(source, f"patterns contain negative intensities (first in frame {frame})")


def _validate_patterns(p, source: str) -> None:
    if p.ndim != 3 or p.shape[1] != p.shape[2] or p.shape[1] == 0:
        _fail(source, f"patterns must have shape (N, K, K), got {tuple(p.shape)}")
    if np.dtype(p.dtype) not in PATTERN_DTYPES:
        _fail(source, f"patterns dtype {p.dtype} is not one of float32, uint16, uint32")
    _check_finite_patterns(p, source)


def _validate_metadata(ds: Dataset4D, n_frames: int, k: int, source: str) -> None:
    pos = np.asarray(ds.positions_nm)
    if pos.ndim != 2 or pos.shape[1] != 2:
        _fail(source, f"positions_nm must have shape (N, 2), got {tuple(pos.shape)}")
    if pos.shape[0] != n_frames:
        _fail(source, f"positions_nm has {pos.shape[0]} rows but patterns has {n_frames} frames")
    if not np.isfinite(pos).all():
        _fail(source, f"positions_nm contains NaN or infinite values (first at row {int(np.argwhere(~np.isfinite(pos))[0, 0])})")
    for name in ("energy_ev", "convergence_mrad", "detector_pixel_mrad"):
        value = getattr(ds, name)
        if value is None or not np.isfinite(value) or value <= 0:
            _fail(source, f"attribute {name} must be a positive number, got {value!r}")
    if not np.isfinite(ds.defocus_nm):
        _fail(source, f"attribute defocus_nm must be finite, got {ds.defocus_nm!r}")
    if ds.grid_shape is not None:
        gs = tuple(int(v) for v in ds.grid_shape)
        if len(gs) != 2 or gs[0] * gs[1] != n_frames:
            _fail(source, f"grid_shape {gs} does not match {n_frames} positions")
    if ds.invalid_pixels is not None and np.shape(ds.invalid_pixels) != (k, k):
        _fail(source, f"{DETECTOR_MASK} must have shape ({k}, {k}), got {np.shape(ds.invalid_pixels)}")
    if ds.probe is not None:
        if ds.probe.shape != (k, k) or not np.iscomplexobj(ds.probe):
            _fail(source, f"probe must be complex with shape ({k}, {k}), got {ds.probe.dtype} {ds.probe.shape}")
    gt = ds.ground_truth
    if gt is not None:
        if gt.phase.ndim != 2:
            _fail(source, f"ground_truth/phase must be 2-D, got shape {gt.phase.shape}")
        if not np.isfinite(gt.phase).all():
            _fail(source, "ground_truth/phase contains NaN or infinite values")
        if not (np.isfinite(gt.pixel_nm) and gt.pixel_nm > 0):
            _fail(source, f"ground_truth pixel_nm must be positive, got {gt.pixel_nm!r}")
        if len(gt.origin_nm) != 2:
            _fail(source, f"ground_truth origin_nm must be (x, y), got {gt.origin_nm!r}")
    if ds.vacuum_fraction is not None and not (0.0 <= ds.vacuum_fraction <= 1.0):
        _fail(source, f"attribute vacuum_fraction must be in [0, 1], got {ds.vacuum_fraction!r}")
    if ds.acquisition_truth is not None:
        _validate_truth(ds.acquisition_truth, n_frames, k, source)


def _validate_truth(truth: AcquisitionTruth, n_frames: int, k: int, source: str) -> None:
    group = ACQUISITION_TRUTH_GROUP
    pos = np.asarray(truth.positions_nm)
    if pos.shape != (n_frames, 2) or not np.isfinite(pos).all():
        _fail(source, f"{group}/positions_nm must be finite with shape ({n_frames}, 2), got {pos.shape}")
    probe = np.asarray(truth.probe)
    if probe.shape != (k, k) or not np.iscomplexobj(probe) or not np.isfinite(probe).all():
        _fail(source, f"{group}/probe must be finite complex with shape ({k}, {k}), got {probe.dtype} {probe.shape}")
    missing = [name for name in ABERRATION_NAMES if name not in truth.aberrations]
    if missing:
        _fail(source, f"{group} lacks aberration attribute(s) {', '.join(missing)}")
    bad = [name for name in ABERRATION_NAMES if not np.isfinite(truth.aberrations[name])]
    if bad:
        _fail(source, f"{group} aberration attribute(s) {', '.join(bad)} must be finite")


def write_dataset(path: str | os.PathLike, ds: Dataset4D, *, compression: str | None = None) -> Path:
    """Validate and write ``ds`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    ds.validate(str(path))
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["version"] = FORMAT_VERSION
            f.attrs["energy_ev"] = float(ds.energy_ev)
            f.attrs["convergence_mrad"] = float(ds.convergence_mrad)
            f.attrs["detector_pixel_mrad"] = float(ds.detector_pixel_mrad)
            f.attrs["defocus_nm"] = float(ds.defocus_nm)
            if ds.grid_shape is not None:
                f.attrs["grid_shape"] = np.asarray(ds.grid_shape, dtype=np.int64)
            if ds.specimen_kind is not None:
                f.attrs["specimen_kind"] = str(ds.specimen_kind)
            if ds.specimen_seed is not None:
                f.attrs["specimen_seed"] = np.int64(ds.specimen_seed)
            if ds.vacuum_fraction is not None:
                f.attrs["vacuum_fraction"] = float(ds.vacuum_fraction)
            k = ds.patterns.shape[-1]
            f.create_dataset("patterns", data=ds.patterns, chunks=(min(256, ds.n_positions), k, k), compression=compression)
            f.create_dataset("positions_nm", data=np.asarray(ds.positions_nm, dtype=np.float64))
            if ds.invalid_pixels is not None:
                f.create_dataset(DETECTOR_MASK, data=np.asarray(ds.invalid_pixels, dtype=np.uint8))
            if ds.probe is not None:
                f.create_dataset("probe", data=ds.probe.astype(np.complex64))
            if ds.ground_truth is not None:
                gt = f.create_dataset("ground_truth/phase", data=ds.ground_truth.phase.astype(np.float32))
                gt.attrs["pixel_nm"] = float(ds.ground_truth.pixel_nm)
                gt.attrs["origin_nm"] = np.asarray(ds.ground_truth.origin_nm, dtype=np.float64)
            if ds.acquisition_truth is not None:
                truth = f.create_group(ACQUISITION_TRUTH_GROUP)
                truth.create_dataset("positions_nm", data=np.asarray(ds.acquisition_truth.positions_nm, dtype=np.float64))
                truth.create_dataset("probe", data=np.asarray(ds.acquisition_truth.probe).astype(np.complex64))
                for name in ABERRATION_NAMES:
                    truth.attrs[name] = float(ds.acquisition_truth.aberrations[name])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _attr(f: h5py.File | h5py.Group, name: str, source: str, default=None):
    if name in f.attrs:
        value = f.attrs[name]
        try:
            return float(value)
        except (TypeError, ValueError):
            _fail(source, f"attribute {name} must be a number, got {value!r}")
    if default is None:
        _fail(source, f"missing root attribute {name}")
    return default


def _specimen_attrs(f: h5py.File, source: str) -> dict:
    """The optional specimen_kind / specimen_seed / vacuum_fraction root attributes that are present."""
    out: dict = {}
    if "specimen_kind" in f.attrs:
        kind = f.attrs["specimen_kind"]
        out["specimen_kind"] = kind.decode() if isinstance(kind, bytes) else str(kind)
    if "specimen_seed" in f.attrs:
        seed = f.attrs["specimen_seed"]
        if np.ndim(seed) != 0 or np.asarray(seed).dtype.kind not in "iu":
            _fail(source, f"attribute specimen_seed must be an integer, got {seed!r}")
        out["specimen_seed"] = int(seed)
    if "vacuum_fraction" in f.attrs:
        out["vacuum_fraction"] = _attr(f, "vacuum_fraction", source)
    return out


def _read_truth(f: h5py.File, source: str) -> AcquisitionTruth | None:
    """The ``acquisition_truth`` group, or None when the file has none."""
    if ACQUISITION_TRUTH_GROUP not in f:
        return None
    group = f[ACQUISITION_TRUTH_GROUP]
    for name in ("positions_nm", "probe"):
        if name not in group:
            _fail(source, f"{ACQUISITION_TRUTH_GROUP} lacks dataset {name!r}")
    aberrations = {name: _attr(group, name, source) for name in ABERRATION_NAMES if name in group.attrs}
    return AcquisitionTruth(group["positions_nm"][()].astype(np.float64), group["probe"][()], aberrations)


def read_dataset(path: str | os.PathLike, *, load_patterns: bool = True, with_acquisition_truth: bool = False) -> Dataset4D:
    """Read and validate a dataset file; raise DatasetError naming the problem.

    With ``load_patterns=False`` the patterns are returned as an empty (0, K, K)
    array (the metadata, positions and ground truth are still read and checked).
    ``acquisition_truth`` (true probe and positions of simulated data) is read only with
    ``with_acquisition_truth=True``: for scoring and tests, never for reconstructing.
    """
    source = str(path)
    if not Path(path).exists():
        raise DatasetError(f"{source}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"{source}: not an HDF5 file ({err})") from None
    with f:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT_NAME:
            _fail(source, f"root attribute format is {fmt!r}, expected {FORMAT_NAME!r}")
        version = f.attrs.get("version")
        if version is None or int(version) != FORMAT_VERSION:
            _fail(source, f"unsupported version {version!r}, expected {FORMAT_VERSION}")
        for name in ("patterns", "positions_nm"):
            if name not in f or not isinstance(f[name], h5py.Dataset):
                _fail(source, f"missing dataset {name!r}")
        pattern_ds = f["patterns"]
        if pattern_ds.ndim != 3:
            _fail(source, f"patterns must have shape (N, K, K), got {pattern_ds.shape}")
        patterns = pattern_ds[()] if load_patterns else np.empty((0, *pattern_ds.shape[1:]), pattern_ds.dtype)
        positions = f["positions_nm"][()]
        if positions.dtype.kind != "f":
            _fail(source, f"positions_nm must be floating point, got {positions.dtype}")
        grid_shape = tuple(int(v) for v in f.attrs["grid_shape"]) if "grid_shape" in f.attrs else None
        probe = f["probe"][()] if "probe" in f else None
        try:
            invalid = invalid_in_file(f, patterns)  # without the patterns: the recorded mask alone
        except ValueError as err:
            _fail(source, str(err))
        ground_truth = None
        if "ground_truth/phase" in f:
            gt = f["ground_truth/phase"]
            for name in ("pixel_nm", "origin_nm"):
                if name not in gt.attrs:
                    _fail(source, f"ground_truth/phase lacks attribute {name}")
            origin = tuple(float(v) for v in np.atleast_1d(gt.attrs["origin_nm"]))
            ground_truth = GroundTruth(gt[()].astype(np.float32), float(gt.attrs["pixel_nm"]), origin)
        ds = Dataset4D(
            patterns=patterns,
            positions_nm=positions,
            energy_ev=_attr(f, "energy_ev", source),
            convergence_mrad=_attr(f, "convergence_mrad", source),
            detector_pixel_mrad=_attr(f, "detector_pixel_mrad", source),
            defocus_nm=_attr(f, "defocus_nm", source, default=0.0),
            grid_shape=grid_shape,
            probe=probe,
            ground_truth=ground_truth,
            invalid_pixels=invalid,
            acquisition_truth=_read_truth(f, source) if with_acquisition_truth else None,
            **_specimen_attrs(f, source),
        )
        if load_patterns:
            ds.validate(source)
        else:
            _validate_metadata(ds, pattern_ds.shape[0], pattern_ds.shape[1], source)
        return ds
