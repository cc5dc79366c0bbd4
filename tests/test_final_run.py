"""A session's final reconstruction a mini-batch step at a time: the same reconstruction, prepared once, yielding to decisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon.engine import Reconstructor, ScanChunk, run_to_end
from recon.grid import ObjectGrid
from recon.options import ReconOptions
from service.compute import BeamKey, ChunkUpdate, ReconJob, TorchReconBackend

BEAM = BeamKey(60_000.0, 33.0, 16, 6.0, 0.0)
FOV = (0.0, 0.0, 0.3, 0.3)


def _job(rng, n: int, init=None, final: bool = True) -> ReconJob:
    frames = rng.poisson(50.0, size=(n, 16, 16)).astype(np.uint16)
    return ReconJob(BEAM, FOV, frames, rng.random((n, 2)) * 0.3, init, final=final)


def _scan(job: ReconJob) -> ScanChunk:
    grid = ObjectGrid.covering(job.fov_nm, BEAM.pixel_nm, BEAM.detector_pixels)
    return ScanChunk(torch.from_numpy(job.patterns.astype(np.float32)), torch.from_numpy(job.positions_nm), grid)


def test_steps_paused_between_steps_give_what_one_call_gives(device):
    rng = np.random.default_rng(0)
    options = ReconOptions(iterations=3, batch_positions=4)
    probe = BEAM.probe()
    scans = [_scan(_job(rng, 10)), _scan(_job(rng, 7))]
    whole = Reconstructor(probe, options, device=device).reconstruct(scans)
    run = Reconstructor(probe, options, device=device).steps(scans)
    other = Reconstructor(probe, options, device=device)
    steps = 0
    while True:
        try:
            next(run)
        except StopIteration as done:
            stepped = done.value
            break
        steps += 1
        other.reconstruct([_scan(_job(rng, 5))])  # other work between the steps changes nothing
    assert steps == 3 * 3, "3 passes of ceil(10 / 4) = 3 steps (the 7-position scan's 2 steps ride along)"
    for a, b in zip(whole, stepped, strict=True):
        assert torch.equal(a.potential, b.potential) and a.loss_history == b.loss_history


def test_steps_check_nothing_until_the_first_step():
    probe = BEAM.probe()
    run = Reconstructor(probe, ReconOptions(iterations=1), device="cpu").steps([])
    with pytest.raises(ValueError, match="no scans"):
        run_to_end(run)


def test_backend_final_advances_a_step_at_a_time_to_the_one_call_result(device):
    backend = TorchReconBackend(ChunkUpdate(iterations=3), device=device, torch_threads=1, options={"batch_positions": 4})
    rng = np.random.default_rng(1)
    start = backend.reconstruct([_job(rng, 8, final=False)])[0].potential
    job = _job(rng, 12, init=start)
    whole = backend.reconstruct([job])[0]
    run = backend.start_final(job)
    slices = 0
    while (out := run.advance(lambda: True)) is None:
        slices += 1
        assert slices < 100
    assert slices == 3 * 3, "stop() after every step: one step per advance, 3 passes of 3 steps (the next advance returns the output)"
    assert np.array_equal(out.potential, whole.potential) and out.loss_history == pytest.approx(whole.loss_history)
    assert not out.shrunk and len(out.loss_history) == 3
    assert backend.start_final(job).advance(lambda: False) is not None, "nothing waiting: to the end in one advance"


def test_a_final_between_steps_is_immune_to_other_calls_filling_the_shared_probe_cache(device):
    """The shared reconstructor's cache of shifted probes starts over in place when full; a suspended final keeps its own."""
    options = {"batch_positions": 4, "probe_cache_mb": 24 * 16 * 16 * 8 / 2**20, "subpixel_steps": None}  # room for 24 probes
    backend = TorchReconBackend(ChunkUpdate(iterations=2, deadline_fraction=None), device=device, torch_threads=1, options=options)
    rng = np.random.default_rng(2)
    job = _job(rng, 16, init=None)
    whole = backend.reconstruct([job])[0]
    run = backend.start_final(job)
    assert run.advance(lambda: True) is None
    for _ in range(3):  # 16 new fractions each: the shared cache (24) starts over and rewrites its first rows
        backend.reconstruct([_job(rng, 16, final=False)])
    while (out := run.advance(lambda: True)) is None:
        backend.reconstruct([_job(rng, 16, final=False)])
    assert np.array_equal(out.potential, whole.potential)


