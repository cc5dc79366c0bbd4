"""OpenMP threads of the frame codec, set for the calling thread only.

bitshuffle's LZ4 (de)compression runs its blocks in an OpenMP parallel loop, on its
own vendored libgomp (``bitshuffle.libs``), with as many threads as the machine has
cores. For detector frames of a few 8 KiB blocks that buys nothing, and after every
call the pool's worker threads spin-wait for more work: measured on 2 cores with 4
detectors at 1,000 frames/s each, the spinning took a third of a core from the compute
worker and doubled the decision latency (bench/RESULTS.md). The receiver's thread
therefore decodes with one OpenMP thread.

OpenMP keeps the thread count per calling thread (the ``nthreads-var`` ICV), so this
changes nothing for torch's intra-op threads or any other thread. Every OpenMP runtime
loaded in the process is set (GNU libgomp, LLVM libomp, Intel libiomp5: a bitshuffle
built against a shared runtime shares it with others); on a platform without
``/proc/self/maps`` (macOS) it does nothing, and says so once in the log.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

log = logging.getLogger(__name__)


_RUNTIMES = ("libgomp", "libomp", "libiomp5")
_reported_none = False


def loaded_openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes loaded in this process (from ``/proc/self/maps``; [] where that is unavailable)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5].strip()).name.startswith(_RUNTIMES):
            paths.add(fields[5].strip())
    return sorted(paths)


def set_codec_threads(threads: int) -> int:
    """Use ``threads`` OpenMP threads in this thread's (de)compression calls; returns how many runtimes were set."""
    if threads < 1:
        raise ValueError(f"codec threads must be >= 1, got {threads}")
    import bitshuffle  # noqa: F401  (loads its OpenMP runtime, if it has one)

    global _reported_none
    done = 0
    for path in loaded_openmp_runtimes():
        try:
            ctypes.CDLL(path).omp_set_num_threads(ctypes.c_int(threads))
            done += 1
        except (OSError, AttributeError) as err:
            log.debug("cannot set OpenMP threads in %s (%s)", path, err)
    if done == 0 and not _reported_none:
        _reported_none = True
        log.info("no OpenMP runtime found to set: bitshuffle decodes with its own default threads")
    return done
