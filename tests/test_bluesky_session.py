"""A bluesky RunEngine runs an adaptive session to done against ``ptychoscan serve`` and ``ptychoscan sim-detector`` (processes).

bluesky-adaptive's ``optimize`` drives ``PtychoscanAgent`` (ask / tell over
``ptychoscan.client``), the ophyd ``SimplonDetector`` (armed once per batch; its series id
is what the agent tells) and ``ScanBeam`` (parks the beam at each position before its
trigger). Every stored frame must be the simulated detector's pattern at the position the
service filed it under: a plan that reordered the points (bluesky-adaptive's own plans route
them by shortest path) would file frames at the wrong positions, and one that did so is
refused before anything is told. The bluesky packages are in the ``dev`` extra; without them
the test skips, except under PTYCHOSCAN_REQUIRE_TOOLS=1 (set by .ci/run), where it fails.
"""

from __future__ import annotations

import os
from dataclasses import replace

import h5py
import numpy as np
import pytest

try:
    from bluesky import RunEngine
    from bluesky_adaptive.plans import optimize

    from ptychoscan_bluesky import OrderError, PtychoscanAgent, ScanBeam, SimplonDetector, acquire_in_service_order, session_plan
except ImportError as err:
    if os.environ.get("PTYCHOSCAN_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{err.name} is not installed (pip install -e '.[bluesky]')", pytrace=False)
    pytest.skip(f"{err.name} is not installed (pip install -e '.[bluesky]')", allow_module_level=True)

import recon.hdf5_filters  # noqa: F401  (session files' patterns are bitshuffle-LZ4: a reader registers the filter)
from ptychoscan.client import Client
from sim_microscope.frame_source import SyntheticSource, to_counts
from tests.live_stack import LiveStack

KEY = "bluesky-test-key"
K = 16
DOSE = 10_000.0  # sim-detector's default electrons per frame


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """``ptychoscan serve`` (the real reconstruction) and ``ptychoscan sim-detector --specimen synthetic --noise none`` as processes."""
    out = tmp_path_factory.mktemp("bluesky")
    with LiveStack(out, KEY, real_reconstruction=True, specimen="synthetic", detector_pixels=K, frame_time_s=0.001, extra_detector_args=["--noise", "none"]) as live:
        yield live


def reversed_order(suggestions, actuators, sensors=None, md=None, **kwargs):
    """A plan that acquires a batch backwards, as a shortest-path route may: frame 0 at the last position."""
    return (yield from acquire_in_service_order(list(reversed(suggestions)), actuators, sensors, md, **kwargs))


@pytest.mark.slow
def test_a_run_engine_runs_a_session_to_done_in_the_services_order(stack):
    budget, chunk = 12, 4
    beam = ScanBeam(stack.microscope, name="beam")
    detector = SimplonDetector(stack.microscope, name="det")
    documents: list[tuple[str, dict]] = []
    RE = RunEngine({}, context_managers=[])
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    with Client(stack.url, api_key=KEY, ask_wait_s=120.0) as client:
        body = {"detector_endpoint": f"tcp://127.0.0.1:{stack.zmq_port}", "fov_nm": [0.0, 0.0, 1.0, 1.0], "budget": budget, "chunk": chunk,
                "strategy": "sparse-grid", "detector_pixels": K, "detector_pixel_mrad": 6.0, "detector_bit_depth": detector.bit_depth_image.get()}
        agent = PtychoscanAgent.start(client, body, poll_s=5.0)

        # a plan that reorders is refused before anything is told, and its batch is abandoned (issued again)
        problem = agent.problem(beam, detector)
        with pytest.raises(OrderError, match="out of the service's order"):
            RE(optimize(replace(problem, acquisition_plan=reversed_order), iterations=1))
        assert agent.told == [] and client.session(agent.session_id).frames_received == 0

        RE(session_plan(agent, beam, detector))
        final = client.session(agent.session_id)
        assert final.state == "done" and final.frames_received == budget and len(agent.told) == budget // chunk
        file = stack.out / "sessions" / final.file

    # the series the agent told are the detector's series ids as the run's events recorded them
    events = [doc for name, doc in documents if name == "event" and "det_series_id" in doc["data"]]
    assert sorted({e["data"]["det_series_id"] for e in events}) == sorted({s for _, s in agent.told} | {1})  # series 1: the refused one
    assert len(events) == budget + chunk

    # every stored frame is the simulated pattern at the position it is filed under, and was taken where it was issued
    with h5py.File(file, "r") as f:
        patterns = f["patterns"][:]
        issued = f["positions_issued_nm"][:]
        measured = f["positions_measured_nm"][:]
    np.testing.assert_allclose(measured, issued, atol=1e-9)
    expected = to_counts(SyntheticSource(K).patterns(issued), patterns.dtype.name, DOSE, np.random.default_rng(0), "none")
    assert len(np.unique(expected.reshape(budget, -1), axis=0)) > budget // 2, "the positions' patterns differ (the check can fail)"
    np.testing.assert_array_equal(patterns, expected)
    beam.close()
    detector.close()
