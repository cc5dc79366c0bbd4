"""Each frame is taken where the beam is at its trigger: parking (or re-listing) between triggers of one series moves the later frames.

Before, the whole series was computed at its first trigger: a step scan that parks the beam
before each trigger (bluesky's way) got every frame from the first position, silently.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from detector_stream.receiver import StreamReceiver
from sim_microscope.detector import SimDetector
from sim_microscope.frame_source import SyntheticSource, to_counts
from sim_microscope.scan_controller import ScanController
from sim_microscope.scan_errors import ScanErrors

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


def test_scan_errors_move_the_frames_but_not_the_readback():
    """With scan errors the frames come from where the beam lands (distortion about the field's centre, jitter drawn once
    per list) while the readback reports where it was sent: the microscope does not know its own errors."""
    errors = ScanErrors(jitter_nm=0.01, distortion=(0.05, 0.0, 0.0, 0.05), drift_nm_per_position=(0.001, 0.0), seed=3)
    detector = SimDetector(SyntheticSource(32), port=0, noise="none", scan=ScanController(0.0, errors, centre_nm=(0.2, 0.1)))
    for key, value in {"frame_time": 0.0, "trigger_mode": "ints", "nimages": 4, "ntrigger": 1}.items():
        detector.set_config(key, value)
    sent = np.array([(0.0, 0.0), (0.1, 0.0), (0.2, 0.1), (0.4, 0.3)])
    landed = errors.true_positions(sent, (0.2, 0.1), 0)
    assert np.abs(landed - sent).max() > 0.01
    detector.arm()
    receiver = StreamReceiver([detector.endpoint], lambda ep, e: None)
    try:
        with receiver:
            detector.scan.set_positions(sent)
            detector.trigger()
        np.testing.assert_array_equal(detector.last_images, _expected(detector.source, landed))
        np.testing.assert_allclose(detector.scan.readback[1], sent)
        assert not np.array_equal(detector.last_images, _expected(detector.source, sent)), "the frames moved with the beam"
        assert detector.scan.placed == 4
        again = detector.scan.set_positions(sent) and detector.scan.positions_for(np.arange(4))
        np.testing.assert_allclose(again, errors.true_positions(sent, (0.2, 0.1), 4), err_msg="the drift goes on, a new jitter draw")
    finally:
        detector.close()


def test_the_demo_hands_its_scan_errors_to_sim_detector_and_bad_ones_are_one_line_errors(capsys):
    from ptychoscan.cli import build_parser, main
    from ptychoscan.closed_loop import scan_error_args
    from ptychoscan.commands.sim_detector import scan_controller_from_args

    errors = ScanErrors(jitter_nm=0.02, drift_nm_per_position=(0.001, -0.002), distortion=(0.01, 0.002, 0.0, 0.01), seed=7)
    args = build_parser().parse_args(["sim-detector", *scan_error_args(errors)])
    scan = scan_controller_from_args(args, SyntheticSource(16))
    assert scan.errors == errors and scan.centre_nm == (0.0, 0.0)
    assert scan_error_args(None) == [] and scan_error_args(ScanErrors()) == []
    assert main(["sim-detector", "--jitter-nm", "-1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: scan errors: jitter_nm") and err.count("\n") == 1


def test_bad_scan_errors_are_refused_when_made_not_on_every_positions_put():
    """Regression (review): a negative jitter seed was accepted and then failed every PUT positions with numpy's error (500);
    an infinite jitter landed the beam at +-inf silently."""
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="seed"):
        ScanErrors(jitter_nm=0.01, seed=-1)
    with pytest.raises(pydantic.ValidationError, match="jitter_nm"):
        ScanErrors(jitter_nm=float("inf"))


def test_a_position_list_arriving_during_a_trigger_cannot_split_frames_from_readback():
    """Regression (review): the trigger read where the beam lands and where it was sent in two locked steps; a list PUT from
    another REST thread in between gave frames from the old list and a readback (the service's measured positions) from the new."""
    old, new = np.array([(0.0, 0.0), (0.1, 0.0)]), np.array([(0.3, 0.3), (0.4, 0.3)])
    threads: list[threading.Thread] = []

    class Interleaving(ScanController):
        def _positions(self, frames, commanded):
            if not threads:  # another thread's PUT arrives while the trigger reads the positions
                threads.append(threading.Thread(target=self.set_positions, args=(new,)))
                threads[0].start()
                time.sleep(0.05)
            return super()._positions(frames, commanded)

    detector = SimDetector(SyntheticSource(16), port=0, noise="none", scan=Interleaving(0.0))
    for key, value in {"frame_time": 0.0, "trigger_mode": "ints", "nimages": 2, "ntrigger": 1}.items():
        detector.set_config(key, value)
    detector.scan.set_positions(old)
    detector.arm()
    try:
        with StreamReceiver([detector.endpoint], lambda ep, e: None):
            detector.trigger()
        threads[0].join()
        np.testing.assert_array_equal(detector.last_images, _expected(detector.source, old))
        np.testing.assert_allclose(detector.scan.readback[1], old, err_msg="readback from the new list, frames from the old one")
    finally:
        detector.close()
