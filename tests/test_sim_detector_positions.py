"""Each frame is taken where the beam is at its trigger: parking (or re-listing) between triggers of one series moves the later frames.

Before, the whole series was computed at its first trigger: a step scan that parks the beam
before each trigger (bluesky's way) got every frame from the first position, silently.
"""

from __future__ import annotations

import time

import numpy as np

from detector_stream.receiver import StreamReceiver
from sim_microscope.detector import SimDetector
from sim_microscope.frame_source import SyntheticSource, to_counts

PARKED = [(0.05, 0.0), (0.2, 0.1), (0.4, 0.3)]


def _expected(source: SyntheticSource, positions) -> np.ndarray:
    return to_counts(source.patterns(np.asarray(positions, dtype=np.float64)), "uint16", 10_000.0, np.random.default_rng(0), "none")


def _armed(config: dict) -> SimDetector:
    detector = SimDetector(SyntheticSource(32), port=0, noise="none")
    for key, value in {"frame_time": 0.0, **config}.items():
        detector.set_config(key, value)
    detector.arm()
    return detector


def test_frames_follow_the_beam_parked_between_internal_triggers():
    detector = _armed({"trigger_mode": "inte", "ntrigger": len(PARKED)})
    frames = []
    receiver = StreamReceiver([detector.endpoint], lambda ep, e: frames.append(e) if hasattr(e, "image") else None)
    try:
        with receiver:
            for where in PARKED:
                detector.scan.park(where)
                assert detector.trigger() == 1
            deadline = time.monotonic() + 10
            while len(frames) < len(PARKED) and time.monotonic() < deadline:
                time.sleep(0.01)
        got = np.stack([f.image for f in sorted(frames, key=lambda f: f.frame)])
        np.testing.assert_array_equal(got, _expected(detector.source, PARKED))
        np.testing.assert_allclose(detector.scan.readback[1], PARKED)
        assert detector.state == "idle"
    finally:
        detector.close()


def test_positions_listed_anew_between_triggers_move_only_the_later_frames():
    detector = _armed({"trigger_mode": "ints", "nimages": 2, "ntrigger": 2})
    first = [(0.0, 0.0), (0.1, 0.0), (0.2, 0.0), (0.3, 0.0)]
    second = [(0.0, 0.0), (0.1, 0.0), (0.35, 0.2), (0.45, 0.25)]
    receiver = StreamReceiver([detector.endpoint], lambda ep, e: None)
    try:
        with receiver:
            detector.scan.set_positions(first)
            detector.trigger()
            detector.scan.set_positions(second)
            detector.trigger()
        np.testing.assert_array_equal(detector.last_images, _expected(detector.source, first[:2] + second[2:]))
        np.testing.assert_allclose(detector.scan.readback[1], first[:2] + second[2:])
    finally:
        detector.close()
