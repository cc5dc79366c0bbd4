"""``NativeSender``: many prepared multipart messages onto a pyzmq socket in one compiled call (the simulated detector's fast path)."""

from __future__ import annotations

import numpy as np
import zmq

from detector_stream.native.loop import NativeContext


class NativeSender(NativeContext):
    """Sends prepared messages with ``ps_send_batch`` (interpreter lock released); not thread-safe: one per sending thread.

    NativeUnavailable (``detector_stream.native.build``) where the compiled loop cannot be built or its libraries found.
    """

    def send(self, socket: zmq.Socket, messages: list[list[bytes]]) -> int:
        """Send ``messages`` in order until the socket would block (no receiver, queue full): how many went (0..len).

        The parts of a message go together: a message is sent whole or not at all.
        zmq.ZMQError for any other failure.
        """
        if not messages:
            return 0
        if not all(messages):
            raise ValueError("a message needs at least one part")
        nparts = np.fromiter((len(m) for m in messages), np.int64, len(messages))
        lens = np.fromiter((memoryview(p).nbytes for m in messages for p in m), np.int64, int(nparts.sum()))  # bytes, whatever the buffer
        buf = b"".join(p for m in messages for p in m)
        n = self.lib.ps_send_batch(self._ctx, socket.underlying, buf, lens.ctypes.data, nparts.ctypes.data, len(messages))
        if n < 0:
            raise zmq.ZMQError(-n)
        return n
