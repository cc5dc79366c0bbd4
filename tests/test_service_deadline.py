"""Incremental updates shrink to keep pace with the microscope (service.deadline), and only then."""

from __future__ import annotations

import numpy as np
import pytest

from service.compute import BeamKey, ChunkUpdate, ReconJob, TorchReconBackend
from service.deadline import UpdateDeadline, position_passes

BEAM = BeamKey(60_000.0, 33.0, 16, 6.0, 0.0)


def test_ladder_runs_from_the_configured_update_down_to_one_pass_over_the_new_positions():
    ladder = UpdateDeadline(2, 1.0, 0.5).ladder
    assert ladder[0] == (2, 1.0) and ladder[-1] == (1, 0.0)
    costs = [position_passes(level, 50, 1000) for level in ladder]
    assert costs == sorted(costs, reverse=True), "costliest first"
    assert position_passes((2, 1.0), 50, 20) == 2 * (50 + 20), "replay is capped by the older positions there are"


def test_choose_keeps_the_full_update_until_it_knows_the_cost_or_the_pace():
    d = UpdateDeadline(2, 1.0, 0.5)
    assert d.choose([50] * 8, [500] * 8, [0.05] * 8) == (2, 1.0), "no timed call yet"
    d.observe(0.1, 1000)  # 1e-4 s per position-pass
    assert d.choose([50] * 8, [500] * 8, [None] * 8) == (2, 1.0), "acquisition time unknown (e.g. after a restart)"
    assert UpdateDeadline(2, 1.0, None).choose([50], [500], [0.05]) == (2, 1.0), "deadline switched off"


def test_choose_takes_the_costliest_level_that_fits_and_the_cheapest_when_none_does():
    d = UpdateDeadline(2, 1.0, 0.5)
    d.observe(1.0, 10_000)  # 1e-4 s per position-pass
    # one session, chunk 50 acquired in 50 ms: budget 25 ms = 250 passes; (2, 1.0) needs 200
    assert d.choose([50], [500], [0.05]) == (2, 1.0)
    # 4 sessions: 800 passes for (2, 1.0); 400 for (1, 1.0) and (2, 0); 300 for (1, 0.5); 200 for (1, 0)
    assert d.choose([50] * 4, [500] * 4, [0.05] * 4) == (1, 0.0)
    assert d.choose([50] * 4, [500] * 4, [0.07] * 4) == (1, 0.5)
    assert d.choose([50] * 4, [500] * 4, [0.09] * 4) == (1, 1.0)
    assert d.choose([50] * 16, [500] * 16, [0.05] * 16) == (1, 0.0), "nothing fits: the cheapest"
    assert d.choose([50], [500], [0.05], fixed_passes=1000) == (1, 0.0), "full reconstructions in the round count"
    assert d.choose([50, 50], [500, 500], [0.5, 0.05]) == d.choose([50, 50], [500, 500], [0.05, 0.05]), "the shortest chunk sets the pace"


def test_observe_averages_the_measured_cost_and_ignores_empty_calls():
    d = UpdateDeadline(1, 0.0, 0.5, smoothing=0.5)
    d.observe(1.0, 0)
    assert d.seconds_per_pass is None
    d.observe(1.0, 100)
    d.observe(3.0, 100)
    assert d.seconds_per_pass == pytest.approx(0.02)
    with pytest.raises(ValueError):
        UpdateDeadline(1, 0.0, 0.0)


def _job(rng: np.random.Generator, n: int, **kw) -> ReconJob:
    fov = (0.0, 0.0, 0.6, 0.6)
    return ReconJob(BEAM, fov, rng.random((n, 16, 16), dtype=np.float32) + 0.1, rng.random((n, 2)) * 0.6, None, **kw)


def test_backend_shrinks_an_incremental_update_that_would_miss_its_deadline(reconstructor_calls):
    seen = reconstructor_calls
    backend = TorchReconBackend(ChunkUpdate(iterations=3, update_iterations=2, replay=1.0), device="cpu", torch_threads=2)
    rng = np.random.default_rng(3)
    start = backend.reconstruct([_job(rng, 12)])[0].potential
    grown = _job(rng, 18)

    def update(acquisition_s):
        return ReconJob(BEAM, grown.fov_nm, grown.patterns, grown.positions_nm, start, n_new=6, seed=1, acquisition_s=acquisition_s)

    backend.deadline.seconds_per_pass = 1e-6  # a fast machine: the configured update fits
    kept = backend.reconstruct([update(0.05)])[0]
    assert seen[-1] == ([12], 2) and backend.reduced_updates == 0
    assert not kept.shrunk, "the configured update is not flagged"
    backend.deadline.seconds_per_pass = 1.0  # a slow one: one pass over the 6 new positions
    out = backend.reconstruct([update(0.05)])[0]
    assert seen[-1] == ([6], 1) and backend.reduced_updates == 1 and out.shrunk
    assert np.isfinite(out.potential).all() and len(out.loss_history) == 1
    final = ReconJob(BEAM, grown.fov_nm, grown.patterns, grown.positions_nm, start, n_new=6, final=True, acquisition_s=0.05)
    backend.deadline.seconds_per_pass = 1.0
    final_out, update_out = backend.reconstruct([final, update(0.05)])
    assert sorted(c for c, _ in seen[-2:]) == [[6], [18]] and backend.reduced_updates == 2, "a last chunk is never shrunk"
    assert update_out.shrunk and not final_out.shrunk, "only the shrunk job of a round is flagged"
    assert backend.deadline.seconds_per_pass < 1.0, "the measured cost replaced the guess"


