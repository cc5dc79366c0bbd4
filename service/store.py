"""A session on disk: one dataset file (docs/DESIGN.md section 4, ``recon.dataset`` format) that grows chunk by chunk.

Layout beyond the dataset format (which ``recon.dataset.read_dataset`` reads once a
session is complete): ``positions_issued_nm`` and ``positions_measured_nm`` (NaN where
the scan reported none), per slot (position index) ``slot_batch``, ``slot_series``,
``slot_frame`` (which detector series/frame fills it, -1 if unbound) and ``received``;
per batch ``batch_series`` (the series of its last tell still awaiting frames or that
completed it, -1 if none: files written before it existed lack it);
``detector_mask`` (K, K) uint8, once any pixel is known invalid: nonzero where a detector
pixel is not a measurement (bit 1: masked in the detector's pixel mask, bit 2: read the
pixel type's largest count; ``service.detector_mask``; ``patterns`` stay as sent);
``reconstructions/chunk_NNNN/phase`` (with ``pixel_nm``, ``origin_nm``,
``n_positions``, ``loss_history``, ``policy_version``); session parameters, state and
error as root attributes. ``flush`` is called after every chunk and on a timer, so a
crash loses at most the frames received since the last flush: uncompressed rows (the
default) are written in place, into chunks allocated when ``patterns`` grows, which
never move (``service.row_writer`` writes them with ``os.pwritev``, before the
``received`` flags and the flush: a kill -9 never leaves a row marked received that was
not written). Compressed patterns (``compressed``,
``service.pattern_chunks``) move when a chunk is rewritten, and a kill -9 between the
write and the flush can cost rows of that chunk flushed before. The file is created with
HDF5's file-space strategy "none": space freed is never reused, so a stale index on disk
never serves another chunk's (or a deleted reconstruction's) bytes as a chunk's rows. Reads of a file not open
for writing (a finished session's state, summary, latest reconstruction) are
``service.store_read``'s.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from recon.dataset import FORMAT_NAME, FORMAT_VERSION
from recon.invalid_pixels import DETECTOR_MASK
from service.converged_store import is_converged_file
from service.pattern_chunks import Blob, PatternChunks, create_patterns, is_bslz4, write_chunks
from service.row_writer import PatternRows, open_patterns, runs, write_rows

log = logging.getLogger(__name__)

SESSION_SUFFIX = ".h5"
_GROWABLE_2 = (None, 2)


class StoreError(OSError):
    """The session file cannot be written or read; the message names the file and why."""


@dataclass
class StoredReconstruction:
    batch_id: int
    potential: np.ndarray
    origin_nm: tuple[float, float]
    pixel_nm: float
    n_positions: int
    loss_history: list[float]
    policy_version: str


@dataclass
class StoredSession:
    """Everything needed to resume a session after a restart."""

    session_id: str
    params: dict
    state: str
    error: str | None
    planner: dict
    created_unix: float
    positions_issued: np.ndarray
    positions_measured: np.ndarray
    slot_batch: np.ndarray
    slot_series: np.ndarray
    slot_frame: np.ndarray
    received: np.ndarray
    patterns: np.ndarray
    """(n_issued, K, K) counts in the file's pixel type."""
    batch_series: np.ndarray | None = None
    """per batch, the series of its last tell (-1: none); None in files written before it was kept."""
    reconstructed_batches: list[int] = field(default_factory=list)
    """batch ids of the stored reconstructions, in order."""
    latest_reconstruction: StoredReconstruction | None = None
    """the last stored reconstruction (earlier ones stay on disk: a resumed session needs only the latest)."""
    probe: dict | None = None
    """the probe retrieval's outcome (``service.probe_job``), None if none was recorded."""
    detector_mask: np.ndarray | None = None
    """(K, K) uint8 invalid-pixel flags (``service.detector_mask``); None if the file has none."""


def check_format(f: h5py.File, path: Path):
    """The root attributes of an open session file; StoreError if it is not one."""
    a = f.attrs
    if a.get("format") != FORMAT_NAME or "session_id" not in a:
        raise StoreError(f"{path.name}: not a ptychoscan session file")
    return a


def read_reconstruction(ds: h5py.Dataset) -> StoredReconstruction:
    """A stored reconstruction from its ``reconstructions/chunk_NNNN/phase`` dataset."""
    return StoredReconstruction(
        int(ds.attrs["batch_id"]),
        ds[()],
        tuple(float(v) for v in ds.attrs["origin_nm"]),
        float(ds.attrs["pixel_nm"]),
        int(ds.attrs["n_positions"]),
        [float(v) for v in ds.attrs["loss_history"]],
        str(ds.attrs["policy_version"]),
    )


