"""The flusher writes a session's frames outside the manager's lock: ingest goes on meanwhile, nothing is lost or reordered."""

from __future__ import annotations

import threading
import time

import h5py
import numpy as np
from service_testing import KEY, RecordingBackend, frames_for, session_body

from detector_stream.events import Frame
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.scheduler import Scheduler
from service.settings import ServiceSettings

EP = "tcp://127.0.0.1:5001"


def _told(tmp_path, n: int) -> tuple[SessionManager, str]:
    manager = SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())
    sid = manager.create(session_body(EP, budget=n, chunk=n) | {"energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0})["session_id"]
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(manager.take_work(0.1))
    manager.tell(sid, manager.try_ask(sid)["batch_id"], 1, None)
    return manager, sid


def _flusher_held_in_its_first_write(manager: SessionManager, s) -> tuple[threading.Event, list[list[int]], threading.Thread]:
    """Start ``flush_all`` on a thread and hold it inside its first file write of ``s`` until the event returned is set;
    the list gets the slots of each write, in order."""
    writing, release = threading.Event(), threading.Event()
    write = s.store._write
    order: list[list[int]] = []

    def slow_write(pending):
        order.append(sorted(pending))
        if len(order) == 1:
            writing.set()
            release.wait(10)
        write(pending)

    s.store._write = slow_write
    flusher = threading.Thread(target=manager.flush_all)
    flusher.start()
    assert writing.wait(10)
    return release, order, flusher


def test_frames_are_stored_while_the_flusher_writes_the_file(tmp_path):
    manager, sid = _told(tmp_path, 8)
    s = manager.sessions[sid]
    images = frames_for(1, 8)
    manager.on_events(EP, [Frame(1, i, images[i]) for i in range(4)])
    release, _, flusher = _flusher_held_in_its_first_write(manager, s)
    t0 = time.perf_counter()
    manager.on_events(EP, [Frame(1, i, images[i]) for i in range(4, 7)])  # the manager's lock is free: stored at once
    assert time.perf_counter() - t0 < 2 and s.frames_received == 7 and s.frames_persisted == 0
    release.set()
    flusher.join(10)
    assert s.frames_persisted == 4  # what it took; the three since are queued for the next flush
    manager.on_events(EP, [Frame(1, 7, images[7])])  # completes the batch: its flush makes all 8 durable
    assert s.frames_persisted == 8
    with h5py.File(s.store.path, "r") as f:
        np.testing.assert_array_equal(f["patterns"][:8], images)
        assert f["received"][:8].tolist() == [1] * 8
    manager.close()


def test_a_flush_under_the_lock_waits_for_the_write_in_flight(tmp_path):
    """A batch completing while the flusher writes: its flush returns only once the earlier frames are in the file too."""
    manager, sid = _told(tmp_path, 4)
    s = manager.sessions[sid]
    images = frames_for(2, 4)
    manager.on_events(EP, [Frame(1, i, images[i]) for i in range(3)])
    release, order, flusher = _flusher_held_in_its_first_write(manager, s)
    threading.Timer(0.3, release.set).start()
    t0 = time.perf_counter()
    manager.on_events(EP, [Frame(1, 3, images[3])])  # batch complete: flush under the lock
    assert time.perf_counter() - t0 >= 0.25  # it waited for the write in flight
    flusher.join(10)
    assert order == [[0, 1, 2], [3]] and s.frames_persisted == 4
    with h5py.File(s.store.path, "r") as f:
        np.testing.assert_array_equal(f["patterns"][:4], images)
    manager.close()


def _flusher_failing_in_its_write(manager: SessionManager, s) -> tuple[threading.Event, threading.Thread]:
    """Start ``flush_all`` on a thread whose write of ``s`` fails (a full disk) once the event returned is set; later writes
    succeed (the disk has room again)."""
    writing, release = threading.Event(), threading.Event()
    write = s.store._write

    def failing_write(pending):
        if writing.is_set():
            return write(pending)
        writing.set()
        release.wait(10)
        raise OSError(28, "No space left on device")

    s.store._write = failing_write
    flusher = threading.Thread(target=manager.flush_all)
    flusher.start()
    assert writing.wait(10)
    return release, flusher


def test_a_batch_completing_while_the_outside_write_fails_is_not_called_durable(tmp_path):
    """Regression: the frames a failed outside write took were dropped, and a flush under the lock that waited for it
    then wrote the rest and reported every frame persisted."""
    manager, sid = _told(tmp_path, 4)
    s = manager.sessions[sid]
    images = frames_for(3, 4)
    manager.on_events(EP, [Frame(1, i, images[i]) for i in range(3)])
    release, flusher = _flusher_failing_in_its_write(manager, s)
    threading.Timer(0.3, release.set).start()
    manager.on_events(EP, [Frame(1, 3, images[3])])  # batch complete: its flush waits for the failing write, then refuses
    flusher.join(10)
    assert str(s.state) == "failed" and "No space" in (s.error or "")
    assert s.frames_persisted < 4
    manager.close()
    with h5py.File(s.store.path, "r") as f:  # the three taken went back to the queue: written at close, once the disk had room
        assert f["received"][:4].tolist() == [1, 1, 1, 1]
        np.testing.assert_array_equal(f["patterns"][:4], images)


def test_a_session_stopped_while_the_outside_write_fails_says_why(tmp_path):
    """Regression: a stop during a failing outside write reported the session stopped with no error, its frames missing."""
    manager, sid = _told(tmp_path, 4)
    s = manager.sessions[sid]
    images = frames_for(4, 4)
    manager.on_events(EP, [Frame(1, i, images[i]) for i in range(3)])
    release, flusher = _flusher_failing_in_its_write(manager, s)
    threading.Timer(0.3, release.set).start()
    status = manager.delete(sid)  # the client stops it: its final flush waits for the failing write, then says why
    flusher.join(10)
    assert status["state"] == "stopped" and "No space" in (status.get("error") or "")
    manager.close()
