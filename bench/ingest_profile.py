"""Where the service's ingest spends its time, per frame: ZeroMQ receive, stream v1 decode, store into the session.

The same 64x64 uint16 bs16-lz4 series as bench/ingest_rate.py goes through each stage
of the ingest path on its own, in this thread, in batches of ``--batch`` messages (the
receiver's drain), and each stage is timed in thread CPU time (``time.thread_time``:
robust against other jobs on this shared machine, unlike wall time) and wall time:

1. ``recv``: ``recv_multipart`` of messages already queued on a loopback PULL socket
   (a PUSH in this process sent them first);
2. ``decode``: ``StreamDecoder.feed_many`` (JSON headers, md5, block checks,
   bitshuffle-LZ4 decompression, events);
   ``decompress only``: ``codec.decode_batch`` of the same blobs, the C part of it;
3. ``store``: ``SessionManager.on_events`` into a told session (slot matching, session
   memory, the file queue); the file write (one flush at the end) is timed on its own;
4. the compiled receive loop (``detector_stream.native``): its drains (receive, md5,
   checks, decompression, in C), ``StreamDecoder(runs=True).feed_native`` of them (``FrameRun`` events, as the service's
   receiver asks for them), and their store.

Prints microseconds per frame for each and the frames/s their sum allows on one core.
Python's garbage collector is off while timing (``--gc`` leaves it on): this bench keeps
every frame's events alive from one stage to the next, which the service does not, and
collections over them cost up to as much as the stage itself here, by chance of when
they fall (the same store stage read 4 or 10 us a frame from run to run).
``--compare`` also runs the decoder and the store with the fast paths off (``StreamDecoder(fast=False)``,
frame-by-frame store, session memory not prefaulted) in the same run. Usage:

    PYTHONPATH=$PWD python bench/ingest_profile.py [--frames 20000] [--batch 512] [--compare] [--compressed]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def series_messages(n: int) -> list[list[bytes]]:
    """The header and n image messages of bench/detector_rate.py's dump (series 1), and its end."""
    from detector_stream.codec import encode_frames
    from detector_stream.messages import image_parts, series_end_parts, series_start_parts
    from sim_microscope.detector_config import default_config
    from sim_microscope.frame_source import SyntheticSource, to_counts

    images = to_counts(SyntheticSource(64).patterns(np.zeros((n, 2))), "uint16", 1e4, np.random.default_rng(0), "none")
    config = {**default_config(64), "nimages": n, "ntrigger": 1, "trigger_mode": "ints"}
    blobs = encode_frames(images, "bs16-lz4<")
    images_msgs = [image_parts(1, i, images[i], "bs16-lz4<", 0, 1000, 1000, blob=blobs[i]) for i in range(n)]
    return [series_start_parts(1, config, "basic"), *images_msgs, series_end_parts(1)]


COMPRESSED = False
"""``--compressed``: session files with ``compressed_patterns`` on."""


