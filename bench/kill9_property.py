"""kill -9 property run with many kills (the CI test, tests/test_service_kill9.py, runs 12).

    PYTHONPATH=$PWD .venv/bin/python bench/kill9_property.py --kills 50 --seed 1

Prints kills by moment, sessions, frames checked, acknowledged frames lost and frames
on a wrong position (goal: 0 and 0), and the wall/CPU time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    from kill9_harness import Control

    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        report = Control(Path(tmp) / "sessions", kills=args.kills, seed=args.seed).run()
    print(report)
    print(f"kills {report.kills}, sessions {report.sessions}, frames checked {report.frames_checked}, "
          f"acknowledged lost {report.acknowledged_lost}, misplaced {report.misplaced}")
    print(f"wall {time.perf_counter() - t0:.1f} s, CPU (this process) {time.process_time() - c0:.1f} s")
    return 0 if report.acknowledged_lost == 0 and report.misplaced == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