def session_header(a) -> dict:
    """The fields every record of a session reads from its file's root attributes ``a`` (``StoredSession``, ``SessionSummary``):
    id, request, state, error, planner, creation time (s since the epoch)."""
    return dict(session_id=str(a["session_id"]), params=json.loads(a["session_params"]), state=str(a["state"]),
                error=str(a["error"]) or None, planner=json.loads(a["planner"]), created_unix=float(a["created_unix"]))


def probe_attr(a) -> dict | None:
    """The ``probe`` root attribute (JSON) of a session file's attributes ``a``, None if it has none."""
    return json.loads(a["probe"]) if "probe" in a else None


def _grow(ds: h5py.Dataset, n: int) -> int:
    """Add ``n`` rows to ``ds`` (unwritten rows read as the fill value); returns the old row count."""
    old = ds.id.shape[0]
    ds.id.set_extent((old + n, *ds.id.shape[1:]))
    return old


def _resize_append(ds: h5py.Dataset, rows: np.ndarray) -> None:
    write_rows(ds, _grow(ds, rows.shape[0]), rows)


def error_text(err: BaseException, path: Path) -> str:
    """``err``'s message without the absolute path of the file or its folder (messages reach API responses)."""
    text = str(err)
    for p in (str(Path(path).resolve()), str(path), str(Path(path).resolve().parent), str(Path(path).parent)):
        if p not in ("", "."):
            text = text.replace(p, "<storage>" if not p.endswith(Path(path).name) else Path(path).name)
    return text


def pixel_dtype(params: dict) -> np.dtype:
    """Pixel type of a session's stored counts: uint16 for 8- and 16-bit detectors (the dataset format has no uint8), else uint32.

    Sessions created before ``detector_bit_depth`` existed store uint32.
    """
    return np.dtype(np.uint16 if int(params.get("detector_bit_depth", 32)) <= 16 else np.uint32)