class Timer:
    """Accumulated thread CPU and wall seconds of the timed blocks."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def __enter__(self) -> Timer:
        self._c, self._w = time.thread_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu += time.thread_time() - self._c
        self.wall += time.perf_counter() - self._w


def queued(messages: list[list[bytes]]):
    """(context, PULL socket) with ``messages`` already across loopback in its queue (sent by a PUSH in this process)."""
    import zmq

    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.setsockopt(zmq.SNDHWM, 0)
    pull.setsockopt(zmq.RCVHWM, 0)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    pull.connect(f"tcp://127.0.0.1:{port}")
    time.sleep(0.2)
    for m in messages:
        push.send_multipart(m)
    time.sleep(0.5 + len(messages) * 2e-5)  # all of it across loopback into the PULL's queue
    return ctx, pull


def time_recv(messages: list[list[bytes]], batch: int) -> tuple[Timer, list[list[bytes]]]:
    ctx, pull = queued(messages)
    got, t = [], Timer()
    while len(got) < len(messages):
        with t:
            for _ in range(min(batch, len(messages) - len(got))):
                got.append(pull.recv_multipart(copy=True))
    ctx.destroy(linger=0)
    return t, got


def time_native(messages: list[list[bytes]], batch: int) -> tuple[Timer, Timer, list[list]]:
    """The compiled receive loop over queued messages: (its drains, ``feed_native`` of them, the events per drain)."""

    from detector_stream.codec_threads import set_codec_threads
    from detector_stream.decoder import StreamDecoder
    from detector_stream.native.loop import NativeReceiveLoop

    set_codec_threads(1)  # as the receive thread does
    loop = NativeReceiveLoop(batch)
    loop.fit(64 * 64 * 2)
    ctx, pull = queued(messages)
    decoder, out, got, t_loop, t_feed = StreamDecoder(runs=True), [], 0, Timer(), Timer()  # FrameRuns, as the service's receiver asks
    while got < len(messages):
        with t_loop:
            drained = loop.receive(pull)
        with t_feed:
            out.append(decoder.feed_native(drained))
        got += len(drained)
    ctx.destroy(linger=0)
    return t_loop, t_feed, out


def time_decode(messages: list[list[bytes]], batch: int, fast: bool) -> tuple[Timer, list[list]]:
    from detector_stream.decoder import StreamDecoder

    decoder, out, t = StreamDecoder(fast=fast), [], Timer()
    for i in range(0, len(messages), batch):
        chunk = messages[i : i + batch]
        stamps = [0.0] * len(chunk)
        with t:
            out.append(decoder.feed_many(chunk, stamps))
    return t, out


def time_decompress(messages: list[list[bytes]], batch: int) -> Timer:
    from detector_stream.codec import decode_batch

    blobs = [m[2] for m in messages if len(m) == 4]
    t = Timer()
    for i in range(0, len(blobs), batch):
        with t:
            decode_batch(blobs[i : i + batch], (64, 64), "uint16", "bs16-lz4<")
    return t


def told_manager(storage: Path, n: int, endpoint: str, prefault: bool = True):
    """A session manager (no threads) with one session of budget and chunk n (64x64 frames) told as series 1: (manager, id)."""
    from service_latency import KEY, OverheadOnlyBackend

    from service.manager import SessionManager
    from service.metrics import ServiceMetrics
    from service.scheduler import Scheduler
    from service.settings import ServiceSettings

    settings = ServiceSettings(storage=storage, api_keys=[KEY], max_budget=n, prefault_session_memory=prefault, compressed_patterns=COMPRESSED)
    manager = SessionManager(settings, ServiceMetrics())
    body = {"detector_endpoint": endpoint, "fov_nm": [0.0, 0.0, 2.0, 2.0], "budget": n, "chunk": n, "strategy": "sparse-grid", "detector_pixels": 64, "detector_bit_depth": 16}
    body |= {"detector_pixel_mrad": 1.5, "energy_ev": 6e4, "convergence_mrad": 25.0, "defocus_nm": 0.0}
    sid = manager.create(body)["session_id"]
    Scheduler(manager, OverheadOnlyBackend(), manager.metrics).run_round(manager.take_work(0.1))
    manager.tell(sid, manager.try_ask(sid)["batch_id"], 1, None)
    if manager.prefaulter is not None:
        manager.prefaulter.wait_idle(60)  # the batch was issued before its scan: its memory is resident by then
    return manager, sid


def time_store(batches: list[list], n: int, tmp: str, runs: bool) -> tuple[Timer, Timer]:
    manager, sid = told_manager(Path(tmp), n, "tcp://127.0.0.1:1", prefault=runs)
    if not runs:
        manager._store_run = lambda *_a: False  # the frame-by-frame path
    s = manager.sessions[sid]
    flush, s.flush_frames = s.flush_frames, lambda: None  # the file write is timed on its own (the flusher thread's, mostly)
    t, f = Timer(), Timer()
    for events in batches:
        with t:
            manager.on_events("tcp://127.0.0.1:1", events)
    assert s.frames_received == n, s.frames_received
    with f:
        flush()
    manager.close()
    return t, f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=512, help="messages per drained batch (the receiver's max_batch)")
    ap.add_argument("--compare", action="store_true", help="also time the decoder and the store with their fast paths off")
    ap.add_argument("--compressed", action="store_true", help="session files with compressed_patterns on (the detector's blobs as chunks)")
    ap.add_argument("--gc", action="store_true", help="leave Python's garbage collector on while timing (see the module docstring)")
    args = ap.parse_args()
    global COMPRESSED
    COMPRESSED = args.compressed
    n = args.frames
    messages = series_messages(n)
    if not args.gc:
        gc.collect()
        gc.disable()
    rows = []
    recv, received = time_recv(messages, args.batch)
    rows.append(("recv (pyzmq recv_multipart)", recv))
    variants = [(True, ", fast paths on")] + ([(False, ", fast paths off")] if args.compare else [])
    for fast, label in variants:
        dec, batches = time_decode(received, args.batch, fast)
        with tempfile.TemporaryDirectory() as tmp:
            store, flush = time_store(batches, n, tmp, runs=fast)
        rows += [(f"decode (StreamDecoder{label})", dec), (f"store (on_events{label})", store), (f"  then the file write (flush{label})", flush)]
    rows.append(("  of decode: decompress only (decode_batch)", time_decompress(received, args.batch)))
    loop, feed, native_batches = time_native(messages, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        store, flush = time_store(native_batches, n, tmp, runs=True)
    rows += [
        ("compiled loop: recv + md5 + checks + decompress", loop),
        ("compiled loop: feed_native (order checks, events)", feed),
        ("compiled loop: store (on_events)", store),
        ("  then the file write (flush)", flush),
    ]
    print(f"{n} frames 64x64 uint16 bs16-lz4, batches of {args.batch} messages, one thread, garbage collector {'on' if args.gc else 'off'}")
    print(f"{'stage':44s} {'us/frame cpu':>12s} {'us/frame wall':>13s}")
    for name, t in rows:
        print(f"{name:44s} {t.cpu / n * 1e6:12.2f} {t.wall / n * 1e6:13.2f}")
    for _, label in variants:
        total = sum(t.cpu for name, t in rows if name.startswith("recv") or (name.startswith(("decode", "store")) and name.endswith(f"{label})")))
        print(f"recv + decode + store{label}: {total / n * 1e6:.2f} us/frame cpu -> at most {n / total:.0f} frames/s on one core")
    total = loop.cpu + feed.cpu + store.cpu
    print(f"compiled loop + feed_native + store: {total / n * 1e6:.2f} us/frame cpu -> at most {n / total:.0f} frames/s on one core")


if __name__ == "__main__":
    main()
