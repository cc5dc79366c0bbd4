"""``NativeReceiveLoop``: one call of the compiled loop drains a pyzmq socket; ``NativeBatch`` is what it received, in order.

libzmq's functions are looked up through pyzmq's own extension module, so that they are
the copy the socket handles pyzmq gives (``Socket.underlying``) belong to; bitshuffle's ``LZ4_decompress_safe``
and bit untranspose through the bitshuffle extension the codec imports. Where either
cannot be found the loop is unavailable and the Python receive path is used.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

import numpy as np
import zmq

from detector_stream.forwarding import ForwardTarget
from detector_stream.native.batch import REC, NativeBatch
from detector_stream.native.build import ENV_SWITCH, NativeUnavailable, enabled, load_library

log = logging.getLogger(__name__)

ARENA_POOL = 8
"""Arenas a loop keeps for reuse at most (``pool``): a drain decodes into one no frame references any more."""
ARENA_POOL_BYTES = 64 << 20
"""Bytes of arenas a loop keeps at most (at least one arena is kept, whatever its size)."""


def _references(arenas: list[np.ndarray], i: int) -> int:
    """``sys.getrefcount`` of ``arenas[i]``, taken the one way ``_free_arena`` compares it with its sentinel's."""
    return sys.getrefcount(arenas[i])


def refcount_tells_views() -> bool:
    """True if ``_references`` counts one more for an array while a view of it is alive than after, here and now, against an
    array no view holds (a sentinel) read the same way: what the arena pool relies on. An interpreter that counts
    references otherwise (borrowed references in specialised code) turns the pool off rather than risk overwriting frames."""
    arenas, sentinel = [np.empty(8, np.uint8)], [np.empty(8, np.uint8)]
    view = arenas[0][:4]
    held = _references(arenas, 0) > _references(sentinel, 0)
    del view
    return held and _references(arenas, 0) == _references(sentinel, 0)


VIEW_SHARE = 4
"""A drain's frames are views into its arena when they fill at least 1/VIEW_SHARE of it; else they are copied out (a small
drain, a slow stream: the copy is small, and a few frames kept for long must not pin a whole arena each)."""

_ZMQ_FUNCTIONS = ("zmq_msg_init", "zmq_msg_recv", "zmq_msg_data", "zmq_msg_size", "zmq_msg_more", "zmq_msg_close", "zmq_errno")


def _libzmq() -> ctypes.CDLL:
    """pyzmq's libzmq: its symbols looked up through pyzmq's own extension (which links it, or holds it), so that the socket
    handles pyzmq gives (``Socket.underlying``) are that library's; NativeUnavailable where they cannot be found."""
    from zmq.backend.cython import _zmq

    try:
        lib = ctypes.CDLL(_zmq.__file__)
        lib.zmq_msg_recv  # noqa: B018 (a lookup: AttributeError where the extension does not reach libzmq's symbols)
    except (OSError, AttributeError) as err:
        raise NativeUnavailable(f"libzmq's functions are not reachable through pyzmq's extension ({err})") from None
    major, minor, patch = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    lib.zmq_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
    if (major.value, minor.value, patch.value) != zmq.zmq_version_info():
        raise NativeUnavailable(f"the libzmq found ({major.value}.{minor.value}.{patch.value}) is not pyzmq's ({zmq.zmq_version()})")
    return lib


_UNTRANS_STEPS = (("AVX512", "AVX", "AVX512"), ("AVX2", "AVX", "AVX"), ("SSE2", "SSE", "SSE"), ("NEON", "NEON", "NEON"))
"""(bshuf_using_X, suffix of bshuf_trans_byte_bitrow_*, of bshuf_shuffle_bit_eightelem_*): the two steps of
``bshuf_untrans_bit_elem`` for the instruction set bitshuffle was built with, as its own dispatch picks them."""


def _address(lib: ctypes.CDLL, name: str) -> int:
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value


