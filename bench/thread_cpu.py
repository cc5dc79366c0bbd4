"""CPU time of each thread of this process between two snapshots (Linux ``/proc/self/task``), by name.

Python threads are named by ``threading`` (their ``native_id``), the others by the kernel
(``comm``: e.g. libzmq's ``ZMQbg/IO/0``, a Rust sender's threads). Used by
bench/ingest_rate.py ``--per-thread`` to show which thread sets the pace.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[int, tuple[str, float]]:
    """tid -> (name, user + system CPU seconds so far); threads that end meanwhile are skipped."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        tid = int(task.name)
        out[tid] = (names.get(tid, comm), (int(fields[11]) + int(fields[12])) * TICK_S)
    return out


def report(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], wall_s: float, top: int = 8) -> list[str]:
    """Lines: the ``top`` threads by CPU seconds between the snapshots, with their share of ``wall_s`` (1.0: a whole core)."""
    used = []
    for tid, (name, cpu) in after.items():
        spent = cpu - before.get(tid, (name, 0.0))[1]
        if spent > 0:
            used.append((spent, name, tid))
    used.sort(reverse=True)
    return [f"    {name:28s} tid {tid:>7d}  cpu {spent:6.2f} s  {spent / wall_s:5.2f} of a core" for spent, name, tid in used[:top]]