def test_scheduler_runs_one_step_of_a_final_per_round_while_decisions_wait(device):
    from service.metrics import ServiceMetrics
    from service.scheduler import Scheduler
    from service.work import WorkItem

    published = []

    class Manager:
        waiting = True

        def publish(self, item, recon, positions, error=None):
            published.append((item.session_id, recon, error))

        def has_work(self):
            return self.waiting

        def is_active(self, session_id):
            return True

    backend = TorchReconBackend(ChunkUpdate(iterations=2), device=device, torch_threads=1, options={"batch_positions": 4})
    job = _job(np.random.default_rng(3), 12)
    runs, start_final = [], backend.start_final
    backend.start_final = lambda job: runs.append(start_final(job)) or runs[-1]
    manager = Manager()
    scheduler = Scheduler(manager, backend, ServiceMetrics(), final_slice_s=0.0)
    scheduler.run_round([WorkItem("last", 2, job, None, None, None)])
    for _ in range(3):
        scheduler.finish_pending()
    assert scheduler.finishing == 1 and runs[0].steps == 4 and not published, "one step per round while chunks wait"
    assert scheduler.metrics.registry.get_sample_value("ptychoscan_final_reconstructions_pending") == 1
    manager.waiting = False
    scheduler.finish_pending()
    assert scheduler.finishing == 0 and len(published) == 1
    assert scheduler.metrics.registry.get_sample_value("ptychoscan_final_reconstructions_pending") == 0
    sid, out, error = published[0]
    assert sid == "last"
    assert error is None and len(out.loss_history) == 2 and np.isfinite(out.potential).all()
    assert np.array_equal(out.potential, backend.reconstruct([job])[0].potential)


def test_a_final_whose_session_ends_mid_advance_stops_at_the_next_step(device):
    """Nothing else queued, the final runs free; its session stopped meanwhile, it is dropped after the step in flight."""
    from service.metrics import ServiceMetrics
    from service.scheduler import Scheduler
    from service.work import WorkItem

    published = []

    class Manager:
        active = True

        def publish(self, item, recon, positions, error=None):
            published.append(item.session_id)

        def has_work(self):
            return False

        def is_active(self, session_id):
            return self.active

    backend = TorchReconBackend(ChunkUpdate(iterations=3), device=device, torch_threads=1, options={"batch_positions": 4})
    job = _job(np.random.default_rng(4), 12)
    runs, start_final = [], backend.start_final
    backend.start_final = lambda job: runs.append(start_final(job)) or runs[-1]
    manager = Manager()
    steps = []

    def stopped_after_two_steps():  # the DELETE lands while the final runs (is_active is asked under the manager's lock)
        steps.append(1)
        if len(steps) == 2:
            manager.active = False
        return False

    scheduler = Scheduler(manager, backend, ServiceMetrics(), final_slice_s=0.0)
    original = manager.has_work
    manager.has_work = lambda: stopped_after_two_steps() or original()
    scheduler.run_round([WorkItem("last", 2, job, None, None, None)])
    assert scheduler.finishing == 0 and not published
    assert runs[0].steps <= 3, f"{runs[0].steps} of 9 steps run for a session that had ended"


def test_a_final_gets_at_least_its_slice_time_per_round_while_chunks_keep_arriving(device):
    from service.metrics import ServiceMetrics
    from service.scheduler import Scheduler
    from service.work import WorkItem

    published = []

    class Busy:  # another session's chunk is always waiting
        def publish(self, item, recon, positions, error=None):
            published.append(recon)

        def has_work(self):
            return True

        def is_active(self, session_id):
            return True

    backend = TorchReconBackend(ChunkUpdate(iterations=2), device=device, torch_threads=1, options={"batch_positions": 4})
    job = _job(np.random.default_rng(5), 12)
    scheduler = Scheduler(Busy(), backend, ServiceMetrics(), final_slice_s=60.0)
    scheduler.run_round([WorkItem("last", 2, job, None, None, None)])
    assert scheduler.finishing == 0 and len(published) == 1, "within its slice time the final ran to its end despite the queue"
    assert np.array_equal(published[0].potential, backend.reconstruct([job])[0].potential)


def test_a_stepped_run_waits_for_the_device_after_every_step_before_asking_to_stop():
    import threading

    from service.final_run import SteppedRun

    log = []

    def three_steps():
        for i in range(3):
            log.append(f"step {i}")
            yield
        return ["done"]

    run = SteppedRun(three_steps, lambda results: results[0], threading.Lock(), wait=lambda: log.append("wait"))
    assert run.advance(lambda: log.append("stop?") or True) is None
    assert run.advance(lambda: log.append("stop?") or False) == "done"
    assert log == ["step 0", "wait", "stop?", "step 1", "wait", "stop?", "step 2", "wait", "stop?"]
    cpu = TorchReconBackend(ChunkUpdate(iterations=1), device="cpu", torch_threads=1)
    assert cpu.start_final(_job(np.random.default_rng(6), 4)).advance(lambda: False) is not None, "no wait on a CPU"