def _bitshuffle_functions() -> list[int | None]:
    """[LZ4_decompress_safe, bshuf_untrans_bit_elem, its byte-bitrow step, its eight-element step] of the bitshuffle extension.

    The two steps are what ``bshuf_untrans_bit_elem`` calls between a malloc and a free of
    its scratch; the loop calls them with a scratch of its own. None for both where they
    are not found (another bitshuffle): the loop then calls ``bshuf_untrans_bit_elem``.
    """
    import bitshuffle.ext

    lib = ctypes.CDLL(bitshuffle.ext.__file__)
    functions = [_address(lib, "LZ4_decompress_safe"), _address(lib, "bshuf_untrans_bit_elem")]
    try:
        isa = next((rows, shuffle) for using, rows, shuffle in _UNTRANS_STEPS if getattr(lib, f"bshuf_using_{using}")())
    except StopIteration:
        isa = ("scal", "scal")
    except AttributeError:
        return [*functions, None, None]
    try:
        return [*functions, _address(lib, f"bshuf_trans_byte_bitrow_{isa[0]}"), _address(lib, f"bshuf_shuffle_bit_eightelem_{isa[1]}")]
    except AttributeError:
        return [*functions, None, None]


def new_context(lib: ctypes.CDLL, untrans_steps: bool = True) -> int:
    """A context of the compiled loop (``ps_new``) with pyzmq's libzmq and bitshuffle's decompression; free it with ``lib.ps_free``.

    ``untrans_steps`` False: bitshuffle's ``bshuf_untrans_bit_elem`` is called as it is (for the tests of that path)."""
    zlib = _libzmq()
    lz4, untrans, rows, shuffle = _bitshuffle_functions()
    pointers = [_address(zlib, name) for name in _ZMQ_FUNCTIONS]
    pointers += [lz4, _address(zlib, "zmq_send"), untrans, *((rows, shuffle) if untrans_steps else (None, None))]
    ctx = lib.ps_new((ctypes.c_void_p * len(pointers))(*pointers))
    if not ctx:
        raise NativeUnavailable("out of memory creating the compiled loop's context")
    return ctx


class NativeContext:
    """Owner of one context of the compiled library (``ps_new``: pyzmq's libzmq, bitshuffle), freed by ``close`` or collection."""

    def __init__(self, untrans_steps: bool = True, avx2_shuffle: bool = True) -> None:
        """NativeUnavailable (with the reason) where the library cannot be built or its libraries found; ``untrans_steps``: as
        ``new_context``'s; ``avx2_shuffle`` False: bitshuffle's own eight-element step for every pixel size (True: shuffle.c's
        AVX2 one for 16-bit pixels, where the CPU has AVX2; for the tests that compare both)."""
        self._ctx = None
        self.lib = load_library()
        self._ctx = new_context(self.lib, untrans_steps)
        self.lib.ps_set_avx2_shuffle(self._ctx, int(avx2_shuffle))

    def uses_avx2_shuffle(self, itemsize: int) -> bool:
        """Whether frames of ``itemsize``-byte pixels are untransposed with shuffle.c's AVX2 eight-element step."""
        return bool(self.lib.ps_avx2_shuffle(self._ctx, itemsize))

    def close(self) -> None:
        if self._ctx:
            self.lib.ps_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        self.close()


