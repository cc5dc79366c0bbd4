"""Publish frames that did not come from a DECTRIS detector as a DECTRIS stream v1 detector sends them.

One ZeroMQ PUSH socket, bound (the service connects, as to a DCU on port 9999). Each
``publish`` is one series: the global header (``dheader-1.0`` + the detector config
JSON, header detail ``basic``), one four-part ``dimage-1.0`` message per frame (frame
numbers from 0, bitshuffle-LZ4 blobs), then ``dseries_end-1.0`` — the messages the
simulated detector (``sim_microscope.detector``) sends, built by the same codec
(``detector_stream.messages``). Series numbers count from ``first_series``.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from detector_stream.codec import encode_frames
from detector_stream.messages import image_parts, series_end_parts, series_start_parts


class PublishError(RuntimeError):
    """No receiver took a message in time; one line."""


def detector_config(k: int, n_frames: int, *, bit_depth: int, frame_time_s: float, description: str) -> dict:
    """The series header's detector config (SIMPLON key names; seconds, pixels) for ``n_frames`` K x K frames, one trigger."""
    return {
        "count_time": frame_time_s,
        "frame_time": frame_time_s,
        "nimages": n_frames,
        "ntrigger": 1,
        "trigger_mode": "ints",
        "bit_depth_image": bit_depth,
        "bit_depth_readout": bit_depth,
        "compression": "bslz4",
        "x_pixels_in_detector": k,
        "y_pixels_in_detector": k,
        "description": description,
    }


class StreamPublisher:
    """A stream v1 sender on ``tcp://host:port`` (port 0: a free one); ``endpoint`` says where, for the session's ``detector_endpoint``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, first_series: int = 1, send_timeout_s: float = 30.0,
                 description: str = "Nion camera via nion_ptychoscan") -> None:
        self._ctx = zmq.Context()
        self._socket = self._ctx.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, 2000)
        self._socket.bind(f"tcp://{host}:{port if port else '*'}")
        bound = self._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.endpoint = bound.replace("//0.0.0.0:", f"//{host}:")
        self.next_series = first_series
        self.send_timeout_s = send_timeout_s
        self.description = description

    def publish(self, images: np.ndarray, *, frame_time_s: float = 0.0) -> int:
        """Send ``images`` (N, K, K) uint8/16/32 as one series; returns its series number. PublishError if no receiver takes it."""
        images = np.asarray(images)
        n, k = images.shape[0], images.shape[-1]
        bits = images.dtype.itemsize * 8
        series = self.next_series
        self.next_series += 1
        config = detector_config(k, n, bit_depth=bits, frame_time_s=frame_time_s, description=self.description)
        encoding = f"bs{bits}-lz4<"
        deadline = time.monotonic() + self.send_timeout_s
        self._send(series_start_parts(series, config, "basic"), deadline)
        blobs = encode_frames(images, encoding) if n else []
        t0 = time.time_ns()
        exposure = int(frame_time_s * 1e9)
        for i in range(n):
            start = t0 + i * exposure
            self._send(image_parts(series, i, images[i], encoding, start, start + exposure, exposure, blob=blobs[i]), deadline)
        self._send(series_end_parts(series), deadline)
        return series

    def _send(self, parts: list[bytes], deadline: float) -> None:
        while True:
            try:
                self._socket.send_multipart(parts, flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                if time.monotonic() > deadline:
                    raise PublishError(f"no receiver took the stream at {self.endpoint} within {self.send_timeout_s:g} s") from None
                self._socket.poll(50, zmq.POLLOUT)

    def close(self) -> None:
        """Close the socket (queued messages get LINGER = 2 s to leave) and the context."""
        self._socket.close()
        self._ctx.term()

    def __enter__(self) -> StreamPublisher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
