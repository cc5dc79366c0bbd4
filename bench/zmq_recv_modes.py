"""How fast pyzmq hands a DECTRIS-shaped 4-part message to Python, by receive call: the floor under the service's ingest.

A PUSH socket on loopback TCP queues ``--frames`` messages shaped like stream-v1 images
(image header JSON, dimension JSON, ``--blob-bytes`` of compressed data, config JSON);
then one PULL socket receives them all, three ways, each timed on its own full queue:

- ``recv_multipart(copy=True)``: one bytes object per part (what the service's receiver does);
- ``recv_multipart(copy=False)``: zmq Frame objects instead of copies;
- ``recv_into``: each part into one preallocated buffer (pyzmq >= 26), ``rcvmore`` read per part.

Prints frames/s (wall, 1 thread) and each way's ratio to ``recv_multipart(copy=True)``. Usage:

    PYTHONPATH=$PWD python bench/zmq_recv_modes.py [--frames 100000] [--blob-bytes 3000]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import zmq


def parts_like_an_image(blob_bytes: int) -> list[bytes]:
    """One stream-v1 image message's four parts (the JSON texts are the size a DCU sends; the data is random bytes)."""
    return [b'{"htype":"dimage-1.0","series":1,"frame":0,"hash":"0123456789abcdef0123456789abcdef"}',
            b'{"htype":"dimage_d-1.0","shape":[64,64],"type":"uint16","encoding":"bs16-lz4<"}',
            os.urandom(blob_bytes),
            b'{"htype":"dconfig-1.0","start_time":0,"stop_time":0,"real_time":0}']


def receive(pull: zmq.Socket, n: int, mode: str) -> None:
    """Receive ``n`` queued messages from ``pull`` the ``mode`` way."""
    if mode == "recv_multipart(copy=True)":
        for _ in range(n):
            pull.recv_multipart(copy=True)
    elif mode == "recv_multipart(copy=False)":
        for _ in range(n):
            pull.recv_multipart(copy=False)
    else:
        view = memoryview(bytearray(1 << 20))
        for _ in range(n):
            offset = 0
            while True:
                offset += pull.recv_into(view[offset:])
                if not pull.rcvmore:
                    break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000, help="messages per way")
    ap.add_argument("--blob-bytes", type=int, default=3000, help="size of the data part (a 64x64 bs16-lz4 frame: ~1-4 kB)")
    args = ap.parse_args()
    ctx = zmq.Context()
    parts = parts_like_an_image(args.blob_bytes)
    rates = {}
    for mode in ("recv_multipart(copy=True)", "recv_multipart(copy=False)", "recv_into"):
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.RCVHWM, 0)
        port = pull.bind_to_random_port("tcp://127.0.0.1")

        def send(port: int = port) -> None:
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 0)
            push.connect(f"tcp://127.0.0.1:{port}")
            for _ in range(args.frames):
                push.send_multipart(parts, copy=True)
            push.close(linger=-1)

        sender = threading.Thread(target=send)
        sender.start()
        sender.join()
        time.sleep(0.5)  # the queue reaches the PULL side before the clock starts
        t0, c0 = time.perf_counter(), time.process_time()
        receive(pull, args.frames, mode)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rates[mode] = args.frames / wall
        print(f"{mode:28s} {rates[mode]:9.0f} frames/s  {wall / args.frames * 1e6:6.1f} us/frame wall, {cpu / args.frames * 1e6:6.1f} us CPU")
        pull.close(0)
    ctx.term()
    base = rates["recv_multipart(copy=True)"]
    for mode, rate in rates.items():
        print(f"ratio {mode} / recv_multipart(copy=True): {rate / base:.2f}")


if __name__ == "__main__":
    main()