class NativeReceiveLoop(NativeContext):
    """The compiled receive loop for one thread's sockets (not thread-safe: a context per receive thread)."""

    def __init__(
        self, max_msgs: int = 512, arena_bytes: int = 4 << 20, forward: ForwardTarget | None = None, keep_blobs: bool = True, untrans_steps: bool = True,
        pool: int = ARENA_POOL, avx2_shuffle: bool = True,
    ) -> None:
        """``arena_bytes``: room for decoded images per drain at first (``fit`` adds more); ``forward``: where every message
        received is re-sent, byte for byte (its socket as it is now); ``keep_blobs``: each decoded frame's compressed blob is
        copied out with it (``Frame.blob``; False: None, for a consumer that stores none). NativeUnavailable (with the reason)
        where the loop cannot be built or its libraries found; ``untrans_steps``: as ``new_context``'s; ``pool``: arenas kept
        for reuse at most (``ARENA_POOL``; and ``ARENA_POOL_BYTES``); ``avx2_shuffle``: as ``NativeContext``'s."""
        super().__init__(untrans_steps, avx2_shuffle)
        self.lib.ps_set_keep_blobs(self._ctx, int(keep_blobs))
        self.forward = forward
        self._forward_socket: zmq.Socket | None = None
        """the socket the C context forwards on (kept referenced: its handle is in the context)."""
        self._take_forward_socket()
        self._forward_counts = np.zeros(2, np.int64)
        self._records = np.zeros((max_msgs, REC), np.int64)
        self._received_at = np.zeros(max_msgs, np.float64)
        self._arena_bytes = arena_bytes
        self._pool_size = pool if refcount_tells_views() else 0
        self._sentinel = [np.empty(0, np.uint8)]
        """an array no view holds, in a list like the pool: what an unreferenced arena's count is compared with, read in
        the same call and the same way (a baseline measured once, in colder code, could be off by one)."""
        self._arenas = [np.empty(arena_bytes, np.uint8)] if self._pool_size else []
        """Where drains decode their images, reused (see ``receive``)."""

    @property
    def max_msgs(self) -> int:
        """Messages one drain takes at most (the size of its record tables)."""
        return len(self._records)

    @property
    def arena_bytes(self) -> int:
        """Bytes of one arena (room for decoded images per drain)."""
        return self._arena_bytes

    @property
    def pooled(self) -> int:
        """How many arenas are kept for reuse."""
        return len(self._arenas)

    def _free_arena(self) -> np.ndarray:
        """A pooled arena no frame references any more, else a new one (pooled while the pool has room)."""
        arenas, unreferenced = self._arenas, _references(self._sentinel, 0)
        for i in range(len(arenas)):
            if _references(arenas, i) <= unreferenced:  # no view of it (a frame, a batch) is alive
                return arenas[i]
        arena = np.empty(self._arena_bytes, np.uint8)
        if len(arenas) < self._pool_size and (len(arenas) + 1) * self._arena_bytes <= max(ARENA_POOL_BYTES, self._arena_bytes):
            arenas.append(arena)
        return arena

    def receive(self, socket: zmq.Socket) -> NativeBatch:
        """Drain up to ``max_msgs`` messages waiting on ``socket`` (no blocking); zmq.ZMQError if the socket fails.

        The images are decoded into an arena no frame references any more (kept ones are
        never written over) and handed out as views into it: no copy, and a reused arena's
        memory is resident already (a fresh one costs a page fault per 4 KiB). The price is
        memory: a frame kept pins its whole arena (``arena_bytes``, 4 MiB at first, up to
        256 MiB after ``fit``). So a drain whose images fill less than 1/VIEW_SHARE of the
        arena (a slow stream) copies them out instead, and a consumer that keeps frames for
        long copies them (``FrameRouter.buffer_frame``); the session store's queue holds its
        frames until the next flush (``flush_interval_s``), which pins busy drains' arenas
        that long: beyond the pool, a drain gets a new arena.
        """
        arena = self._free_arena()
        n = self.lib.ps_recv_batch(
            self._ctx, socket.underlying, len(self._records), self._records.ctypes.data, self._received_at.ctypes.data, arena.ctypes.data, arena.nbytes
        )
        if n < 0:
            raise zmq.ZMQError(-n)
        records = self._records[:n].copy()
        used = self.lib.ps_arena_used(self._ctx)
        decoded = arena[:used] if used * VIEW_SHARE >= arena.nbytes else arena[:used].copy()
        decoded.flags.writeable = False  # frames are shared (a run's stack, the file's queue): a write into one must raise
        nparts = self.lib.ps_nparts(self._ctx)
        part_lens = np.ctypeslib.as_array(ctypes.cast(self.lib.ps_part_lens(self._ctx), ctypes.POINTER(ctypes.c_int64)), (nparts,)).tolist() if nparts else []
        raw_len = self.lib.ps_raw_len(self._ctx)
        raw = ctypes.string_at(self.lib.ps_raw(self._ctx), raw_len) if raw_len else b""
        blobs_len = self.lib.ps_blobs_len(self._ctx)
        blobs = ctypes.string_at(self.lib.ps_blobs(self._ctx), blobs_len) if blobs_len else b""
        return NativeBatch(records, self._received_at[:n].copy(), decoded, raw, part_lens, blobs, self.lib.ps_arena_miss(self._ctx))

    def take(self, socket: zmq.Socket) -> NativeBatch:
        """``receive``, ready to be decoded in any thread: the forward tallies are reported and the arena grows when it was too
        small (both touch this loop's context: call ``take`` from the socket's thread only)."""
        self._take_forward_socket()  # one bound since the loop was made: before this drain's messages
        batch = self.receive(socket)
        if len(batch):
            self.report_forwarded()
            if batch.arena_misses:
                self.fit(batch.arena_misses)
        return batch

    def _take_forward_socket(self) -> None:
        """Forward on the target's socket if it was bound after the loop was made (a socket once taken is kept)."""
        if self.forward is not None and self._forward_socket is None and self.forward.socket is not None:
            self._forward_socket = self.forward.socket
            self.lib.ps_set_forward(self._ctx, self._forward_socket.underlying)

    def report_forwarded(self) -> None:
        """Hand the forward target the loop's tallies since the last report (``counted``: sent, dropped)."""
        if self._forward_socket is not None:
            self.lib.ps_forward_counts(self._ctx, self._forward_counts.ctypes.data)
            self.forward.counted(*self._forward_counts.tolist())

    def fit(self, frame_bytes: int, limit: int = 256 << 20) -> None:
        """Make room for ``max_msgs`` frames of ``frame_bytes`` bytes per drain (up to ``limit`` bytes). Asked only for frames
        that passed their checks, so a message that merely claims a huge shape does not grow it."""
        wanted = min(limit, self.max_msgs * (frame_bytes + 8))
        if wanted > self._arena_bytes:
            self._arena_bytes = wanted
            self._arenas = []  # the smaller ones go as their frames do

    def md5_hex(self, data: bytes) -> str:
        """The loop's own md5 of ``data`` (hex), for checking it against hashlib."""
        out = ctypes.create_string_buffer(32)
        self.lib.ps_md5_hex(self._ctx, data, len(data), out)
        return out.raw.decode()


