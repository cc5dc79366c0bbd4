"""kill -9 at random moments (tests/kill9_harness.py): no acknowledged frame lost, none on a wrong position, every session done.

Bounded for CI (12 kills); PTYCHOSCAN_KILL9_KILLS=60 (or bench/kill9_property.py) runs more.
"""

from __future__ import annotations

import os

from kill9_harness import Control


def test_kill9_at_random_moments_loses_and_misplaces_nothing(tmp_path):
    kills = int(os.environ.get("PTYCHOSCAN_KILL9_KILLS", "12"))
    report = Control(tmp_path / "sessions", kills=kills, seed=int(os.environ.get("PTYCHOSCAN_KILL9_SEED", "7"))).run()
    assert report.kills == kills
    assert report.acknowledged_lost == 0, report
    assert report.misplaced == 0, report
    assert report.frames_checked >= 24 * report.sessions
    print(report)
