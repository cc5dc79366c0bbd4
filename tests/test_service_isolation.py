"""One session's failure fails that session alone: a batched reconstruction or plan that raises is retried per session."""

from __future__ import annotations

import numpy as np
from service_testing import KEY, RecordingBackend, frames_for, session_body

from detector_stream.events import Frame
from service.manager import SessionManager
from service.metrics import ServiceMetrics
from service.models import SessionCreate
from service.planner import SparseGridPlanner
from service.scheduler import Scheduler
from service.settings import ServiceSettings

POISON_X0 = 0.5


class PoisonedBackend(RecordingBackend):
    """Raises for any call that contains the job of the session whose fov starts at x0 = POISON_X0."""

    def reconstruct(self, jobs):
        if any(job.fov_nm[0] == POISON_X0 for job in jobs):
            raise FloatingPointError("grid overflow")
        return super().reconstruct(jobs)


def _sessions(tmp_path, backend) -> tuple[SessionManager, Scheduler, list[str], list[str]]:
    manager = SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())
    scheduler = Scheduler(manager, backend, manager.metrics)
    eps = [f"tcp://127.0.0.1:{5020 + i}" for i in range(3)]
    sids = []
    for i, ep in enumerate(eps):
        body = session_body(ep, budget=6, chunk=3, fov_nm=[POISON_X0 if i == 1 else 0.0, 0.0, 1.0, 1.0])
        sids.append(manager.create(SessionCreate(**body).model_dump(mode="json"))["session_id"])
    return manager, scheduler, sids, eps


def _acquire_first_chunks(manager: SessionManager, sids: list[str], eps: list[str]) -> None:
    for n, (sid, ep) in enumerate(zip(sids, eps, strict=True)):
        manager.tell(sid, manager.try_ask(sid)["batch_id"], 1, None)
        manager.on_events(ep, [Frame(1, i, img) for i, img in enumerate(frames_for(n, 3))])


def test_a_session_raising_in_the_batched_reconstruction_fails_alone(tmp_path):
    backend = PoisonedBackend()
    manager, scheduler, sids, eps = _sessions(tmp_path, backend)
    scheduler.run_round(manager.take_work(0.1))
    _acquire_first_chunks(manager, sids, eps)
    scheduler.run_round(manager.take_work(0.1))
    states = [manager.get(sid).state for sid in sids]
    assert states == ["acquiring", "failed", "acquiring"], states
    assert "grid overflow" in manager.get(sids[1]).status()["error"]
    for sid in (sids[0], sids[2]):
        assert manager.try_ask(sid)["batch_id"] == 1  # the round went on for the others
    manager.close()


def test_a_session_raising_in_the_batched_plan_fails_alone(tmp_path, monkeypatch):
    original = SparseGridPlanner.plan

    def plan(self, requests):
        if any(r.fov_nm[0] == POISON_X0 and r.batch_index == 1 for r in requests):
            raise ValueError("planner bug")
        return original(self, requests)

    monkeypatch.setattr(SparseGridPlanner, "plan", plan)
    manager, scheduler, sids, eps = _sessions(tmp_path, RecordingBackend())
    scheduler.run_round(manager.take_work(0.1))
    _acquire_first_chunks(manager, sids, eps)
    items = manager.take_work(0.1)
    plans_before = [it.plan for it in items]
    scheduler.run_round(items)
    assert [manager.get(sid).state for sid in sids] == ["acquiring", "failed", "acquiring"]
    assert all(p.potential is None for p in plans_before), "the work items' plan requests are not patched in place"
    np.testing.assert_array_equal([len(manager.try_ask(sid)["positions_nm"]) for sid in (sids[0], sids[2])], [3, 3])
    manager.close()


def test_a_session_whose_planner_returns_malformed_positions_fails_alone(tmp_path, monkeypatch):
    original = SparseGridPlanner.plan

    def plan(self, requests):
        out = original(self, requests)
        return [np.zeros(5) if r.fov_nm[0] == POISON_X0 and r.batch_index == 1 else p for r, p in zip(requests, out, strict=True)]

    monkeypatch.setattr(SparseGridPlanner, "plan", plan)
    manager, scheduler, sids, eps = _sessions(tmp_path, RecordingBackend())
    scheduler.run_round(manager.take_work(0.1))
    _acquire_first_chunks(manager, sids, eps)
    scheduler.run_round(manager.take_work(0.1))
    assert [manager.get(sid).state for sid in sids] == ["acquiring", "failed", "acquiring"], "not the whole round for one plan"
    assert "planner failed" in manager.get(sids[1]).status()["error"]
    manager.close()