def test_first_chunks_count_their_full_passes_at_the_top_level_and_the_levels_passes_below():
    d = UpdateDeadline(2, 1.0, 0.5)
    d.observe(1.0, 10_000)  # 1e-4 s per position-pass; budget 25 ms = 250 passes
    assert d.choose([], [], [0.05], fresh=[40], fresh_passes=5) == (2, 1.0), "5 x 40 = 200 passes fit at the top"
    assert d.choose([], [], [0.05], fresh=[60], fresh_passes=5) == (2, 0.5), "5 x 60 = 300 do not; 2 x 60 do"
    assert d.choose([], [], [0.05] * 4, fresh=[50] * 4, fresh_passes=5) == (1, 1.0), "4 first chunks: 1 pass each (nothing to replay)"
    assert d.choose([50], [500], [0.04] * 2, fresh=[50], fresh_passes=5) == (1, 1.0), "with an update in the round (budget 200 passes): 100 + 50"


def test_backend_cuts_a_first_chunks_passes_under_pressure_only(reconstructor_calls):
    seen = reconstructor_calls
    backend = TorchReconBackend(ChunkUpdate(iterations=4, update_iterations=2, replay=1.0), device="cpu", torch_threads=2)
    rng = np.random.default_rng(4)
    first = _job(rng, 10, acquisition_s=0.05)
    backend.reconstruct([first])
    assert seen[-1] == ([10], 4), "cost not known yet: all passes"
    backend.deadline.seconds_per_pass = 1.0
    backend.reconstruct([first])
    assert seen[-1] == ([10], 1) and backend.reduced_updates == 1


def test_warmup_calibrates_the_cost_model_at_k64_and_costs_scale_with_k_squared():
    from service.compute import _cost_scale

    backend = TorchReconBackend(ChunkUpdate(), device="cpu", torch_threads=2)
    assert backend.deadline.seconds_per_pass is None
    backend.warmup()
    assert 0 < backend.deadline.seconds_per_pass < 0.05, "one 64x64 position through one pass: well under 50 ms"
    assert not backend._recons, "the warm-up reconstructor is not kept"
    k128 = BeamKey(60_000.0, 33.0, 128, 1.68, 0.0)
    assert _cost_scale([_job(np.random.default_rng(0), 2)]) == pytest.approx(1 / 16)
    assert _cost_scale([ReconJob(k128, (0, 0, 1, 1), np.zeros((1, 128, 128), np.float32), np.zeros((1, 2)), None)]) == pytest.approx(4.0)


def test_acquisition_time_is_measured_from_frame_arrivals_even_when_frames_come_before_the_tell(tmp_path):
    import time

    from service_testing import KEY, RecordingBackend, frames_for, session_body

    from detector_stream.events import Frame
    from service.manager import SessionManager
    from service.metrics import ServiceMetrics
    from service.scheduler import Scheduler
    from service.settings import ServiceSettings

    manager = SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())
    ep = "tcp://127.0.0.1:5003"
    body = session_body(ep, budget=8, chunk=4) | {"energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0}
    sid = manager.create(body)["session_id"]
    Scheduler(manager, RecordingBackend(), manager.metrics).run_round(manager.take_work(0.1))  # the first batch
    ask = manager.try_ask(sid)
    for i, img in enumerate(frames_for(1, 4)):  # the microscope scans before the control software tells
        manager.on_event(ep, Frame(1, i, img))
        time.sleep(0.02)
    time.sleep(0.1)
    manager.tell(sid, ask["batch_id"], 1, None)
    (item,) = manager.take_work(0.1)
    assert 0.06 * 4 / 3 <= item.job.acquisition_s < 0.1 * 4 / 3 + 0.05, "first to last arrival (3 x 20 ms, scaled to 4 frames), not the tell's instant"
    manager.close()


def test_session_status_says_which_chunks_had_their_update_shrunk(tmp_path):
    from service_testing import KEY, RecordingBackend, frames_for, session_body

    from detector_stream.events import Frame
    from service.manager import SessionManager
    from service.metrics import ServiceMetrics
    from service.scheduler import Scheduler
    from service.settings import ServiceSettings

    class ShrinkingBackend(RecordingBackend):
        """Flags every reconstruction a decision waits on as shrunk, as the torch backend does under pressure."""

        def reconstruct(self, jobs):
            out = super().reconstruct(jobs)
            for job, res in zip(jobs, out, strict=True):
                res.shrunk = not job.final
            return out

    manager = SessionManager(ServiceSettings(storage=tmp_path, api_keys=[KEY]), ServiceMetrics())
    scheduler = Scheduler(manager, ShrinkingBackend(), manager.metrics)
    ep = "tcp://127.0.0.1:5004"
    body = session_body(ep, budget=8, chunk=4) | {"energy_ev": 6e4, "convergence_mrad": 33.0, "defocus_nm": 0.0}
    sid = manager.create(body)["session_id"]
    scheduler.run_round(manager.take_work(0.1))  # the first batch
    for series in (1, 2):
        ask = manager.try_ask(sid)
        manager.tell(sid, ask["batch_id"], series, None)
        for i, img in enumerate(frames_for(series, 4)):
            manager.on_event(ep, Frame(series, i, img))
        scheduler.run_round(manager.take_work(1.0))
    status = manager.get(sid).status()
    assert status["state"] == "done"
    assert [c["update_shrunk"] for c in status["chunks"]] == [True, False], "the last chunk's full reconstruction is never shrunk"
    manager.close()
