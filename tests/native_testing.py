"""What the compiled receive loop's tests share: skipping where it cannot be built, a PUSH/PULL pair over inproc."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import zmq

from detector_stream.native import build
from detector_stream.native.loop import NativeReceiveLoop


def require_native_loop() -> None:
    """Skip the calling test module where the compiled loop cannot be built (no C compiler: the Python path serves), unless
    ``PTYCHOSCAN_REQUIRE_TOOLS=1`` (CI), where that is an error."""
    try:
        NativeReceiveLoop(8)
    except build.NativeUnavailable as err:
        if os.environ.get("PTYCHOSCAN_REQUIRE_TOOLS") == "1":
            raise
        pytest.skip(f"compiled receive loop unavailable: {err}", allow_module_level=True)


@contextmanager
def inproc_pair(name: str) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """(push, pull) connected at ``inproc://name``, no linger and no high-water marks (a test queues all it sends first)."""
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for s in (push, pull):
        s.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, 0)
    pull.setsockopt(zmq.RCVHWM, 0)
    push.bind(f"inproc://{name}")
    pull.connect(f"inproc://{name}")
    try:
        yield push, pull
    finally:
        ctx.destroy(linger=0)
