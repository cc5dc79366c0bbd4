"""Frame rate of the simulated detector: 64x64 uint16 bs16-lz4 frames, CPU, loopback.

Measures the stand-in sending into libertem-dectris's receiver (frames/s from trigger to
the last frame decoded in Python): with its frames computed at the trigger (series
preparation timed), and prepared before it (``SimDetector.prepare``) with the compiled
batch send and with one Python send a frame; the same into our StreamReceiver; and
libertem-dectris's own DectrisSim sender (Rust) replaying the same frames from a dump
file into the same libertem receiver. Prints the ratios stand-in / DectrisSim. Run:

    PYTHONPATH=$PWD /work/main/.venv/bin/python bench/detector_rate.py --frames 20000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import tempfile
import threading
import time

import numpy as np

NOISE = "none"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _drain_libertem(conn, cam, n: int, timeout: float = 120.0) -> int:
    got, buf, deadline = 0, None, time.monotonic() + timeout
    while got < n and time.monotonic() < deadline:
        h = conn.get_next_stack(max_size=256)
        if h is None:
            continue
        k = len(h)
        shape = (k, *reversed(h.get_shape()))
        if buf is None or buf.shape != shape:
            buf = np.empty(shape, dtype=h.get_dtype_string())
        cam.decode_range_into_buffer(h, buf, 0, k)
        cam.done(h)
        got += k
    return got


@contextlib.contextmanager
def _libertem_receiver(uri: str, handle_path: str):
    """libertem-dectris's receiver of 64x64 uint16 frames from ``uri``: (connection, shared-memory client), closed on exit."""
    import libertem_dectris as ld

    conn = ld.DectrisConnection(uri=uri, frame_stack_size=256, handle_path=handle_path, num_slots=4000, bytes_per_frame=64 * 64 * 2)
    cam = ld.CamClient(conn.get_socket_path())
    try:
        yield conn, cam
    finally:
        cam.close()
        conn.close()


def _timed_receive(conn, cam, n: int, send, wait_for_arm: bool = False) -> tuple[float, float]:
    """Start ``send`` on a thread and drain n frames into libertem's receiver; (wall, CPU) seconds from the start."""
    t0, c0 = time.perf_counter(), _cpu()
    threading.Thread(target=send, daemon=True).start()
    if wait_for_arm:
        assert conn.wait_for_arm(timeout=10) is not None
    got = _drain_libertem(conn, cam, n)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    assert got == n, f"libertem received {got} of {n} frames"
    return wall, cpu


def _stand_in(n: int, compiled: bool = True):
    from sim_microscope.detector import SimDetector
    from sim_microscope.frame_source import SyntheticSource

    det = SimDetector(SyntheticSource(64), port=0, noise=NOISE)
    det.config.update(nimages=n, ntrigger=1, trigger_mode="ints", frame_time=0.0)
    if not compiled:
        det._sender = False  # one Python send per frame, as where the compiled loop is unavailable
    return det


def stand_in_into_libertem(n: int, tmp: str, prepared: bool = False, compiled: bool = True) -> tuple[float, float]:
    """``prepared``: the series' frames computed after arm, before the timed trigger (``SimDetector.prepare``)."""
    det = _stand_in(n, compiled)
    try:
        with _libertem_receiver(det.endpoint, os.path.join(tmp, f"a{prepared:d}{compiled:d}")) as (conn, cam):
            conn.start(det.arm(), timeout=10)
            if prepared:
                det.prepare()
            return _timed_receive(conn, cam, n, det.trigger)
    finally:
        det.close()


def stand_in_into_ours(n: int, prepared: bool = False) -> tuple[float, float]:
    from detector_stream.events import Frame, SeriesEnd
    from detector_stream.receiver import StreamReceiver

    det = _stand_in(n)
    done, count = threading.Event(), [0]

    def on_event(_, e):
        if isinstance(e, Frame):
            count[0] += 1
        elif isinstance(e, SeriesEnd):
            done.set()

    with StreamReceiver([det.endpoint], on_event):
        det.arm()
        if prepared:
            det.prepare()
        t0, c0 = time.perf_counter(), _cpu()
        threading.Thread(target=det.trigger, daemon=True).start()
        done.wait(120)
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
    det.close()
    assert count[0] == n, f"received {count[0]} of {n}"
    return wall, cpu


def write_dump(path: str, n: int) -> None:
    """The same 64x64 uint16 bs16-lz4 series as a libertem-dectris dump (each zmq part: i64 LE length + bytes)."""
    from detector_stream.codec import encode_frames
    from detector_stream.messages import image_parts, series_start_parts
    from sim_microscope.detector_config import default_config
    from sim_microscope.frame_source import SyntheticSource, to_counts
    from sim_microscope.libertem_dump import write_dump

    images = to_counts(SyntheticSource(64).patterns(np.zeros((n, 2))), "uint16", 1e4, np.random.default_rng(0), NOISE)
    config = {**default_config(64), "nimages": n, "ntrigger": 1, "trigger_mode": "ints"}
    blobs = encode_frames(images, "bs16-lz4<")
    messages = [series_start_parts(1, config, "basic")]
    messages += [image_parts(1, i, images[i], "bs16-lz4<", 0, 1000, 1000, blob=blobs[i]) for i in range(n)]
    write_dump(path, messages)


def libertem_sim_into_libertem(n: int, tmp: str) -> tuple[float, float]:
    """libertem-dectris's DectrisSim replaying the dump (a Rust sender) into its own receiver."""
    import libertem_dectris as ld

    dump = os.path.join(tmp, "dump.bin")
    write_dump(dump, n)
    sim = ld.DectrisSim("tcp://127.0.0.1", dump, random_port=True)
    with _libertem_receiver(sim.get_uri(), os.path.join(tmp, "b")) as (conn, cam):
        conn.start_passive(timeout=10)
        return _timed_receive(conn, cam, n, lambda: (sim.send_headers(), sim.send_frames(), sim.send_footer()), wait_for_arm=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=20000, help="64x64 frames per run")
    p.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly; not used by the stream)")
    p.add_argument("--noise", choices=["none", "poisson"], default="none", help="stand-in shot noise (poisson: numpy-bound)")
    args = p.parse_args()
    global NOISE
    NOISE = args.noise
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            ("stand-in, frames computed at the trigger -> libertem receiver", *stand_in_into_libertem(args.frames, tmp)),
            ("stand-in, prepared, compiled batch send -> libertem receiver", *stand_in_into_libertem(args.frames, tmp, prepared=True)),
            ("stand-in, prepared, one Python send a frame -> libertem receiver",
             *stand_in_into_libertem(args.frames, tmp, prepared=True, compiled=False)),
            ("stand-in, frames computed at the trigger -> our StreamReceiver", *stand_in_into_ours(args.frames)),
            ("stand-in, prepared, compiled batch send -> our StreamReceiver", *stand_in_into_ours(args.frames, prepared=True)),
            ("libertem DectrisSim (Rust) -> libertem receiver", *libertem_sim_into_libertem(args.frames, tmp)),
        ]
    for name, wall, cpu in rows:
        print(f"{name:66s} {args.frames / wall:9.0f} frames/s  wall {wall:6.2f} s  cpu {cpu:6.2f} s")
    peer = rows[-1][1]
    print(f"ratio stand-in / DectrisSim, same frames, same receiver: computed at the trigger {peer / rows[0][1]:.2f}, "
          f"prepared + compiled send {peer / rows[1][1]:.2f}, prepared + Python send {peer / rows[2][1]:.2f}")


if __name__ == "__main__":
    main()