class SessionStore:
    """Writer of one session file. Not thread-safe: the session manager serialises calls, except that queued frames may be
    written outside its lock (``take_pending`` under it, ``write_taken`` after)."""

    def __init__(self, path: Path, f: h5py.File, patterns: h5py.Dataset | None = None) -> None:
        """``patterns``: the file's, as ``open_patterns`` opened it (opened here if None), kept open while the store is."""
        self.path = path
        self._f = f
        self._pending: dict[int, tuple[np.ndarray, Blob | None]] = {}
        """Frames received since the last flush, by slot: (image, its detector blob or None) (written in bulk by ``flush``)."""
        patterns = open_patterns(f) if patterns is None else patterns
        compressed = is_bslz4(patterns) and patterns.chunks[1:] == patterns.shape[1:]
        self._chunks = PatternChunks(patterns.chunks[0], patterns.shape[1:], patterns.dtype, patterns.shape[0], compressed)
        """Which queued frames go to the file as the detector sent them (``service.pattern_chunks``)."""
        self._rows = PatternRows(f, patterns)
        """Writer of queued frames' rows into ``patterns`` (in place where it can: ``service.row_writer``)."""
        self._state_written: tuple[str, str] | None = None
        self._datasets: dict[str, h5py.Dataset] = {"patterns": patterns}
        self._failed: StoreError | None = None
        """a write outside the manager's lock failed: later flushes raise it (what it took may not be in the file)."""
        self._io = threading.Lock()
        """Held while queued frames go to the file: ``flush``, ``close`` and a write outside the manager's lock (``take_pending``
        then ``write_taken``) never overlap, and are done in the order they took the frames."""

    @property
    def pattern_rows(self) -> PatternRows:
        """The writer of queued frames into ``patterns`` (its file descriptor, whether it writes in place)."""
        return self._rows

    def dataset(self, name: str) -> h5py.Dataset:
        """The open file's dataset ``name`` (readers in this process: what is written there is flushed only by ``flush``)."""
        return self._ds(name)

    def _ds(self, name: str) -> h5py.Dataset:
        """The dataset ``name``, looked up once (a lookup costs about 30 us, as much as a write)."""
        ds = self._datasets.get(name)
        if ds is None:
            ds = self._datasets[name] = self._f[name]
        return ds

    # --- creation and reopening -----------------------------------------------------

    @classmethod
    def create(cls, path: Path, session_id: str, params: dict, planner: dict, compressed: bool = False) -> SessionStore:
        """A new session file; ``patterns`` holds counts in the detector's pixel type (``pixel_dtype``), bitshuffle-LZ4 if ``compressed``."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = h5py.File(path, "w", fs_strategy="none")  # freed space never reused (see the module docstring)
            k = int(params["detector_pixels"])
            f.attrs["format"] = FORMAT_NAME
            f.attrs["version"] = FORMAT_VERSION
            for name in ("energy_ev", "convergence_mrad", "detector_pixel_mrad", "defocus_nm"):
                f.attrs[name] = float(params[name])
            f.attrs["session_id"] = session_id
            f.attrs["session_params"] = json.dumps(params)
            f.attrs["planner"] = json.dumps(planner)
            f.attrs["policy_version"] = str(planner.get("version", ""))
            f.attrs["created_unix"] = time.time()
            f.attrs["state"] = "created"
            f.attrs["error"] = ""
            chunk = max(1, min(int(params["chunk"]), 64))
            patterns = create_patterns(f, k, pixel_dtype(params), chunk, compressed)
            for name in ("positions_nm", "positions_issued_nm", "positions_measured_nm"):
                f.create_dataset(name, (0, 2), maxshape=_GROWABLE_2, dtype=np.float64, chunks=(256, 2))
            for name, dt in (("slot_batch", np.int32), ("slot_series", np.int64), ("slot_frame", np.int64), ("received", np.uint8)):
                f.create_dataset(name, (0,), maxshape=(None,), dtype=dt, chunks=(256,))
            f.create_dataset("batch_series", (0,), maxshape=(None,), dtype=np.int64, chunks=(256,))
            f.create_group("reconstructions")
            f.flush()
        except OSError as err:
            raise StoreError(f"{path.name}: cannot create session file ({error_text(err, path)})") from None
        return cls(path, f, patterns)

    @classmethod
    def open(cls, path: Path) -> tuple[SessionStore, StoredSession]:
        """Reopen a session file for writing and read what resuming it needs (its frames and its latest reconstruction only)."""
        path = Path(path)
        try:
            f = h5py.File(path, "a")
        except OSError as err:
            raise StoreError(f"{path.name}: cannot open session file ({error_text(err, path)})") from None
        try:
            a = check_format(f, path)
            patterns = open_patterns(f)  # first: kept open, its chunk cache off (service.row_writer)
            recons = f["reconstructions"]
            names = sorted(recons)
            stored = StoredSession(
                **session_header(a),
                positions_issued=f["positions_issued_nm"][()],
                positions_measured=f["positions_measured_nm"][()],
                slot_batch=f["slot_batch"][()],
                slot_series=f["slot_series"][()],
                slot_frame=f["slot_frame"][()],
                received=f["received"][()].astype(bool),
                patterns=patterns[()],
                batch_series=f["batch_series"][()] if "batch_series" in f else None,
                reconstructed_batches=[int(recons[name]["phase"].attrs["batch_id"]) for name in names],
                latest_reconstruction=read_reconstruction(recons[names[-1]]["phase"]) if names else None,
                probe=probe_attr(a),
                detector_mask=f[DETECTOR_MASK][()] if DETECTOR_MASK in f else None,
            )
        except StoreError:
            f.close()
            raise
        except (OSError, KeyError, ValueError, IndexError) as err:
            f.close()
            raise StoreError(f"{path.name}: damaged session file ({error_text(err, path)})") from None
        return cls(path, f, patterns), stored

    # --- writes ----------------------------------------------------------------------

    def _guard(self, what: str):
        return _Guard(self.path, what)

    def append_batch(self, batch_id: int, positions_nm: np.ndarray) -> None:
        """Issue a batch: its positions get new slots (no frames yet)."""
        n = positions_nm.shape[0]
        with self._guard("append batch"):
            self._rows.grow(n)  # grown only: unwritten rows read 0 (writing zeros cost ~1.5 ms per chunk)
            _resize_append(self._ds("positions_nm"), positions_nm)
            _resize_append(self._ds("positions_issued_nm"), positions_nm)
            _resize_append(self._ds("positions_measured_nm"), np.full((n, 2), np.nan))
            _resize_append(self._ds("slot_batch"), np.full(n, batch_id, np.int32))
            _resize_append(self._ds("slot_series"), np.full(n, -1, np.int64))
            _resize_append(self._ds("slot_frame"), np.full(n, -1, np.int64))
            _resize_append(self._ds("received"), np.zeros(n, np.uint8))
            batches = self._batch_series()
            if batches is not None and batches.id.shape[0] <= batch_id:
                _grow(batches, batch_id + 1 - batches.id.shape[0])
                write_rows(batches, batch_id, np.array([-1], np.int64))
            self._f.flush()

    def _batch_series(self) -> h5py.Dataset | None:
        """The ``batch_series`` dataset, None in a file written before it existed."""
        if "batch_series" not in self._datasets and "batch_series" not in self._f:
            return None
        return self._ds("batch_series")

    def bind(self, slots: np.ndarray, series: int, measured_nm: np.ndarray | None, batch_id: int | None = None) -> None:
        """Slot ``slots[i]`` is filled by frame i of ``series``; record measured positions when given.

        ``batch_id``: the batch told (its ``batch_series`` becomes ``series``, what a restart
        restores as the batch's tell).
        """
        slots = np.asarray(slots, dtype=np.int64)
        with self._guard("bind series"):
            batches = self._batch_series()
            if batch_id is not None and batches is not None:
                write_rows(batches, batch_id, np.array([series], np.int64))
            # one h5py write per run of consecutive slots (a batch is one run), not per slot: the
            # manager's lock is held meanwhile, and per-slot writes took ~10 ms per chunk of 50
            for start, stop, rows in runs(slots):
                write_rows(self._ds("slot_series"), start, np.full(stop - start, series))
                write_rows(self._ds("slot_frame"), start, rows)
                if measured_nm is not None:
                    write_rows(self._ds("positions_measured_nm"), start, measured_nm[rows])
                    write_rows(self._ds("positions_nm"), start, measured_nm[rows])
            self._f.flush()

    def unbind(self, slots: np.ndarray, batch_id: int) -> None:
        """Slots ``slots`` are no longer bound to any series and batch ``batch_id`` awaits a new tell (its series ended short)."""
        slots = np.asarray(slots, dtype=np.int64)
        with self._guard("unbind series"):
            for start, stop, _ in runs(slots):
                write_rows(self._ds("slot_series"), start, np.full(stop - start, -1, np.int64))
                write_rows(self._ds("slot_frame"), start, np.full(stop - start, -1, np.int64))
            batches = self._batch_series()
            if batches is not None:
                write_rows(batches, batch_id, np.array([-1], np.int64))
            self._f.flush()

    def write_frame(self, slot: int, image: np.ndarray, blob: Blob | None = None) -> None:
        """Queue one frame for the file; the next ``flush`` writes it (in bulk: ``service.row_writer``) and makes it durable.

        ``blob``: the bitshuffle-LZ4 blob ``image`` was decoded from (``Frame.blob``), written
        as it is where it can be (``service.pattern_chunks``). A frame written alone costs
        ~130 us in h5py, which capped the ingest near 1.5k frames/s; frames are not durable
        before a flush either way.
        """
        self._pending[int(slot)] = (np.array(image, copy=True), blob)

    def write_frames(self, slots: list[int], images: list[np.ndarray], blobs: list[Blob | None] | None = None) -> None:
        """``write_frame`` for a run of frames, without the copy: the caller hands over ``images`` (K, K each) and never writes into them."""
        self._pending.update(zip((int(v) for v in slots), zip(images, blobs or [None] * len(images), strict=True), strict=True))

    def take_pending(self) -> dict[int, tuple[np.ndarray, Blob | None]]:
        """Hand over the queued frames for ``write_taken`` (call it under the manager's lock, then ``write_taken`` without it:
        the ingest goes on meanwhile). Holds the file's write lock until ``write_taken`` returns: call it, whatever happens."""
        self._io.acquire()
        pending, self._pending = self._pending, {}
        return pending

    def write_taken(self, pending: dict[int, tuple[np.ndarray, Blob | None]]) -> None:
        """Write the frames ``take_pending`` handed over and flush the file; releases the write lock. If it fails, the frames go
        back to the queue and every later ``flush`` raises the error, as a StoreError (whatever was raised: this one too): a
        flush must never report durable what this write lost."""
        try:
            with self._guard("flush"):
                self._write(pending)
                self._f.flush()
        except BaseException as err:
            for slot, queued in pending.items():
                self._pending.setdefault(slot, queued)  # back in the queue (a frame queued since for that slot is newer)
            self._failed = err if isinstance(err, StoreError) else StoreError(f"{self.path.name}: flush failed ({err})")
            if isinstance(err, Exception) and err is not self._failed:
                raise self._failed from err
            raise
        finally:
            self._io.release()

    def _write_pending(self) -> None:
        self._write(self._pending)
        self._pending.clear()

    def _write(self, pending: dict[int, tuple[np.ndarray, Blob | None]]) -> None:
        if not pending:
            return
        plan = self._chunks.plan(pending)
        write_chunks(self._ds("patterns"), plan.direct)
        self._rows.write(pending, plan.filtered)  # before the flags: a row marked received is in the file
        for start, stop, _ in runs(np.fromiter(pending, dtype=np.int64, count=len(pending))):
            write_rows(self._ds("received"), start, np.ones(stop - start, np.uint8))
        self._chunks.commit(plan)

    def write_reconstruction(self, index: int, rec: StoredReconstruction) -> None:
        with self._guard("write reconstruction"):
            g = self._f["reconstructions"].require_group(f"chunk_{index:04d}")
            if "phase" in g:
                del g["phase"]
            ds = g.create_dataset("phase", data=rec.potential.astype(np.float32))
            ds.attrs["pixel_nm"] = rec.pixel_nm
            ds.attrs["origin_nm"] = np.asarray(rec.origin_nm, np.float64)
            ds.attrs["batch_id"] = rec.batch_id
            ds.attrs["n_positions"] = rec.n_positions
            ds.attrs["loss_history"] = np.asarray(rec.loss_history, np.float64)
            ds.attrs["policy_version"] = rec.policy_version
            self._f.flush()

    def set_detector_mask(self, flags: np.ndarray) -> None:
        """Record the invalid-pixel flags (K, K) uint8 as ``detector_mask`` (replacing earlier ones); durable at the next flush."""
        with self._guard("record the detector mask"):
            ds = self._f.get(DETECTOR_MASK)
            if ds is None:
                ds = self._f.create_dataset(DETECTOR_MASK, data=np.asarray(flags, np.uint8))
                ds.attrs["description"] = "nonzero: not a measurement; 1 masked in the detector's pixel mask, 2 read the pixel type's largest count"
            else:
                ds[...] = np.asarray(flags, np.uint8)

    def set_probe(self, report: dict) -> None:
        """Record the probe retrieval's outcome (the ``probe`` attribute, JSON; a restart reads it back)."""
        with self._guard("record the probe"):
            self._f.attrs["probe"] = json.dumps(report)
            self._f.flush()

    def set_state(self, state: str, error: str | None = None) -> None:
        if self._state_written == (state, error or ""):
            return  # called at every publish; an attribute write + flush is ~0.2 ms under the manager's lock
        with self._guard("set state"):
            self._f.attrs["state"] = str(state)
            self._f.attrs["error"] = error or ""
            self._f.flush()
        self._state_written = (state, error or "")

    @property
    def pending_frames(self) -> int:
        """Frames queued by ``write_frame`` and not yet handed to a write (``flush``, ``take_pending``)."""
        return len(self._pending)

    @property
    def held_frames(self) -> int:
        """Detector blobs kept for chunks written before they were full (``service.pattern_chunks``)."""
        return self._chunks.held_frames

    def flush(self) -> None:
        """Write the queued frames and flush the file to disk."""
        with self._io, self._guard("flush"):
            if self._failed is not None:
                raise self._failed
            self._write_pending()
            self._f.flush()

    def close(self) -> None:
        """Write what is queued and close; never raises (a failed write, e.g. a full disk, is logged: shutdown must go on)."""
        with self._io:
            try:
                self._write_pending()
                self._f.flush()
            except Exception as err:  # h5py raises OSError, ValueError or RuntimeError here
                log.error("%s: could not write its last frames at close (%s)", self.path, err)
            try:
                self._f.close()
            except Exception as err:
                log.error("%s: could not close (%s)", self.path, err)


class _Guard:
    """Turns h5py/OS errors into ``StoreError`` naming the file and the operation."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what

    def __enter__(self):
        return self

    def __exit__(self, typ, err, tb):
        if err is not None and isinstance(err, OSError | ValueError | RuntimeError | KeyError) and not isinstance(err, StoreError):
            raise StoreError(f"{self.path.name}: {self.what} failed ({error_text(err, self.path)})") from None
        return False


def session_files(storage: Path) -> list[Path]:
    """Session files in ``storage`` (sorted by name; not the converged reconstructions beside them)."""
    return sorted(p for p in Path(storage).glob(f"*{SESSION_SUFFIX}") if not p.name.startswith(".") and not is_converged_file(p))


def storage_writable(storage: Path) -> str | None:
    """None if a file can be created and written in ``storage``, else the reason."""
    probe = Path(storage) / ".ptychoscan-write-probe"
    try:
        Path(storage).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        return f"the storage folder is not writable ({err.strerror or error_text(err, Path(storage))})"
    return None
