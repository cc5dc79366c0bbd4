"""The bluesky parts one at a time, without the service: the ophyd devices on an in-process simulated detector, the order checks, the agent.

Skipped without the bluesky packages (in the ``dev`` extra), except under
PTYCHOSCAN_REQUIRE_TOOLS=1 (set by .ci/run), where that fails.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

try:
    import bluesky.preprocessors as bpp
    from bluesky import RunEngine
    from bluesky_adaptive.utils import route_suggestions
except ImportError as err:
    if os.environ.get("PTYCHOSCAN_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{err.name} is not installed (pip install -e '.[bluesky]')", pytrace=False)
    pytest.skip(f"{err.name} is not installed (pip install -e '.[bluesky]')", allow_module_level=True)

from detector_stream.receiver import StreamReceiver
from ptychoscan_bluesky import (
    Acquisition,
    OrderError,
    PtychoscanAgent,
    ScanBeam,
    SimplonDetector,
    SimplonError,
    acquire_in_service_order_in_run,
    evaluate_acquisition,
)
from service.models import AskResponse

POSITIONS = [(0.05, 0.0), (0.4, 0.3), (0.2, 0.1), (0.45, 0.05)]


def test_devices_arm_park_and_trigger_one_series_with_the_beam_parked_at_each_frame(sim_detector):
    detector_sim, url, _ = sim_detector
    beam, detector = ScanBeam(url, name="beam"), SimplonDetector(url, name="det")
    suggestions = [{"_id": f"0:{i}", "x_nm": x, "y_nm": y} for i, (x, y) in enumerate(POSITIONS)]
    got: list[Acquisition] = []
    documents: list[tuple[str, dict]] = []

    @bpp.run_decorator()
    def plan():
        got.append((yield from acquire_in_service_order_in_run(suggestions, [beam], [detector])))

    frames = []
    receiver = StreamReceiver([detector_sim.endpoint], lambda ep, e: frames.append(e) if hasattr(e, "image") else None)
    try:
        with receiver:
            RE = RunEngine({}, context_managers=[])
            RE(plan(), lambda name, doc: documents.append((name, doc)))
            deadline = time.monotonic() + 10
            while len(frames) < len(POSITIONS) and time.monotonic() < deadline:
                time.sleep(0.01)
        assert detector.trigger_mode.get() == "inte" and detector.ntrigger.get() == 4
    finally:
        beam.close()
        detector.close()
    (acq,) = got
    assert acq.series == detector_sim.sequence_id == 1 and acq.ids == tuple(s["_id"] for s in suggestions)
    np.testing.assert_allclose(acq.measured_nm, POSITIONS)
    series, where = detector_sim.scan.readback
    assert series == 1 and detector_sim.state == "idle"  # disarmed at unstage
    np.testing.assert_allclose(where, POSITIONS)  # each frame where the beam was parked at its trigger
    assert sorted(f.frame for f in frames) == list(range(len(POSITIONS)))
    events = [doc["data"] for name, doc in documents if name == "event"]
    assert [e["det_series_id"] for e in events] == [1] * 4 and [e["det_last_frame"] for e in events] == [0, 1, 2, 3]
    assert [e["beam_x"] for e in events] == [x for x, _ in POSITIONS]


def test_a_refused_command_is_one_line_naming_it(sim_detector):
    _, url, _ = sim_detector
    detector, beam = SimplonDetector(url, name="det"), ScanBeam(url, name="beam")
    try:
        with pytest.raises(SimplonError, match=r"^PUT /detector/api/1.8.0/command/trigger: HTTP 409: cannot trigger while the detector is idle"):
            detector.trigger().wait(10)
        with pytest.raises(ValueError, match=r"a beam position is \(x, y\) in nm"):
            beam.set(0.3)
    finally:
        detector.close()
        beam.close()


def test_bluesky_adaptive_reorders_a_batch_so_the_evaluation_refuses_what_is_out_of_order():
    """Why the plan exists: bluesky-adaptive's default plans route points by shortest path (frame i would be filed at position i)."""
    suggestions = [{"_id": f"3:{i}", "x_nm": x, "y_nm": y} for i, (x, y) in enumerate(POSITIONS)]
    routed = route_suggestions(suggestions)
    assert [s["_id"] for s in routed] != [s["_id"] for s in suggestions]
    good = Acquisition(7, tuple(s["_id"] for s in suggestions), tuple(POSITIONS))
    assert evaluate_acquisition(good, suggestions)[2] == {"_id": "3:2", "series": 7, "frame": 2, "x_measured_nm": 0.2, "y_measured_nm": 0.1}
    with pytest.raises(OrderError, match="series 7 is out of the service's order: frame 1 was taken at suggestion"):
        evaluate_acquisition(Acquisition(7, tuple(s["_id"] for s in routed), tuple(POSITIONS)), suggestions)
    with pytest.raises(TypeError, match="reorder points by shortest path"):
        evaluate_acquisition("a-run-uid", suggestions)  # what default_acquire returns


class FakeClient:
    """The client calls the agent makes, answered from a list of batches (then done), recorded."""

    def __init__(self, batches: list[list[tuple[float, float]]]) -> None:
        self.batches = batches
        self.calls: list[tuple] = []

    def ask(self, sid, poll_s=None, wait_s=None) -> AskResponse:
        self.calls.append(("ask", sid))
        told = sum(1 for c in self.calls if c[0] == "tell")
        if told >= len(self.batches):
            return AskResponse(session_id=sid, batch_id=None, positions_nm=[], done=True)
        return AskResponse(session_id=sid, batch_id=told, positions_nm=[list(p) for p in self.batches[told]], done=False)

    def tell(self, sid, batch_id, series, measured=None):
        self.calls.append(("tell", sid, batch_id, series, measured))

    def abandon(self, sid, batch_id):
        self.calls.append(("abandon", sid, batch_id))


def test_the_agent_suggests_the_service_order_tells_the_series_and_refuses_frames_out_of_order():
    client = FakeClient([POSITIONS[:2], POSITIONS[2:]])
    agent = PtychoscanAgent(client, "s1")
    first = agent.suggest(1)  # the service's batch, whatever n_points says
    assert first == [{"_id": "0:0", "x_nm": 0.05, "y_nm": 0.0}, {"_id": "0:1", "x_nm": 0.4, "y_nm": 0.3}]
    swapped = [{"_id": "0:0", "series": 5, "frame": 1}, {"_id": "0:1", "series": 5, "frame": 0}]
    with pytest.raises(OrderError, match=r"measured as frames \[1, 0\]"):
        agent.ingest(swapped)
    assert not [c for c in client.calls if c[0] == "tell"]
    agent.register_failures(first)
    assert client.calls[-1] == ("abandon", "s1", 0)
    again = agent.suggest()
    agent.ingest(evaluate_acquisition(Acquisition(5, tuple(s["_id"] for s in again), tuple(POSITIONS[:2])), again))
    assert client.calls[-1] == ("tell", "s1", 0, 5, [list(POSITIONS[0]), list(POSITIONS[1])])
    assert agent.should_stop() == (False, None) and agent.suggest()[0]["_id"] == "1:0"
    agent.ingest(evaluate_acquisition(Acquisition(6, ("1:0", "1:1"), tuple(POSITIONS[2:])), agent.suggest()))
    assert agent.should_stop() == (True, "session s1 is done") and agent.told == [(0, 5), (1, 6)]
    with pytest.raises(RuntimeError, match="is done: there is nothing left to suggest"):
        agent.suggest()
