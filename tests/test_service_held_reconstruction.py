"""A round issues every session's next batch before it writes their reconstructions; a crash in between loses nothing."""

from __future__ import annotations

import h5py
from service_testing import KEY, RecordingBackend, frames_for, session_body

from detector_stream.events import Frame
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.models import SessionCreate
from service.scheduler import Scheduler
from service.settings import ServiceSettings
from service.store import SessionStore

EPS = ["tcp://127.0.0.1:5021", "tcp://127.0.0.1:5022"]


def _manager(tmp_path) -> SessionManager:
    return SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())


def _first_batches_acquired(manager: SessionManager, endpoints: list[str]) -> list[str]:
    """Sessions of two 20-position batches (one per endpoint) whose first batch is issued, told and complete."""
    body = {ep: SessionCreate(**session_body(ep, budget=40, chunk=20)).model_dump(mode="json") for ep in endpoints}
    sids = [manager.create(body[ep])["session_id"] for ep in endpoints]
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(manager.take_work(0.1))
    for series, (sid, ep) in enumerate(zip(sids, endpoints, strict=True), start=3):
        _batch_acquired(manager, sid, ep, 0, series)
        assert manager.sessions[sid].batches[0].status == "complete"
    return sids


def _batch_acquired(manager: SessionManager, sid: str, endpoint: str, batch_id: int, series: int) -> None:
    """Batch ``batch_id`` (20 positions) of ``sid`` told as ``series`` and its 20 frames received from ``endpoint``."""
    assert manager.tell(sid, batch_id, series, None)[0] == 202
    manager.on_events(endpoint, [Frame(series, i, img) for i, img in enumerate(frames_for(series, 20))])


def _publish_raising_for(manager: SessionManager, monkeypatch, session_id: str, before=None):
    """Make ``manager.publish`` raise a defect for ``session_id`` (after calling ``before()``, if given); returns the real one."""
    publish = manager.publish

    def flaky(item, *args, **kwargs):
        if item.session_id == session_id:
            if before is not None:
                before()
            raise RuntimeError("a defect")
        return publish(item, *args, **kwargs)

    monkeypatch.setattr(manager, "publish", flaky)
    return publish


def test_a_round_issues_every_next_batch_before_writing_a_reconstruction(tmp_path, monkeypatch):
    manager = _manager(tmp_path)
    sids = _first_batches_acquired(manager, EPS)
    writes = []
    for name in ("append_batch", "write_reconstruction"):
        original = getattr(SessionStore, name)

        def spy(self, *args, _name=name, _original=original):
            writes.append((_name, self.path.stem))
            return _original(self, *args)

        monkeypatch.setattr(SessionStore, name, spy)
    items = manager.take_work(0.1)
    assert sorted(it.session_id for it in items) == sorted(sids)
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(items)
    order = [it.session_id for it in items]
    assert writes == [("append_batch", sid) for sid in order] + [("write_reconstruction", sid) for sid in order]
    for sid in sids:
        s = manager.sessions[sid]
        assert s.held_reconstruction is None and len(s.batches) == 2 and s.batches[0].status == "reconstructed"
    manager.close()


def test_a_crash_between_the_next_batch_and_the_held_reconstruction_reconstructs_again_and_plans_nothing_twice(tmp_path, monkeypatch):
    m1 = _manager(tmp_path)
    (sid,) = _first_batches_acquired(m1, EPS[:1])
    monkeypatch.setattr(m1, "write_held", lambda session_id: None)  # "kill -9" before the round wrote the reconstruction
    Scheduler(m1, RecordingBackend(), m1.metrics).run_round(m1.take_work(0.1))
    issued = m1.try_ask(sid)
    assert issued["batch_id"] == 1
    m2 = _manager(tmp_path)
    assert m2.restore() == 1
    s = m2.sessions[sid]
    assert [b.status for b in s.batches] == ["complete", "issued"] and s.n_reconstructed == 0
    (item,) = m2.take_work(0.1)
    assert item.batch_id == 0 and item.job is not None and item.plan is None, "batch 1 is already issued: nothing to plan"
    Scheduler(m2, RecordingBackend(), m2.metrics).run_round([item])
    assert len(s.batches) == 2 and s.batches[0].status == "reconstructed" and s.n_reconstructed == 1
    assert s.state == "acquiring" and m2.try_ask(sid) == issued, "the microscope gets the batch it may already hold"
    assert m2.tell(sid, 1, 7, None)[0] == 202
    m2.on_events(EPS[0], [Frame(7, i, img) for i, img in enumerate(frames_for(7, 20))])
    Scheduler(m2, RecordingBackend(), m2.metrics).run_round(m2.take_work(0.1))
    assert s.state == "done"
    with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
        assert sorted(int(g["phase"].attrs["batch_id"]) for g in f["reconstructions"].values()) == [0, 1]
    m1.close()
    m2.close()


