"""The real reconstruction backend (recon.engine.Reconstructor): sessions batched into one call, warm start, full service path."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("recon.engine", reason="recon.engine (branch recon) not merged yet")

from recon.engine import Reconstructor
from recon.grid import ObjectGrid
from service.compute import BeamKey, ChunkUpdate, ReconJob, TorchReconBackend

BEAM = BeamKey(60_000.0, 33.0, 16, 6.0, 0.0)


def _job(rng, n, init=None):
    frames = rng.poisson(50.0, size=(n, 16, 16)).astype(np.float32)
    return ReconJob(BEAM, (0.0, 0.0, 0.3, 0.3), frames, rng.random((n, 2)) * 0.3, init)


def test_two_sessions_in_one_reconstructor_call_and_warm_start(monkeypatch, device):
    calls = []
    original = Reconstructor.reconstruct

    def spy(self, scans, init=None, iterations=None, first_pass=0):
        calls.append((len(scans), init))
        return original(self, scans, init=init, iterations=iterations, first_pass=first_pass)

    monkeypatch.setattr(Reconstructor, "reconstruct", spy)
    backend = TorchReconBackend(ChunkUpdate(iterations=2), device=device, torch_threads=2)
    rng = np.random.default_rng(0)
    out = backend.reconstruct([_job(rng, 6), _job(rng, 9)])
    assert len(calls) == 1 and calls[0][0] == 2, "both sessions must go into one batched call"
    grid = ObjectGrid.covering((0.0, 0.0, 0.3, 0.3), BEAM.pixel_nm, 16)
    for o in out:
        assert o.potential.shape == grid.shape and np.isfinite(o.potential).all()
        assert o.pixel_nm == pytest.approx(BEAM.pixel_nm) and len(o.loss_history) >= 1
    assert not np.allclose(out[0].potential, out[1].potential)
    warm = backend.reconstruct([_job(rng, 6, init=out[0].potential)])
    init = calls[-1][1][0]
    assert init is not None and np.allclose(np.asarray(init), out[0].potential), "the previous potential warm-starts the next chunk"
    assert warm[0].potential.shape == grid.shape
    # a beam with another probe goes into its own call
    other = ReconJob(BeamKey(80_000.0, 30.0, 16, 6.0, 0.0), (0.0, 0.0, 0.3, 0.3), rng.random((4, 16, 16), dtype=np.float32), rng.random((4, 2)) * 0.3, None)
    backend.reconstruct([_job(rng, 4), other])
    assert [c[0] for c in calls[-2:]] == [1, 1]


def test_service_with_the_real_reconstructor_end_to_end(tmp_path):
    from fastapi.testclient import TestClient
    from service_testing import AUTH, KEY, Pusher, frames_for, session_body

    from service.app import create_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(storage=tmp_path, api_keys=[KEY], recon_iterations=2, torch_threads=2)
    pusher = Pusher()
    try:
        with TestClient(create_app(settings)) as c:
            sid = c.post("/api/v1/sessions", json=session_body(pusher.endpoint, budget=8, chunk=4, fov_nm=[0, 0, 0.3, 0.3]), headers=AUTH).json()["session_id"]
            series = 0
            while not (ask := c.post(f"/api/v1/sessions/{sid}/ask", params={"timeout_s": 30}, headers=AUTH).json())["done"]:
                c.post(f"/api/v1/sessions/{sid}/tell", json={"batch_id": ask["batch_id"], "series": series}, headers=AUTH)
                pusher.series(series, frames_for(series, len(ask["positions_nm"])) + 20)
                series += 1
            status = c.get(f"/api/v1/sessions/{sid}").json()
            raw = c.get(f"/api/v1/sessions/{sid}/reconstruction").json()
    finally:
        pusher.close()
    assert status["state"] == "done" and status["batches_reconstructed"] == 2
    grid = ObjectGrid.covering((0.0, 0.0, 0.3, 0.3), BEAM.pixel_nm, 16)
    assert tuple(raw["shape"]) == grid.shape and np.isfinite(np.asarray(raw["potential"])).all()
    assert raw["pixel_nm"] == pytest.approx(BEAM.pixel_nm)


def test_chunk_update_scope_full_first_and_last_incremental_between():
    rng = np.random.default_rng(1)
    update = ChunkUpdate(iterations=5, update_iterations=2, replay=0.5)
    first = _job(rng, 20)
    assert update.scope(first)[1] == 5 and np.array_equal(update.scope(first)[0], np.arange(20)), "no previous potential: full"
    init = np.zeros((4, 4), np.float32)
    middle = ReconJob(BEAM, first.fov_nm, first.patterns, first.positions_nm, init, n_new=8, seed=3)
    idx, iterations = update.scope(middle)
    assert iterations == 2
    assert set(range(12, 20)) <= set(idx.tolist()), "every new position is revisited"
    older = idx[idx < 12]
    assert len(older) == 4 and len(set(older.tolist())) == 4, "replay 0.5: half as many older positions, no repeats"
    assert np.array_equal(update.scope(middle)[0], idx), "the replay sample is seeded by the chunk"
    last = ReconJob(BEAM, first.fov_nm, first.patterns, first.positions_nm, init, n_new=8, final=True)
    assert update.scope(last)[1] == 5 and len(update.scope(last)[0]) == 20, "the last chunk is reconstructed in full"
    full = ChunkUpdate(mode="full", iterations=3)
    assert full.scope(middle)[1] == 3 and len(full.scope(middle)[0]) == 20
    no_replay = ChunkUpdate(replay=0.0).scope(middle)[0]
    assert np.array_equal(no_replay, np.arange(12, 20))


def test_incremental_update_reconstructs_only_its_scope(reconstructor_calls, device):
    seen = reconstructor_calls
    backend = TorchReconBackend(ChunkUpdate(iterations=3, update_iterations=1, replay=1.0), device=device, torch_threads=2)
    rng = np.random.default_rng(2)
    first = _job(rng, 10)
    start = backend.reconstruct([first])[0].potential
    grown = _job(rng, 16)
    middle = ReconJob(BEAM, grown.fov_nm, grown.patterns, grown.positions_nm, start, n_new=4, seed=1)
    last = ReconJob(BEAM, grown.fov_nm, grown.patterns, grown.positions_nm, start, n_new=4, final=True)
    out = backend.reconstruct([middle, last])
    assert seen == [([10], 3), ([8], 1), ([16], 3)], "first chunk full; update: 4 new + 4 replayed, 1 pass; last chunk: all, full passes"
    assert all(np.isfinite(o.potential).all() and o.potential.shape == start.shape for o in out)


def test_last_chunks_run_a_pass_at_a_time_between_other_sessions_chunks():
    from service_testing import RecordingBackend

    from service.metrics import ServiceMetrics
    from service.scheduler import Scheduler
    from service.work import WorkItem

    events = []

    class Manager:
        def __init__(self):
            self.waiting = False
            self.gone: set[str] = set()

        def publish(self, item, recon, positions, error=None, hold_reconstruction=False):
            events.append(("publish", item.session_id, None if recon is None else len(recon.loss_history)))

        def write_held(self, session_id):
            pass

        def has_work(self):
            return self.waiting

        def is_active(self, session_id):
            return session_id not in self.gone

    class Backend(RecordingBackend):
        final_passes = 3

        def reconstruct(self, jobs):
            events.append(("reconstruct", [(j.final, j.passes, j.init is not None, j.first_pass) for j in jobs]))
            return super().reconstruct(jobs)

    rng = np.random.default_rng(3)
    job = _job(rng, 4)
    last = ReconJob(BEAM, job.fov_nm, job.patterns, job.positions_nm, None, final=True)
    items = [WorkItem("last", 1, last, None, None, None), WorkItem("mid", 1, job, None, None, None)]
    manager = Manager()
    scheduler = Scheduler(manager, Backend(), ServiceMetrics(), final_slice_s=0.0)  # one slice (here a pass) per round
    scheduler.run_round(items)
    # warm-started from the pass before, the mini-batch order continued
    one_pass = [("reconstruct", [(True, 1, False, 0)]), ("reconstruct", [(True, 1, True, 1)]), ("reconstruct", [(True, 1, True, 2)])]
    mid = [("reconstruct", [(False, None, False, 0)]), ("publish", "mid", 1)]
    assert events == [*mid, *one_pass, ("publish", "last", 3)], "decisions first; then the final reconstruction, a pass per call, published once with every pass's loss"
    events.clear()
    manager.waiting = True  # other sessions' chunks keep arriving: one final pass per round, no more
    scheduler.run_round(items)
    assert events == [*mid, one_pass[0]] and scheduler.finishing == 1
    events.clear()
    scheduler.run_round(items[1:])
    assert events == [*mid, one_pass[1]]
    events.clear()
    manager.waiting = False
    scheduler.finish_pending()
    assert events == [one_pass[2], ("publish", "last", 3)] and scheduler.finishing == 0
    events.clear()
    manager.waiting = True
    scheduler.run_round(items[:1])  # a final whose session is deleted before its next pass is dropped
    manager.waiting = False
    manager.gone.add("last")
    scheduler.finish_pending()
    assert events == [one_pass[0]] and scheduler.finishing == 0


def test_backend_keeps_the_reconstructors_of_the_most_recent_beams_only(device):
    backend = TorchReconBackend(ChunkUpdate(iterations=1), device=device, torch_threads=2)
    beams = [BeamKey(60_000.0, 33.0, 16, 6.0, float(defocus)) for defocus in range(backend.MAX_BEAMS + 1)]
    for beam in beams[:-1]:
        backend._reconstructor(beam)
    backend._reconstructor(beams[0])  # used again: now the most recent
    backend._reconstructor(beams[-1])
    assert list(backend._recons) == [*beams[2:-1], beams[0], beams[-1]], "the least recently used beam (its probe cache) is let go"
