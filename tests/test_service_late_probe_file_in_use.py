"""A probe job that lands after its session ended writes the closed session file (r+) while another thread of the service
may be reading that file (a GET of the finished session's reconstruction or positions, outside the manager's lock): HDF5
refuses to open read-write a file the process has open read-only, so the refined probe was kept in memory only."""

from __future__ import annotations

import json
import threading
import time

import h5py
from fastapi.testclient import TestClient
from service_testing import Pusher, wait_until
from test_service_probe_after_end_restart import end_with_a_refinement_running
from test_service_probe_live import RETRIEVED_DEFOCUS, STEP, FakeProbeJobs, _install, _settings, _status

import service.store as store
import service.store_read as store_read
from service.app import create_app
from service.finished import late_probe_path


def test_a_late_refinement_reaches_the_file_while_a_reader_has_it_open(tmp_path, monkeypatch):
    """The refinement running when the session ends lands while a read of the finished session's latest reconstruction
    (``service.store_read.read_latest_reconstruction``, as GET .../reconstruction does) has the file open: after a restart the
    session must still report the refined probe."""
    fake = FakeProbeJobs()
    _install(monkeypatch, fake)
    inside, release = threading.Event(), threading.Event()
    real = store.StoredReconstruction
    reader: list[threading.Thread] = []

    def slow_reconstruction(*args):  # the reader's file is open while it builds its answer
        if threading.current_thread() in reader:
            inside.set()
            assert release.wait(30)
        return real(*args)

    monkeypatch.setattr(store, "StoredReconstruction", slow_reconstruction)
    pusher = Pusher()
    try:
        with TestClient(create_app(_settings(tmp_path))) as c:
            sid = end_with_a_refinement_running(c, pusher, fake)
            path = tmp_path / f"{sid}.h5"
            reader.append(threading.Thread(target=store_read.read_latest_reconstruction, args=(path,)))
            reader[0].start()
            assert inside.wait(30)
            fake.gate.set()  # the refinement lands while the reader has the file open
            time.sleep(0.5)
            release.set()
            reader[0].join(30)
            before = wait_until(lambda: (p := _status(c, sid)["probe"]).get("refinements") == 1 and p, timeout=60)
            assert before["defocus_nm"] == RETRIEVED_DEFOCUS + STEP
        with h5py.File(path, "r") as f:  # the session file stays as it was when the session ended
            assert json.loads(f.attrs["probe"]).get("refinements", 0) == 0
        stored = json.loads(late_probe_path(path).read_text())
        assert stored.get("refinements") == 1, stored
        with TestClient(create_app(_settings(tmp_path))) as c:
            after = _status(c, sid)["probe"]
        assert (after["defocus_nm"], after.get("refinements")) == (before["defocus_nm"], 1), after
    finally:
        release.set()
        fake.gate.set()
        pusher.close()