def test_a_session_stopped_between_its_next_batch_and_its_held_reconstruction_keeps_that_reconstruction(tmp_path, monkeypatch):
    manager = _manager(tmp_path)
    (sid,) = _first_batches_acquired(manager, EPS[:1])
    write_held = manager.write_held

    def stop_first(session_id):  # a client's DELETE takes the lock between the round's publish and its write_held
        manager.delete(session_id)
        write_held(session_id)

    monkeypatch.setattr(manager, "write_held", stop_first)
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(manager.take_work(0.1))
    status = manager.get(sid).status()
    assert status["state"] == "stopped" and status["batches_reconstructed"] == 1
    with h5py.File(tmp_path / f"{sid}.h5", "r") as f:
        assert [int(g["phase"].attrs["batch_id"]) for g in f["reconstructions"].values()] == [0], "the reconstruction its status counted"
    assert manager.reconstruction(sid, "live")[3] == 1
    manager.close()


def test_a_publish_that_raises_fails_only_its_session_and_the_rounds_held_reconstructions_reach_their_files(tmp_path, monkeypatch):
    manager = _manager(tmp_path)
    endpoint = dict(zip(_first_batches_acquired(manager, EPS), EPS, strict=True))
    items = manager.take_work(0.1)
    broken, served = items[1].session_id, items[0].session_id
    publish = _publish_raising_for(manager, monkeypatch, broken)
    scheduler = Scheduler(manager, RecordingBackend(), manager.metrics)
    scheduler.run_round(items)  # never raises: the compute worker thread must live on for the other sessions
    assert broken not in manager.sessions and manager.finished[broken].state == "failed"
    assert "a defect" in manager.finished[broken].summary["error"]
    s = manager.sessions[served]
    assert s.state == "acquiring" and s.held_reconstruction is None and s.n_reconstructed == 1
    with h5py.File(tmp_path / f"{served}.h5", "r") as f:
        assert len(f["reconstructions"]) == 1
    monkeypatch.setattr(manager, "publish", publish)
    _batch_acquired(manager, served, endpoint[served], 1, 9)
    scheduler.run_round(manager.take_work(0.1))
    assert manager.finished[served].state == "done", "the worker served the next round"
    manager.close()


def test_a_round_that_raises_after_serving_a_session_whose_next_chunk_completed_meanwhile_does_not_fail_it(tmp_path, monkeypatch):
    manager = _manager(tmp_path)
    endpoint = dict(zip(_first_batches_acquired(manager, EPS), EPS, strict=True))
    items = manager.take_work(0.1)
    served, broken = items[0].session_id, items[1].session_id

    def meanwhile():  # (the ingest thread) the served session's next chunk was told and came in
        _batch_acquired(manager, served, endpoint[served], 1, 9)

    publish = _publish_raising_for(manager, monkeypatch, broken, meanwhile)
    scheduler = Scheduler(manager, RecordingBackend(), manager.metrics)
    scheduler.run_round(items)
    assert manager.finished[broken].state == "failed"
    assert served in manager.sessions, "the round had served it: its next chunk awaits work, not a failure"
    assert manager.sessions[served].batches[1].status == "complete" and manager.queue == [served]
    monkeypatch.setattr(manager, "publish", publish)
    scheduler.run_round(manager.take_work(0.1))
    assert manager.finished[served].state == "done"
    manager.close()


def test_a_round_that_raises_between_a_reconstruction_and_the_next_batch_fails_that_session(tmp_path, monkeypatch):
    manager = _manager(tmp_path)
    _first_batches_acquired(manager, EPS[:1])
    items = manager.take_work(0.1)
    (sid,) = [it.session_id for it in items]
    s = manager.sessions[sid]

    def broken_add_batch(*args):
        raise RuntimeError("a defect")

    monkeypatch.setattr(s, "add_batch", broken_add_batch)  # its batch 0 reconstructed, its next batch never issued
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(items)
    assert manager.finished[sid].state == "failed", "half served (no next batch) it would wait forever"
    manager.close()


def test_fail_unserved_wakes_the_asks_of_a_served_session_and_leaves_it_running(tmp_path):
    manager = _manager(tmp_path)
    (sid,) = _first_batches_acquired(manager, EPS[:1])
    (item,) = manager.take_work(0.1)
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round([item])
    s = manager.sessions[sid]
    version = s.version
    manager.fail_unserved(item, "a round broke off after this session's publish")
    assert s.state == "acquiring" and s.version == version + 1, "its asks are woken (the publish may have broken off before notify)"
    manager.close()