def test_a_final_whose_publish_raises_fails_its_session_and_the_worker_goes_on():
    from service.metrics import ServiceMetrics
    from service.scheduler import Scheduler
    from service.work import WorkItem

    failed = []

    class Manager:
        def publish(self, item, recon, positions, error=None):
            raise RuntimeError("a defect")

        def has_work(self):
            return False

        def is_active(self, session_id):
            return True

        def fail_unserved(self, item, message):
            failed.append((item.session_id, message))

    backend = TorchReconBackend(ChunkUpdate(iterations=1), device="cpu", torch_threads=1)
    scheduler = Scheduler(Manager(), backend, ServiceMetrics())
    scheduler.run_round([WorkItem("last", 1, _job(np.random.default_rng(7), 6), None, None, None)])  # never raises
    assert scheduler.finishing == 0 and failed == [("last", "internal error in the compute worker: RuntimeError: a defect")]


def test_a_round_that_raises_for_a_decision_leaves_the_final_started_in_it_to_finish():
    from service.metrics import ServiceMetrics
    from service.scheduler import Scheduler
    from service.work import WorkItem

    failed, published = [], []

    class Manager:
        def publish(self, item, recon, positions, error=None, hold_reconstruction=False):
            if item.session_id == "mid":
                raise RuntimeError("a defect")
            published.append((item.session_id, error))

        def write_held(self, session_id):
            pass

        def has_work(self):
            return False

        def is_active(self, session_id):
            return True

        def fail_unserved(self, item, message):
            failed.append(item.session_id)

    rng = np.random.default_rng(8)
    backend = TorchReconBackend(ChunkUpdate(iterations=1), device="cpu", torch_threads=1)
    items = [WorkItem("last", 1, _job(rng, 6), None, None, None), WorkItem("mid", 1, _job(rng, 6, final=False), None, None, None)]
    scheduler = Scheduler(Manager(), backend, ServiceMetrics())
    scheduler.run_round(items)
    assert failed == ["mid"], "the final in progress is not the round's to fail: it goes on"
    assert scheduler.finishing == 1
    scheduler.finish_pending()
    assert scheduler.finishing == 0 and published == [("last", None)]


def test_finals_waiting_behind_the_first_are_dropped_and_uncounted_once_their_session_ended():
    from service.metrics import ServiceMetrics
    from service.scheduler import Scheduler
    from service.work import WorkItem

    class Manager:  # decisions keep coming; session "gone" was deleted while its final waited behind "first"
        def __init__(self):
            self.active = {"first", "gone"}

        def publish(self, item, recon, positions, error=None, hold_reconstruction=False):
            pass

        def has_work(self):
            return True

        def is_active(self, session_id):
            return session_id in self.active

    rng = np.random.default_rng(9)
    backend = TorchReconBackend(ChunkUpdate(iterations=3), device="cpu", torch_threads=1, options={"batch_positions": 2})
    manager = Manager()
    scheduler = Scheduler(manager, backend, ServiceMetrics(), final_slice_s=0.0)
    scheduler.run_round([WorkItem("first", 1, _job(rng, 8), None, None, None), WorkItem("gone", 1, _job(rng, 8), None, None, None)])
    assert scheduler.finishing == 2
    manager.active = {"first"}
    scheduler.finish_pending()
    assert scheduler.finishing == 1, "the ended session's final (and the frames its job holds) let go"
    assert scheduler.metrics.registry.get_sample_value("ptychoscan_final_reconstructions_pending") == 1


def test_the_compute_worker_thread_outlives_a_defect_in_the_rounds_own_containment():
    import threading
    import time

    from service.metrics import ServiceMetrics
    from service.scheduler import Scheduler
    from service.work import WorkItem

    class Manager:
        lock = threading.Lock()
        work_ready = threading.Condition(lock)

        def __init__(self):
            self.queue = [[WorkItem("a", 1, _job(np.random.default_rng(8), 4, final=False), None, None, None)] for _ in range(2)]

        def take_work(self, timeout):
            if self.queue:
                return self.queue.pop(0)
            time.sleep(timeout)
            return []

        def publish(self, item, recon, positions, error=None, hold_reconstruction=False):
            raise RuntimeError("a defect")

        def fail_unserved(self, item, message):
            raise RuntimeError("and another in the containment")

        def write_held(self, session_id):
            pass

        def has_work(self):
            return False

        def flush_all(self):
            pass

        def reissue_stalled(self):
            pass

    manager = Manager()
    scheduler = Scheduler(manager, TorchReconBackend(ChunkUpdate(iterations=1), device="cpu", torch_threads=1), ServiceMetrics())
    scheduler.start()
    try:
        deadline = time.monotonic() + 30
        while scheduler.rounds < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scheduler.rounds == 2, "the worker went on to the next round after the first broke off"
    finally:
        scheduler.stop(5)
