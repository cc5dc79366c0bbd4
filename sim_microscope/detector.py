"""Simulated DECTRIS detector: SIMPLON state machine + a ZeroMQ PUSH stream v1 sender, with fault injection.

``SimDetector`` holds the detector config (SIMPLON key names), arms series (sequence
ids count from 1), acquires frames when triggered and streams them from one worker
thread that owns the PUSH socket. Frame i of a series is taken at the scan
controller's i-th probe position (``ScanController``) as it stands when frame i's
trigger comes: a position list (or a parked beam) changed between triggers of one
series moves the frames of the later triggers. Trigger modes: ``ints``
(each trigger command: nimages frames), ``inte`` (each trigger: one frame),
``exts``/``exte`` (external triggers from the scan controller's start command: nimages
frames resp. one frame per trigger). The series ends, and ``dseries_end`` is sent,
right after its last frame (ntrigger for exte/inte, nimages*ntrigger for exts/ints), or
on disarm/cancel/abort.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np
import zmq
from pydantic import BaseModel, Field

from detector_stream.codec import encode_frames
from detector_stream.messages import expected_frames, image_parts, series_end_parts, series_start_parts
from detector_stream.native.build import NativeUnavailable
from detector_stream.native.send import NativeSender
from sim_microscope.detector_config import COMPRESSIONS, check_config_value, default_config
from sim_microscope.frame_source import FrameSource, to_counts
from sim_microscope.scan_controller import DetectorError, ScanController

log = logging.getLogger(__name__)

SEND_BATCH = 256
"""Frames per compiled send call when frames are not paced (frame time 0, no faults)."""


class FaultPlan(BaseModel):
    """Faults injected into the next armed series (or every series with ``persistent``); frame indices in the series."""

    drop_frames: list[int] = Field(default_factory=list, description="frames never sent")
    duplicate_frames: list[int] = Field(default_factory=list, description="frames sent twice")
    corrupt_frames: list[int] = Field(default_factory=list, description="blob bytes flipped, hash kept (md5 mismatch)")
    truncate_frames: list[int] = Field(default_factory=list, description="blob cut in half, size and hash kept")
    stall_at_frame: int | None = Field(None, ge=0, description="pause before sending this frame")
    stall_s: float = Field(0.0, ge=0, le=600, description="length of the pause, s")
    disconnect_at_frame: int | None = Field(None, ge=0, description="close the socket before this frame (no dseries_end)")
    persistent: bool = False


@dataclass
class _Series:
    series: int
    config: dict
    encoding: str
    dtype: str
    total: int
    faults: FaultPlan
    next_frame: int = 0
    triggers: int = 0
    images: np.ndarray | None = None
    blobs: list[bytes] | None = None
    digests: list[str] | None = None
    """md5 (hex) of each of ``blobs``."""
    positions: np.ndarray | None = None
    """(total, 2) nm: where each frame's pattern was computed (where the beam really was at its trigger)."""
    commanded: np.ndarray | None = None
    """(total, 2) nm: where the beam was sent for each frame (the readback; ``positions`` without scan errors)."""
    pixel_mask: np.ndarray | None = None
    """(y, x) the pixel mask as it was at arm (nonzero: masked)."""
    ended: bool = False


def apply_pixel_mask(images: np.ndarray, mask: np.ndarray | None, config: dict) -> np.ndarray:
    """With ``pixel_mask_applied``, masked pixels (nonzero in the mask) read the dtype's largest count, or 0 with ``mask_to_zero``
    (as a DECTRIS detector marks them); ``images`` (N, y, x) is changed in place and returned."""
    if config.get("pixel_mask_applied") and mask is not None and mask.any():
        images[:, mask != 0] = 0 if config.get("mask_to_zero") else np.iinfo(images.dtype).max
    return images


