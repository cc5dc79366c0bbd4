"""Helpers for the service tests: a detector-side PUSH sender, a recording reconstruction backend, polling."""

from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from detector_stream.messages import image_parts, series_end_parts, series_start_parts
from ptychoscan.net import free_port
from service.compute import ReconJob, ReconOutput
from service.final_run import PassByPass

KEY = "test-key-123"
AUTH = {"Authorization": f"Apikey {KEY}"}


class Pusher:
    """A detector stand-in: binds PUSH on a random loopback port (or ``port``) and sends stream v1 messages."""

    def __init__(self, port: int | None = None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 1000)
        if port is None:
            port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        else:
            self.sock.bind(f"tcp://127.0.0.1:{port}")
        self.port = port
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def start(self, series: int, n: int, k: int = 16) -> None:
        config = {"ntrigger": n, "nimages": 1, "trigger_mode": "exts", "x_pixels_in_detector": k, "y_pixels_in_detector": k, "bit_depth_image": 16}
        self.sock.send_multipart(series_start_parts(series, config))

    def frame(self, series: int, index: int, image: np.ndarray, encoding: str = "bs16-lz4<") -> None:
        self.sock.send_multipart(image_parts(series, index, image, encoding, 0, 1000, 1000))

    def end(self, series: int) -> None:
        self.sock.send_multipart(series_end_parts(series))

    def raw(self, parts: list[bytes]) -> None:
        self.sock.send_multipart(parts)

    def series(self, series: int, images: np.ndarray, order=None) -> None:
        self.start(series, len(images), images.shape[-1])
        for i in order if order is not None else range(len(images)):
            self.frame(series, i, images[i])
        self.end(series)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def frames_for(series: int, n: int, k: int = 16) -> np.ndarray:
    """(n, k, k) uint16 frames whose content encodes (series, index) so a mix-up is detectable."""
    img = np.zeros((n, k, k), np.uint16)
    for i in range(n):
        img[i] = (series * 1000 + i) % 60000
        img[i, 0, 0] = i
    return img


class RecordingBackend:
    """A reconstruction test double: records every batched call; the 'potential' is a histogram of the positions.

    The histogram makes the warm start and the position hand-over checkable; ``delay_s``
    stands for a slow reconstruction (long-poll tests).
    """

    name = "recording-test-backend"
    final_passes = 1

    def __init__(self, delay_s: float = 0.0, pixel_nm: float = 0.05, keep_jobs: bool = True) -> None:
        self.delay_s = delay_s
        self.keep_jobs = keep_jobs
        """record the jobs (their frame stacks stay alive); a server subprocess does not, so its memory is the service's own."""
        self.pixel_nm = pixel_nm
        self.calls = 0
        self.reduced_updates = 0
        self.call_sizes: list[int] = []
        self.jobs: list[ReconJob] = []
        self.lock = threading.Lock()

    def warmup(self) -> None:
        pass

    def start_final(self, job: ReconJob) -> PassByPass:
        return PassByPass(self, job, self.final_passes)

    def reconstruct(self, jobs: list[ReconJob]) -> list[ReconOutput]:
        with self.lock:
            self.calls += 1
            self.call_sizes.append(len(jobs))
            if self.keep_jobs:
                self.jobs.extend(jobs)
        time.sleep(self.delay_s)
        out = []
        for job in jobs:
            x0, y0, w, h = job.fov_nm
            nx, ny = int(np.ceil(w / self.pixel_nm)) + 1, int(np.ceil(h / self.pixel_nm)) + 1
            hist = np.zeros((ny, nx), np.float32)
            ij = np.clip(((job.positions_nm - [x0, y0]) / self.pixel_nm).astype(int), 0, [nx - 1, ny - 1])
            np.add.at(hist, (ij[:, 1], ij[:, 0]), job.patterns.reshape(len(job.patterns), -1).mean(1))
            out.append(ReconOutput(hist, (x0, y0), self.pixel_nm, [float(len(job.positions_nm))]))
        return out


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def session_body(endpoint: str, **kw) -> dict:
    body = {
        "detector_endpoint": endpoint,
        "fov_nm": [0.0, 0.0, 1.0, 1.0],
        "budget": 12,
        "chunk": 5,
        "strategy": "sparse-grid",
        "detector_pixels": 16,
        "detector_pixel_mrad": 6.0,
    }
    body.update(kw)
    return body


class UvicornThread:
    """The service app on a real uvicorn server in a thread, on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> UvicornThread:
        import httpx

        self.thread.start()

        def up():
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=20.0, what="uvicorn up")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def receive_libertem(conn, cam, n_expected: int, timeout: float = 20.0, max_size: int = 16) -> np.ndarray:
    """Frames (n, k, k) a libertem-dectris connection receives until ``n_expected`` arrived or ``timeout`` (s) passed."""
    stacks, got, deadline = [], 0, time.monotonic() + timeout
    while got < n_expected and time.monotonic() < deadline:
        handle = conn.get_next_stack(max_size=max_size)
        if handle is None:
            continue
        buf = np.zeros((len(handle), *reversed(handle.get_shape())), dtype=handle.get_dtype_string())
        cam.decode_range_into_buffer(handle, buf, 0, len(handle))
        cam.done(handle)
        stacks.append(buf)
        got += len(buf)
    return np.concatenate(stacks) if stacks else np.empty((0,))


def beams_reconstructed(monkeypatch) -> list:
    """The beam of every live reconstruction job the service runs from now on (``TorchReconBackend._run_group`` spied), in order."""
    from service.compute import TorchReconBackend

    beams: list = []
    original = TorchReconBackend._run_group

    def spy(self, jobs, iterations, scopes=None, first_pass=0):
        beams.extend(job.beam for job in jobs)
        return original(self, jobs, iterations, scopes, first_pass)

    monkeypatch.setattr(TorchReconBackend, "_run_group", spy)
    return beams
