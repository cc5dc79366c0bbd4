"""Session memory made resident before frames come (``service.prefault``): contents untouched, pages resident, no harm where unsupported."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import sys
import threading

import numpy as np
import pytest
from service_testing import KEY, RecordingBackend, session_body

from service import prefault
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.prefault import PAGE, Prefaulter, populate_rows
from service.scheduler import Scheduler
from service.settings import ServiceSettings

BEAM = {"energy_ev": 6e4, "convergence_mrad": 25.0, "defocus_nm": 0.0, "detector_pixel_mrad": 1.5}
LINUX = pytest.mark.skipif(sys.platform != "linux" or prefault._MADVISE is None, reason="madvise(MADV_POPULATE_WRITE) is Linux only")


def _resident_pages(array: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """(resident, total) whole pages of rows lo:hi (mincore)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    row = array[0].nbytes
    start = -(-(array.ctypes.data + lo * row) // PAGE) * PAGE
    stop = (array.ctypes.data + hi * row) // PAGE * PAGE
    n = (stop - start) // PAGE
    vec = (ctypes.c_ubyte * n)()
    assert libc.mincore(start, stop - start, vec) == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec), n


def _fresh(rows: int) -> np.ndarray:
    """Rows of 64x64 float32 in an anonymous mapping not touched yet (np.zeros may reuse resident heap)."""
    m = mmap.mmap(-1, rows * 64 * 64 * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)  # 4 KiB pages: residency per page is then what populate did
    return np.frombuffer(m, np.float32).reshape(rows, 64, 64)


@LINUX
def test_populate_makes_the_rows_resident_and_only_them():
    a = _fresh(64)
    assert _resident_pages(a, 0, 64)[0] == 0
    assert populate_rows(a, 8, 40)
    resident, total = _resident_pages(a, 8, 40)
    assert resident == total > 0
    assert _resident_pages(a, 48, 64)[0] == 0


@LINUX
def test_populate_keeps_what_is_written_meanwhile():
    """Frames stored while their rows are being populated stay: the kernel backs pages, it never zeroes written ones."""
    a = _fresh(512)
    stop, started = threading.Event(), threading.Event()

    def writer():
        k = 0
        while not stop.is_set():
            a[k % 512] = k % 512 + 1
            k += 1
            started.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert started.wait(5)
        assert populate_rows(a, 0, 512)
    finally:
        stop.set()
        t.join()
    written = [i for i in range(512) if a[i, 0, 0] != 0]
    assert written
    for i in written:
        assert (a[i] == i + 1).all()


def test_no_kernel_support_leaves_memory_alone():
    a = np.zeros((4, 64, 64), np.float32)
    assert not populate_rows(a, 0, 4, madvise=lambda *_a: -1)
    assert not populate_rows(a[:, ::2], 0, 4, madvise=lambda *_a: 0)  # not contiguous: nothing done
    assert (a == 0).all()


@LINUX
def test_an_issued_batch_is_made_resident(tmp_path):
    """The manager hands each issued batch's rows to its prefaulter (on by default)."""
    manager = SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())
    assert manager.prefaulter is not None
    sid = manager.create(session_body("tcp://127.0.0.1:5001", budget=4000, chunk=2000, detector_pixels=64) | BEAM)["session_id"]
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(manager.take_work(0.1))
    assert manager.prefaulter.wait_idle()
    assert manager.prefaulter.populated == 2000
    s = manager.sessions[sid]
    resident, total = _resident_pages(s.patterns, 0, 2000)
    assert resident == total
    manager.close()


def test_prefault_can_be_turned_off(tmp_path):
    manager = SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY], prefault_session_memory=False), ServiceMetrics())
    assert manager.prefaulter is None
    manager.close()


def test_a_stopped_prefaulter_is_restarted_by_the_next_request():
    p = Prefaulter()
    a = np.zeros((16, 64, 64), np.float32)
    p.request(a, 0, 8)
    assert p.wait_idle()
    p.stop()
    p.request(a, 8, 16)
    assert p.wait_idle()
    assert p.populated == (16 if prefault._MADVISE is not None else 0)
    p.stop()


def _failing_madvise(code):
    def madvise(*_a):
        ctypes.set_errno(code)
        return -1
    return madvise


def test_a_failure_of_the_moment_does_not_turn_prefault_off(monkeypatch):
    """Regression: one madvise failure of any kind (ENOMEM under cgroup memory pressure) marked the kernel unsupported and
    turned prefault off for the life of the service; only a kernel that cannot (EINVAL, ENOSYS) does that now."""
    a = np.zeros((16, 64, 64), np.float32)
    with pytest.raises(OSError, match="POPULATE"):
        populate_rows(a, 0, 16, madvise=_failing_madvise(errno.ENOMEM))
    assert not populate_rows(a, 0, 16, madvise=_failing_madvise(errno.EINVAL))
    calls = []

    def flaky(*args):
        calls.append(args)
        return _failing_madvise(errno.ENOMEM)() if len(calls) == 1 else 0

    monkeypatch.setattr(prefault, "_MADVISE", flaky)
    p = Prefaulter()
    try:
        p.request(a, 0, 8)
        assert p.wait_idle()
        assert p.failed == 1 and not p.unsupported
        p.request(a, 8, 16)
        assert p.wait_idle()
        assert p.populated == 8 and len(calls) == 2
        monkeypatch.setattr(prefault, "_MADVISE", _failing_madvise(errno.EINVAL))
        p.request(a, 0, 8)
        assert p.wait_idle() and p.unsupported
    finally:
        p.stop()