def choose_loop(
    wanted: bool | None, forwards_raw: bool, max_msgs: int, forward: ForwardTarget | None = None, keep_blobs: bool = True
) -> tuple[NativeReceiveLoop | None, str | None]:
    """The compiled loop for a receive thread and None, or None and why not: ``wanted`` False or, when None,
    ``PTYCHOSCAN_NATIVE_INGEST=0`` (turned off), raw messages
    forwarded (``forwards_raw``: the Python path keeps them whole), or unavailable (logged; raised if ``wanted`` is True).

    ``forward``: every message received is re-sent there by the loop; ``keep_blobs``: as ``NativeReceiveLoop``'s. Build it on the caller's thread, not the receive
    thread: a first build takes a second or so.
    """
    if wanted is False:
        return None, "turned off (native=False)"
    if wanted is None and not enabled():
        return None, f"turned off ({ENV_SWITCH}={os.environ.get(ENV_SWITCH)})"
    if forwards_raw:
        if wanted:
            raise NativeUnavailable("raw messages are forwarded (on_raw): only the Python receive path keeps them whole")
        return None, "raw messages are forwarded (on_raw): the Python receive path keeps them whole"
    try:
        return NativeReceiveLoop(max_msgs, forward=forward, keep_blobs=keep_blobs), None
    except (NativeUnavailable, OSError, AttributeError) as err:
        if wanted:
            raise
        log.warning("stream receiver: the compiled receive loop is not used (%s); the Python path is", err)
        return None, str(err)
