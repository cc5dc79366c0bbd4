"""``service.routing`` and ``service.spec`` on their own: outcomes returned, nothing written, no manager, no lock."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from service.models import SessionCreate
from service.routing import MAX_CANDIDATES, FrameOutcome, FrameRouter
from service.session import BatchStatus, Binding, Session, SessionState
from service.spec import Beam, SessionSpec
from tests.service_testing import session_body
from tests.subprocess_env import REPO, repo_env

EP = "tcp://127.0.0.1:5999"


def _params(**kw) -> dict:
    return SessionCreate(**session_body(EP, **kw)).model_dump(mode="json")


def _told_session(n: int = 3) -> tuple[Session, Binding]:
    """A session whose first batch of ``n`` positions is told to series 1 (no file: routing never writes one)."""
    s = Session("s1", _params(), None, None)  # type: ignore[arg-type]
    b = s.add_batch(0, np.zeros((n, 2)))
    b.status, b.series, b.told_slots = BatchStatus.TOLD, 1, b.slots
    s.state = SessionState.ACQUIRING
    return s, Binding("s1", 0, {i: i for i in range(n)})


def _img(value: int = 1, k: int = 16, dtype=np.uint32) -> np.ndarray:
    return np.full((k, k), value, dtype)


def test_untold_frames_are_buffered_until_the_tell_and_the_oldest_series_is_evicted():
    router = FrameRouter(max_buffered_frames=4, max_buffered_bytes=10**9)
    for i in range(3):
        result, evicted = router.buffer_frame((EP, 5), i, _img(), 0.0)
        assert result.outcome == FrameOutcome.BUFFERED and evicted == []
    router.buffer_frame((EP, 6), 0, _img(), 0.0)
    _, evicted = router.buffer_frame((EP, 6), 1, _img(), 0.0)
    assert [(e.key, e.count) for e in evicted] == [((EP, 5), 3)]
    assert router.buffered_frames == 2 and list(router.buffer) == [(EP, 6)]
    assert router.endpoint_errors == {EP: {"buffer_overflow": 3}}
    entry = router.bind((EP, 6), Binding("s1", 0, {0: 0, 1: 1}))
    assert entry is not None and sorted(entry.frames) == [0, 1]
    assert router.buffered_frames == 0 and router.buffered_bytes == 0 and router.is_bound((EP, 6))


def test_the_buffer_keeps_a_few_arrivals_per_frame_then_refuses_duplicates():
    router = FrameRouter(100, 10**9)
    for _ in range(MAX_CANDIDATES):
        assert router.buffer_frame((EP, 1), 0, _img(), 0.0)[0].outcome == FrameOutcome.BUFFERED
    result, _ = router.buffer_frame((EP, 1), 0, _img(), 0.0)
    assert (result.outcome, result.kind) == (FrameOutcome.REFUSED, "duplicated")
    assert router.buffer[(EP, 1)].errors == [("duplicated", "series 1: duplicated frame 0 (before tell)")]


def test_admit_refuses_with_a_kind_and_place_completes_the_batch():
    s, bind = _told_session(2)
    key = (EP, 1)
    assert FrameRouter.admit(key, 5, _img(), bind, s).kind == "unexpected"
    assert FrameRouter.admit(key, 0, _img(k=8), bind, s).kind == "malformed"
    assert FrameRouter.admit(key, 0, _img(2**20), bind, _told_session(2)[0]).outcome == FrameOutcome.ADMITTED  # 32-bit file
    late = FrameRouter.admit(key, 0, _img(), bind, None, "stopped")
    assert (late.kind, late.detail) == ("other", "series 1: frame 0 arrived after the session was stopped")
    first = FrameRouter.admit(key, 0, _img(), bind, s)
    assert (first.outcome, first.slot) == (FrameOutcome.ADMITTED, 0)
    assert FrameRouter.place(s, 0, 0, _img(), 1.0, True, 30.0).outcome == FrameOutcome.STORED
    assert FrameRouter.admit(key, 0, _img(), bind, s).kind == "duplicated"
    assert FrameRouter.place(s, 0, 1, _img(), 2.0, True, 30.0).outcome == FrameOutcome.BATCH_COMPLETE
    assert s.batches[0].status == BatchStatus.COMPLETE and s.state == SessionState.RECONSTRUCTING and s.last_frame_at == 2.0


def test_counts_a_16_bit_file_cannot_hold_are_refused():
    s = Session("s1", _params(detector_bit_depth=16), None, None)  # type: ignore[arg-type]
    s.add_batch(0, np.zeros((1, 2)))
    verdict = FrameRouter.admit((EP, 1), 0, _img(70_000), Binding("s1", 0, {0: 0}), s)
    assert verdict.kind == "malformed" and "uint16" in verdict.detail


def test_series_end_marks_a_bound_series_and_an_untold_one():
    router = FrameRouter(100, 10**9)
    router.buffer_frame((EP, 2), 0, _img(), 0.0)
    assert router.series_end((EP, 2)) is None and router.buffer[(EP, 2)].ended
    router.bind((EP, 3), bind := Binding("s1", 0, {0: 4, 1: 5}))
    assert router.series_end((EP, 3)) is bind and bind.ended
    router.unbind_slots(bind, {5})
    assert bind.frame_to_slot == {0: 4}


def test_the_spec_reads_the_request_once_and_checks_its_size():
    spec = SessionSpec.from_params(_params())
    assert spec.beam == Beam(60_000.0, 33.0, 16, 6.0, 0.0) and spec.k == 16 and spec.fov == (0.0, 0.0, 1.0, 1.0)
    assert spec.beam.pixel_nm > 0 and spec.size_error(4096, 2**30) is None
    assert spec.size_error(8, 2**30).startswith("fov_nm: the reconstruction grid would be")
    assert spec.size_error(4096, 100).startswith("budget x detector_pixels^2 needs")


CHILD = """
import sys
import service.routing, service.spec, service.work, service.session
print(sorted(m for m in sys.modules if m in ("service.manager", "service.app", "service.scheduler", "service.ingest")))
"""


def test_the_domain_modules_do_not_import_the_manager_or_the_api():
    run = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"
