"""Session memory made resident before its frames arrive, off the ingest thread.

A session's frame memory is allocated for its whole budget at once and costs nothing
until written (``Session.add_batch``): the first write of each page faults it in. On
these VMs that first touch costs as much as decoding the frame (bench/RESULTS.md,
issue 19: ~20 us of a 64x64 float32 row against ~3.5 us for a row already resident),
and it fell on the ingest thread, under the manager's lock.

``Prefaulter`` takes the rows of each newly issued batch and, on its own thread, asks
the kernel to back them now with ``madvise(MADV_POPULATE_WRITE)`` (Linux >= 5.14): the
pages are faulted in writable *without* touching their contents, so a frame stored
meanwhile by the ingest is never overwritten, and the call runs without the GIL (ctypes
releases it). A batch is issued before its scan starts, so the rows are usually
resident when its frames come. Where the call is not available (another OS, an older
kernel) nothing is done and the first write faults the pages in as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import queue
import sys
import threading

import numpy as np

log = logging.getLogger(__name__)

MADV_POPULATE_WRITE = 23
"""Linux's advice number (include/uapi/asm-generic/mman-common.h), not in Python's mmap module before 3.12's list."""
PAGE = mmap.PAGESIZE


def _madvise():
    """libc's madvise as a ctypes function (GIL released while it runs), or None off Linux."""
    if sys.platform != "linux":
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


TRANSIENT_ERRNOS = frozenset({errno.ENOMEM, errno.EAGAIN, errno.EINTR})
"""madvise failures of the moment (memory pressure in a cgroup, a signal): this request fails, later ones are tried."""


def populate_rows(array: np.ndarray, lo: int, hi: int, madvise=None) -> bool:
    """Back rows ``lo:hi`` of the C-contiguous ``array`` with memory now, contents untouched; False if the kernel cannot
    (OSError for a failure of the moment, ``TRANSIENT_ERRNOS``).

    Only whole pages inside the rows are advised (a page shared with a neighbouring row
    faults in on its first write, as before).
    """
    madvise = madvise if madvise is not None else _MADVISE
    if madvise is None or not array.flags.c_contiguous or hi <= lo:
        return False
    row = array[0].nbytes if array.ndim > 1 else array.itemsize
    start = array.ctypes.data + lo * row
    stop = array.ctypes.data + hi * row
    first, last = -(-start // PAGE) * PAGE, stop // PAGE * PAGE
    if last <= first:
        return True
    if madvise(first, last - first, MADV_POPULATE_WRITE) == 0:
        return True
    code = ctypes.get_errno()
    if code in TRANSIENT_ERRNOS:
        raise OSError(code, f"madvise(MADV_POPULATE_WRITE): {os.strerror(code)}")
    return False


_MADVISE = _madvise()


class Prefaulter:
    """One daemon thread that populates the rows handed to ``request``, in order; ``stop`` ends it."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.populated = 0
        """rows made resident so far."""
        self.unsupported = False
        """the kernel cannot (e.g. before Linux 5.14): later requests are dropped."""
        self.failed = 0
        """requests that failed for the moment (e.g. ENOMEM): later ones are still tried."""

    def request(self, array: np.ndarray, lo: int, hi: int) -> None:
        """Populate rows ``lo:hi`` of ``array`` soon (never blocks; safe with the manager's lock held)."""
        if self.unsupported or _MADVISE is None or hi <= lo:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="session-memory-prefault", daemon=True)
                self._thread.start()
        self._queue.put((array, lo, hi))

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(5)

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Block until every request so far is done (tests, benchmarks); False on timeout."""
        done = threading.Event()
        if self._thread is None:
            return True
        self._queue.put(done)
        return done.wait(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            array, lo, hi = item
            try:
                ok = populate_rows(array, lo, hi)
            except Exception as err:  # never let a prefault take the service down: the first write faults the rows in anyway
                self.failed += 1
                log.warning("session memory prefault failed (%s); these frames fault their rows in as they come", err)
                continue  # a failure of the moment: the next batch is tried again
            if ok:
                self.populated += hi - lo
            elif not self.unsupported:
                self.unsupported = True
                log.info("madvise(MADV_POPULATE_WRITE) is not available here: session memory is faulted in as frames arrive")
