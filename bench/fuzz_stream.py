"""Long fuzzing campaign on the stream v1 decoder: Hypothesis-mutated series, decoded in a child process.

The cases and the oracle are those of the CI test (``tests/stream_fuzz.py``): valid
series with blob bit flips, truncation, block lengths and header fields set huge,
garbage and wrong-typed JSON, parts and messages dropped, duplicated or inserted.
Decoding runs in a child process, so that a segfault in C code is caught and counted
instead of ending the campaign: before each input the child writes it to
``OUT/last.pkl``; when the child dies from a signal the parent keeps that input as
``OUT/crash-N.pkl`` (the messages, a pickled list of lists of bytes) and starts a new
child. Oracle violations (a wrong frame, an untyped error) are counted as failures,
with the input, in ``OUT/failure-N.pkl``. Usage:

    PYTHONPATH=$PWD python bench/fuzz_stream.py [--seconds 180] [--examples N] [--out bench/out/fuzz]

Prints the inputs tried, crashes and failures (bench/RESULTS.md has a run).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(out: Path, deadline: float, examples: int, chunk: int) -> None:
    """Run cases until ``deadline`` (a time.time()) or ``examples`` inputs; each one written to ``out/last.pkl`` first."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from hypothesis import HealthCheck, Phase, given, settings
    from stream_fuzz import Case, case_strategy, check_case

    count = failures = 0
    last = out / "last.pkl"

    @settings(max_examples=chunk, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case_strategy())
    def run(case: Case) -> None:
        nonlocal count
        count += 1
        with open(last, "wb") as f:  # before decoding: if this input kills the process, the parent keeps it
            pickle.dump({"count": count, "messages": case.messages, "notes": case.notes}, f)
        check_case(case)

    while count < examples and time.time() < deadline:
        try:
            run()
        except Exception:  # an oracle violation: Hypothesis re-raises it with the input
            failures += 1
            with open(out / f"failure-{os.getpid()}-{failures}.pkl", "wb") as f:
                pickle.dump({"error": traceback.format_exc(), "last": pickle.loads(last.read_bytes())}, f)
    print(f"child done {count} {failures}", flush=True)


def campaign(seconds: float, examples: int, out: Path, chunk: int) -> dict:
    """Children one after the other until the time or the inputs are used up; crashes, failures and inputs counted."""
    start = time.time()
    out = out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    deadline = start + seconds
    tried = crashes = children = 0
    while tried < examples and time.time() < deadline:
        last = out / "last.pkl"
        last.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--child", "--out", str(out), "--deadline", str(deadline)]
        cmd += ["--examples", str(examples - tried), "--chunk", str(chunk)]
        run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        children += 1
        done = [line.split() for line in run.stdout.splitlines() if line.startswith("child done")]
        if done:
            tried += int(done[-1][2])
        elif last.exists():  # died inside an input: a crash (a signal, or an exit the decoder must never cause)
            state = pickle.loads(last.read_bytes())
            tried += state["count"]
            crashes += 1
            last.rename(out / f"crash-{crashes}.pkl")
            print(f"crash (exit {run.returncode}) on input {tried}: {state['notes']}", flush=True)
        else:
            print(f"child failed before any input (exit {run.returncode}): {run.stderr[-2000:]}", file=sys.stderr)
            break
    failures = len(list(out.glob("failure-*.pkl")))  # children that crashed later never reported theirs
    return {
        "out": str(out),
        "inputs": tried,
        "crashes": crashes,
        "failures": failures,
        "children": children,
        "seconds": round(time.time() - start, 1),
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="stop after this long (default 180)")
    ap.add_argument("--examples", type=int, default=10**9, help="stop after this many inputs")
    ap.add_argument("--chunk", type=int, default=100, help="inputs per Hypothesis run in a child")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "fuzz", help="crash and failure inputs go here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.out, args.deadline, args.examples, args.chunk)
        return
    res = campaign(args.seconds, args.examples, args.out, args.chunk)
    rate = res["inputs"] / max(res["seconds"], 1e-9)
    print(
        f"{res['inputs']} inputs tried in {res['seconds']} s ({rate:.0f}/s, {res['children']} child process(es)): "
        f"{res['crashes']} crashes, {res['failures']} oracle failures; {res['date']}, Python {res['python']}"
    )
    if res["crashes"] or res["failures"]:
        print(f"inputs kept in {res['out']}")
        sys.exit(1)


if __name__ == "__main__":
    main()