class SimDetector:
    """The detector stand-in. ``endpoint`` is where its PUSH socket listens (``tcp://host:port``)."""

    def __init__(
        self,
        source: FrameSource,
        *,
        host: str = "127.0.0.1",
        port: int = 9999,
        dose: float = 10_000.0,
        seed: int = 0,
        scan: ScanController | None = None,
        sndhwm: int = 100_000,
        noise: str = "poisson",
    ) -> None:
        self.source = source
        self.scan = scan or ScanController()
        self.dose = dose
        self.noise = noise
        self.config = default_config(source.detector_pixels)
        self.stream_config = {"mode": "enabled", "header_detail": "basic", "image_appendix": ""}
        self.state = "idle"
        self.faults = FaultPlan()
        self.sequence_id = 0
        self.frames_sent = 0
        self.pixel_mask = np.zeros((source.detector_pixels, source.detector_pixels), np.uint32)
        """(y, x) DECTRIS pixel mask (nonzero bits: gap, dead, noisy, ...); with ``pixel_mask_applied`` its pixels read
        the largest count (or 0 with ``mask_to_zero``)."""
        self.last_images: np.ndarray | None = None
        """(N, y, x) counts of the latest series, as acquired (before any injected fault)."""
        self._rng = np.random.default_rng(seed)
        self._series: _Series | None = None
        self._lock = threading.RLock()
        self._jobs: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._ctx = zmq.Context()
        self._host, self._sndhwm = host, sndhwm
        self._socket = self._bind(port)
        self.endpoint = self._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self._sender: NativeSender | bool | None = None
        """the compiled batch sender of the worker thread (False: unavailable)."""
        self._worker = threading.Thread(target=self._work, name="sim-detector-stream", daemon=True)
        self._worker.start()

    def _bind(self, port: int) -> zmq.Socket:
        sock = self._ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, self._sndhwm)
        sock.bind(f"tcp://{self._host}:{port if port else '*'}")
        return sock

    # --- configuration -----------------------------------------------------------------

    def set_config(self, key: str, value) -> None:
        """Set a writable config key (SIMPLON names); DetectorError (400) for unknown keys or bad values."""
        with self._lock:
            if self.state not in ("idle", "na"):
                raise DetectorError(f"cannot change {key} while the detector is {self.state}; disarm first")
            self.config[key] = check_config_value(key, value)

    def set_pixel_mask(self, mask: np.ndarray) -> None:
        """Replace the pixel mask ((y, x), the detector's shape); DetectorError (409) unless idle, (400) for a wrong shape."""
        mask = np.asarray(mask, dtype=np.uint32)
        with self._lock:
            if self.state not in ("idle", "na"):
                raise DetectorError(f"cannot change pixel_mask while the detector is {self.state}; disarm first")
            if mask.shape != self.pixel_mask.shape:
                raise DetectorError(f"pixel_mask must have shape {list(self.pixel_mask.shape)}, got {list(mask.shape)}", 400)
            self.pixel_mask = mask.copy()

    def set_stream_config(self, key: str, value) -> None:
        if key == "mode" and value in ("enabled", "disabled"):
            self.stream_config["mode"] = value
        elif key == "header_detail" and value in ("none", "basic", "all"):
            self.stream_config["header_detail"] = value
        elif key == "image_appendix" and isinstance(value, str):
            self.stream_config["image_appendix"] = value  # sent as a fifth part of every image; "" for none
        else:
            raise DetectorError(f"invalid stream config {key}={value!r}", 400)

    def set_faults(self, plan: FaultPlan) -> None:
        self.faults = plan

    @property
    def encoding(self) -> str:
        bits = int(self.config["bit_depth_image"])
        return COMPRESSIONS[self.config["compression"]] or f"bs{bits}-lz4<"

    # --- commands ------------------------------------------------------------------------

    def arm(self) -> int:
        """Start a series: sends the global header; returns the sequence id (the stream's series number)."""
        with self._lock:
            if self.state != "idle":
                raise DetectorError(f"cannot arm while the detector is {self.state}")
            self.sequence_id += 1
            config = dict(self.config)
            faults = self.faults
            if not faults.persistent:
                self.faults = FaultPlan()
            dtype = f"uint{int(config['bit_depth_image'])}"
            mask = self.pixel_mask.copy()
            self._series = _Series(self.sequence_id, config, self.encoding, dtype, expected_frames(config) or 0, faults, pixel_mask=mask)
            self.state = "ready"
            if self.stream_config["mode"] == "enabled":
                header = series_start_parts(self.sequence_id, config, self.stream_config["header_detail"], pixel_mask=mask)
                self._jobs.put(("send", header))
            return self.sequence_id

    def trigger(self, external: bool = False, timeout: float | None = None) -> int:
        """One trigger: acquires nimages (ints/exts) or one (inte/exte) frame(s); returns when they are sent."""
        with self._lock:
            s = self._series
            if self.state != "ready" or s is None:
                raise DetectorError(f"cannot trigger while the detector is {self.state}; arm first")
            mode = s.config["trigger_mode"]
            if external != mode.startswith("ext"):
                who = "the scan controller's start command" if mode.startswith("ext") else "the trigger command"
                raise DetectorError(f"trigger_mode {mode} is triggered by {who}")
            per = 1 if mode.endswith("e") else int(s.config["nimages"])
            frames = np.arange(s.next_frame, min(s.next_frame + per, s.total))
            s.next_frame += len(frames)
            s.triggers += 1
            self.state = "acquire"
            where, sent = self.scan.landed_and_sent(np.arange(s.total))  # the beam as it stands at this trigger
        done = threading.Event()
        self._jobs.put(("acquire", s, frames, where, sent, done))
        per_frame = float(s.config["frame_time"]) + self.scan.settle_time_s
        if not done.wait(timeout if timeout is not None else 60 + 2 * per_frame * len(frames) + s.faults.stall_s):
            raise DetectorError("acquisition did not finish in time (is a receiver connected?)", 504)
        return len(frames)

    def prepare(self, timeout: float = 120.0) -> None:
        """Compute the armed series' frames now, at the beam positions as they stand, so that a trigger only sends them
        (frames whose position moved before their trigger are computed again then). DetectorError (504) after ``timeout`` s:
        the worker is still sending the header of ``arm``, which waits for a receiver."""
        with self._lock:
            s = self._series
            if self.state != "ready" or s is None:
                raise DetectorError(f"cannot prepare while the detector is {self.state}; arm first")
            where, sent = self.scan.landed_and_sent(np.arange(s.total))
        done = threading.Event()
        self._jobs.put(("prepare", s, where, sent, done))
        if not done.wait(timeout):
            raise DetectorError("preparing the series did not finish in time (is a receiver connected to take its header?)", 504)

    def disarm(self) -> None:
        """End the series (dseries_end if it is still open) and return to idle."""
        with self._lock:
            if self._series is not None:
                self._jobs.put(("end", self._series))
            self._series = None
            self.state = "idle"

    cancel = disarm
    abort = disarm

    def initialize(self) -> None:
        self.disarm()
        with self._lock:
            self.config = default_config(self.source.detector_pixels)

    def close(self) -> None:
        """Stop the worker (messages not yet taken by a receiver are dropped) and close the socket."""
        self._stopping.set()
        self._jobs.put(("stop",))
        self._worker.join(10)
        if self._worker.is_alive():  # never close a socket another thread still uses
            log.error("sim detector: stream worker did not stop; socket left open")
            return
        self._socket.close(0)
        self._ctx.term()

    def _send(self, parts: list) -> bool:
        """Send one message, waiting for a receiver (PUSH blocks without one) until close(); False if closing."""
        while True:
            try:
                self._socket.send_multipart(parts, flags=zmq.NOBLOCK)
                return True
            except zmq.Again:
                if self._stopping.is_set():
                    return False
                self._socket.poll(50, zmq.POLLOUT)

    # --- the stream worker -----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job[0] == "stop":
                    return
                if job[0] == "send":
                    self._send(job[1])
                elif job[0] == "end":
                    self._end(job[1])
                elif job[0] == "prepare":
                    try:
                        self._prepare(job[1], job[2], np.arange(0), job[3])
                    finally:
                        job[4].set()
                elif job[0] == "acquire":
                    try:
                        self._acquire(*job[1:5])
                    finally:
                        job[5].set()
            except Exception:
                log.exception("sim detector: stream job %s failed", job[0])

    def _end(self, s: _Series) -> None:
        if s.ended:
            return
        s.ended = True
        if self.stream_config["mode"] == "enabled":
            self._send(series_end_parts(s.series))

    def _prepare(self, s: _Series, where: np.ndarray, frames: np.ndarray, sent: np.ndarray) -> None:
        """Patterns at ``where`` ((total, 2) nm, the scan controller at a trigger): the whole series in one batch at the first trigger, later
        only ``frames`` whose position moved since (parked or re-listed between triggers)."""
        if s.images is None:
            todo = np.arange(s.total)
        else:
            todo = frames[np.any(where[frames] != s.positions[frames], axis=1)]
            if not len(todo):
                return
        images = apply_pixel_mask(to_counts(self.source.patterns(where[todo]), s.dtype, self.dose, self._rng, self.noise), s.pixel_mask, s.config)
        blobs = encode_frames(images, s.encoding)
        digests = [hashlib.md5(b).hexdigest() for b in blobs]  # once per frame computed, not per frame sent
        if s.images is None:
            s.images, s.blobs, s.digests, s.positions, s.commanded = images, list(blobs), digests, where.copy(), sent.copy()
        else:
            s.images[todo] = images
            for j, i in enumerate(todo.tolist()):
                s.blobs[i], s.digests[i] = blobs[j], digests[j]
            s.positions[todo] = where[todo]
            s.commanded[todo] = sent[todo]
        beam_positions = getattr(self.source, "beam_positions", None)
        self.scan.readback = (s.series, s.commanded.copy() if beam_positions is None else beam_positions(s.commanded))
        self.last_images = s.images
        if len(frames):
            self.scan.probe_nm = tuple(sent[frames[-1]])  # the microscope's own idea of where the probe is

    def _acquire(self, s: _Series, frames: np.ndarray, where: np.ndarray, sent: np.ndarray) -> None:
        self._prepare(s, where, frames, sent)
        f = s.faults
        frame_time = float(s.config["frame_time"])
        period = frame_time + self.scan.settle_time_s
        t0 = time.perf_counter()
        wall0 = time.time_ns()
        enabled = self.stream_config["mode"] == "enabled"
        appendix = self.stream_config["image_appendix"].encode() or None
        if period <= 0 and enabled and f == FaultPlan(persistent=f.persistent) and (sender := self._batch_sender()) is not None:
            if not self._send_unpaced(sender, s, frames, wall0, appendix):
                return
            frames = frames[:0]  # all sent
        for k, i in enumerate(frames.tolist()):
            due = t0 + (k + 1) * period
            delay = due - time.perf_counter()
            if delay > 0.0005:
                time.sleep(delay)
            if s.ended:
                return
            if f.stall_at_frame == i:
                time.sleep(f.stall_s)
            if f.disconnect_at_frame == i:
                self._disconnect(s)
                return
            if not enabled or i in f.drop_frames:
                continue
            blob = s.blobs[i]
            start = wall0 + int(k * period * 1e9)
            exposure = int(frame_time * 1e9)
            parts = image_parts(s.series, i, s.images[i], s.encoding, start, start + exposure, exposure, appendix, blob=blob, digest=s.digests[i])
            if i in f.corrupt_frames:
                parts[2] = bytes(b ^ 0x5A for b in blob[:64]) + blob[64:]
            if i in f.truncate_frames:
                parts[2] = blob[: len(blob) // 2]
            if not self._send(parts):
                return
            self.frames_sent += 1
            if i in f.duplicate_frames:
                self._send(parts)
        with self._lock:
            if s.next_frame >= s.total:
                self._end(s)
                if self._series is s:
                    self._series = None
                    self.state = "idle"
            elif self._series is s:
                self.state = "ready"

    def _batch_sender(self) -> NativeSender | None:
        """The compiled batch sender (made on the worker thread at first use); None where it is unavailable."""
        if self._sender is None:
            try:
                self._sender = NativeSender()
            except (NativeUnavailable, OSError, AttributeError) as err:
                log.info("sim detector: frames are sent one by one from Python (%s)", err)
                self._sender = False
        return self._sender or None

    def _send_unpaced(self, sender: NativeSender, s: _Series, frames: np.ndarray, wall0: int, appendix: bytes | None) -> bool:
        """Frame time 0 and no faults: ``frames`` sent in batches by one compiled call each; False if the series ended or closing."""
        for lo in range(0, len(frames), SEND_BATCH):
            if s.ended:
                return False
            batch = [
                image_parts(s.series, i, s.images[i], s.encoding, wall0, wall0, 0, appendix, blob=s.blobs[i], digest=s.digests[i])
                for i in frames[lo : lo + SEND_BATCH].tolist()
            ]
            done = 0
            while True:
                sent = sender.send(self._socket, batch[done:])
                done += sent
                self.frames_sent += sent
                if done == len(batch):
                    break
                if self._stopping.is_set():  # no receiver yet, or its queue is full: wait, unless closing
                    return False
                self._socket.poll(50, zmq.POLLOUT)
        return True

    def _disconnect(self, s: _Series) -> None:
        """Drop the connection mid-series (queued messages discarded, no dseries_end), then listen again."""
        s.ended = True
        self._socket.close(0)
        time.sleep(0.2)
        self._socket = self._bind(self.port)
        with self._lock:
            if self._series is s:
                self._series = None
                self.state = "idle"
