"""The adaptive session driver: the reference control loop with Nion's instrumentation as the microscope.

Create a session on the service (its ``detector_endpoint`` is this driver's stream
publisher), then per chunk: ask for positions, acquire them in spot mode through Nion's
API (``SpotScanner``), bin each camera frame to K x K counts, publish them as one stream
v1 series, tell the service that series holds the batch (with the positions Nion reported
as the measured positions), until ``ask`` says done. ``stop()`` (any thread) ends the run
after the current chunk and deletes the session.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from nion_ptychoscan.counts import to_counts
from nion_ptychoscan.service_client import ServiceClient
from nion_ptychoscan.spot_acquisition import SpotScanner
from nion_ptychoscan.stream_publisher import StreamPublisher
from nion_ptychoscan.usim_stack import NionHardware
from ptychoscan.client import AskResponse


class DriverConfig(BaseModel):
    """One adaptive acquisition from Nion. Lengths nm, angles mrad, energy eV, times s unless the name says ms."""

    service: str = Field(..., description="service base URL, e.g. http://127.0.0.1:8000")
    api_key: str = Field(..., min_length=1)
    fov_nm: tuple[float, float, float, float] = (0.0, 0.0, 2.0, 2.0)
    budget: int = Field(250, ge=1)
    chunk: int = Field(50, ge=1)
    strategy: str = "adaptive"
    energy_ev: float = 60_000.0
    convergence_mrad: float = 33.0
    defocus_nm: float = 0.0
    detector_pixels: int = Field(64, ge=4, description="K: each camera frame is summed over equal blocks to K x K")
    detector_pixel_mrad: float | None = Field(None, gt=0, description="None: from the camera frame's calibration (rad) x the block")
    bit_depth: Literal[16, 32] = Field(32, description="bits per pixel of the published frames (counts past the type's range are clipped)")
    exposure_ms: float = Field(1.0, gt=0, description="camera exposure per position, ms")
    camera_binning: int = Field(8, ge=1, description="Nion's camera binning (usim: 1, 2, 4, 8)")
    scan_margin: float = Field(0.0, ge=0, description="Nion's scan field is the session field's larger side times (1 + margin)")
    stream_host: str = "127.0.0.1"
    stream_port: int = Field(0, ge=0, le=65535, description="0: a free port")
    ask_timeout_s: float = Field(30.0, gt=0)
    total_timeout_s: float = Field(3600.0, gt=0)
    max_idle_asks: int = Field(3, ge=1)


@dataclass
class ChunkRecord:
    """What one chunk did: the batch, its series, the positions asked and those Nion reported, and where the time went."""

    batch_id: int
    series: int
    positions_nm: np.ndarray
    """(N, 2) positions the service asked for, nm."""
    reported_nm: np.ndarray
    """(N, 2) positions Nion reported for each frame, nm (told as measured)."""
    nion_seconds: float
    """spent in Nion's API (probe moves, frame grabs, readbacks), s."""
    total_seconds: float
    """the whole chunk: ask, acquire, publish, tell, s."""
    counts: np.ndarray | None = None
    """(N, K, K) the frames as published (only with ``keep_frames``)."""


@dataclass
class DriverResult:
    session_id: str
    endpoint: str
    chunks: list[ChunkRecord] = field(default_factory=list)
    stopped: bool = False

    @property
    def frames(self) -> int:
        return sum(len(c.positions_nm) for c in self.chunks)


class AdaptiveSessionDriver:
    """Runs one session on ``hardware``; ``on_chunk(record, session_id)`` is called after each tell (the plug-in's display hook)."""

    def __init__(self, config: DriverConfig, hardware: NionHardware, *, keep_frames: bool = False,
                 on_chunk: Callable[[ChunkRecord, str], None] | None = None, say: Callable[[str], None] = lambda line: None) -> None:
        self.config = config
        self.hardware = hardware
        self.keep_frames = keep_frames
        self.on_chunk = on_chunk
        self.say = say
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask the running driver to end after its current chunk (and delete the session)."""
        self._stop.set()

    def run(self) -> DriverResult:
        """Run the session to done (or to ``stop()``); ServiceError, PublishError, AcquisitionError on a refused step."""
        c = self.config
        scanner = SpotScanner(self.hardware, c.fov_nm, exposure_ms=c.exposure_ms, binning=c.camera_binning, margin=c.scan_margin)
        client = ServiceClient(c.service, c.api_key, ask_timeout_s=c.ask_timeout_s)
        publisher = StreamPublisher(c.stream_host, c.stream_port)
        try:
            scanner.prepare()
            pixel_mrad = c.detector_pixel_mrad or self._calibrated_pixel_mrad(scanner)
            session = client.create_session(self._session_body(publisher.endpoint, pixel_mrad))
            self.say(f"session {session}: detector stream {publisher.endpoint}, {pixel_mrad:.4g} mrad per pixel")
            result = DriverResult(session, publisher.endpoint)
            deadline = time.monotonic() + c.total_timeout_s
            while not self._stop.is_set():
                t0 = time.perf_counter()
                batch = client.ask(session, deadline=deadline, max_idle_asks=c.max_idle_asks, say=self.say)
                if batch.done:
                    break
                record = self._chunk(batch, scanner, publisher, client, session, t0)
                result.chunks.append(record)
                self.say(f"batch {record.batch_id}: {len(record.positions_nm)} positions, series {record.series}, "
                         f"{record.nion_seconds:.3f} s in Nion's API of {record.total_seconds:.3f} s")
                if self.on_chunk is not None:
                    self.on_chunk(record, session)
            if self._stop.is_set():
                result.stopped = True
                client.delete(session)
            return result
        finally:
            scanner.close()
            publisher.close()
            client.close()

    def _chunk(self, batch: AskResponse, scanner: SpotScanner, publisher: StreamPublisher, client: ServiceClient, session: str, t0: float) -> ChunkRecord:
        positions = np.asarray(batch.positions_nm, dtype=np.float64).reshape(-1, 2)
        spots = scanner.acquire(positions)
        dtype = f"uint{self.config.bit_depth}"
        counts = np.stack([to_counts(f, self.config.detector_pixels, dtype) for f in spots.frames])
        series = publisher.publish(counts, frame_time_s=self.config.exposure_ms / 1000)
        client.tell(session, int(batch.batch_id), series, spots.positions_nm.tolist())
        return ChunkRecord(int(batch.batch_id), series, positions, spots.positions_nm, spots.nion_seconds,
                           time.perf_counter() - t0, counts if self.keep_frames else None)

    def _calibrated_pixel_mrad(self, scanner: SpotScanner) -> float:
        """The published pixel in mrad: Nion's camera calibration (rad per pixel at its binning) x the block summed into a pixel."""
        block = scanner.frame_shape[0] / self.config.detector_pixels
        mrad = scanner.pixel_rad * block * 1000
        if not (math.isfinite(mrad) and mrad > 0):
            raise ValueError("the camera's frames carry no angle calibration: set detector_pixel_mrad")
        return mrad

    def _session_body(self, endpoint: str, pixel_mrad: float) -> dict:
        c = self.config
        return {
            "detector_endpoint": endpoint,
            "fov_nm": list(c.fov_nm),
            "budget": c.budget,
            "chunk": c.chunk,
            "strategy": c.strategy,
            "energy_ev": c.energy_ev,
            "convergence_mrad": c.convergence_mrad,
            "detector_pixels": c.detector_pixels,
            "detector_pixel_mrad": pixel_mrad,
            "defocus_nm": c.defocus_nm,
            "detector_bit_depth": c.bit_depth,
        }
