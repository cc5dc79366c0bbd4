"""The ingest's store step alone (``SessionManager.on_events`` of decoded runs into a told session), us per frame, for code trees side by side.

The frames are those of bench/ingest_profile.py (64x64 uint16 bs16-lz4, decoded by the
compiled receive loop, in drains of ``--batch``); each tree's ``on_events`` of all of them
into a fresh told session is timed in thread CPU time with Python's garbage collector off
(the events are all held alive: a collection would charge their walk to whichever line it
interrupts), the file's flush left out. Each tree runs in a subprocess of its own, the trees
alternately, ``--rounds`` times, each subprocess timing ``--repeats`` fresh sessions; printed:
the least and the median us/frame of each tree. To compare code before and after a change,
export the earlier version (``git archive REV | tar -x -C DIR``) and name both trees:

    PYTHONPATH=$PWD python bench/store_run.py --trees /tmp/before . [--frames 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(tree: Path, frames: int, batch: int, repeats: int) -> list[float]:
    """us/frame (thread CPU) of ``repeats`` stores of the same decoded frames with ``tree``'s code (imported from it)."""
    sys.path[:0] = [str(tree), str(tree / "bench")]
    import ingest_profile as ip

    _, _, drains = ip.time_native(ip.series_messages(frames), batch)
    out = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            manager, sid = ip.told_manager(Path(tmp), frames, "tcp://127.0.0.1:1")
            s = manager.sessions[sid]
            s.flush_frames = lambda: None  # the file write is not this step's
            gc.collect()
            gc.disable()
            t0 = time.thread_time()
            for events in drains:
                manager.on_events("tcp://127.0.0.1:1", events)
            cpu = time.thread_time() - t0
            gc.enable()
            assert s.frames_received == frames, s.frames_received
            manager.close()
        out.append(cpu / frames * 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", nargs="+", default=["."], help="source trees to compare (each has service/, detector_stream/, bench/)")
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=512, help="messages per drain (the receiver's max_batch)")
    ap.add_argument("--rounds", type=int, default=3, help="subprocesses per tree, the trees alternately")
    ap.add_argument("--repeats", type=int, default=3, help="timed stores per subprocess")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child).resolve(), args.frames, args.batch, args.repeats)))
        return
    trees = [Path(t).resolve() for t in args.trees]
    got: dict[Path, list[float]] = {t: [] for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            cmd = [sys.executable, __file__, "--child", str(tree), "--frames", str(args.frames), "--batch", str(args.batch), "--repeats", str(args.repeats)]
            env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree, check=True)
            got[tree] += json.loads(done.stdout.strip().splitlines()[-1])
    print(f"store (on_events) of {args.frames} 64x64 uint16 frames, drains of {args.batch}, gc off: us/frame thread CPU")
    for tree, us in got.items():
        print(f"{tree!s:40s} least {min(us):6.2f}  median {statistics.median(us):6.2f}  (n={len(us)})")


if __name__ == "__main__":
    main()
