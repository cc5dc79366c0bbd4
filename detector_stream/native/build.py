"""Compile the receive loop (``recv_batch.c``) once per source version and load it; None, with the reason, where it cannot be.

The library is built with the system C compiler (``$CC``, else ``cc``) into a cache
folder (``$PTYCHOSCAN_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/ptychoscan`` or
``~/.cache/ptychoscan``), named by the hash of its sources, so that an edited source is
rebuilt and concurrent builders never see a half-written file (each writes its own
temporary file and renames it into place). It links nothing but libc and libm: libzmq
and bitshuffle are reached through the copies the process has loaded already
(``detector_stream.native.loop``). ``PTYCHOSCAN_NATIVE_INGEST=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("recv_batch.c")
SOURCES = tuple(SOURCE.with_name(name) for name in ("recv_batch.c", "md5.c", "md5.h", "shuffle.c", "shuffle.h"))
"""Every file the library is built from: all of them name its version (an edited header rebuilds it too)."""
ENV_SWITCH = "PTYCHOSCAN_NATIVE_INGEST"
"""``0``: never use the compiled loop (the Python receive path, as before)."""
ENV_CACHE = "PTYCHOSCAN_NATIVE_CACHE"
"""Folder of the built library (created if missing)."""
COMPILE_TIMEOUT_S = 120.0


class NativeUnavailable(RuntimeError):
    """Why the compiled receive loop cannot be used here (the Python path is used instead)."""


def enabled() -> bool:
    """False when ``PTYCHOSCAN_NATIVE_INGEST`` is ``0`` (or ``false``/``no``/``off``)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ptychoscan"


def library_path() -> Path:
    """Where the library of this source version is (or will be) built."""
    h = hashlib.sha256()
    for source in SOURCES:
        h.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    digest = h.hexdigest()[:16]
    return cache_dir() / f"recv_batch-{digest}-{sys.platform}-{platform.machine()}.so"


def build(path: Path | None = None) -> Path:
    """Compile the library to ``path`` (default ``library_path()``) unless it is there; NativeUnavailable says why not."""
    path = path or library_path()
    if path.exists():
        return path
    if sys.byteorder != "little" or not sys.platform.startswith("linux"):
        raise NativeUnavailable(f"the compiled receive loop is built for little-endian Linux only (this is {sys.platform}, {sys.byteorder}-endian)")
    compiler = shlex.split(os.environ.get("CC", "")) or [c for c in (shutil.which("cc") or shutil.which("gcc"),) if c]
    if not compiler:
        raise NativeUnavailable("no C compiler (set CC, or install gcc) to build the compiled receive loop")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem + "-", suffix=".so.tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise NativeUnavailable(f"cannot write the compiled receive loop to {path.parent}: {err}") from None
    try:
        units = [str(s) for s in SOURCES if s.suffix == ".c"]
        cmd = [*compiler, "-O2", "-shared", "-fPIC", "-std=gnu11", *units, "-o", tmp, "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            raise NativeUnavailable(f"compiling {SOURCE.name} failed ({' '.join(cmd)}): {done.stderr.strip()[-500:]}")
        os.replace(tmp, path)
    except (OSError, subprocess.SubprocessError) as err:
        raise NativeUnavailable(f"compiling {SOURCE.name} failed: {err}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


_failed: NativeUnavailable | None = None
"""why the build or load failed in this process: not tried again (a compiler that fails takes seconds each time)."""


@functools.lru_cache(maxsize=1)
def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(build()))
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib.ps_new.restype, lib.ps_new.argtypes = p, [ctypes.POINTER(p)]
    lib.ps_free.restype, lib.ps_free.argtypes = None, [p]
    lib.ps_recv_batch.restype = ctypes.c_int
    lib.ps_recv_batch.argtypes = [p, p, ctypes.c_int, p, p, p, i64]
    for name in ("ps_raw", "ps_part_lens", "ps_blobs"):
        getattr(lib, name).restype, getattr(lib, name).argtypes = p, [p]
    for name in ("ps_raw_len", "ps_raw_capacity", "ps_nparts", "ps_blobs_len", "ps_blobs_capacity", "ps_arena_used", "ps_arena_miss"):
        getattr(lib, name).restype, getattr(lib, name).argtypes = i64, [p]
    lib.ps_set_forward.restype, lib.ps_set_forward.argtypes = None, [p, p]
    lib.ps_set_keep_blobs.restype, lib.ps_set_keep_blobs.argtypes = None, [p, ctypes.c_int]
    lib.ps_forward_counts.restype, lib.ps_forward_counts.argtypes = None, [p, p]
    lib.ps_send_batch.restype = ctypes.c_int
    lib.ps_send_batch.argtypes = [p, p, p, p, p, ctypes.c_int]
    lib.ps_md5_hex.restype, lib.ps_md5_hex.argtypes = None, [p, ctypes.c_char_p, i64, ctypes.c_char_p]
    lib.ps_avx2_shuffle.restype, lib.ps_avx2_shuffle.argtypes = ctypes.c_int, [p, i64]
    lib.ps_set_avx2_shuffle.restype, lib.ps_set_avx2_shuffle.argtypes = None, [p, ctypes.c_int]
    lib.ps_shuffle_avx2_usable.restype, lib.ps_shuffle_avx2_usable.argtypes = ctypes.c_int, []
    lib.ps_shuffle_eightelem_avx2.restype, lib.ps_shuffle_eightelem_avx2.argtypes = i64, [p, p, i64, i64]
    return lib


def load_library() -> ctypes.CDLL:
    """The built library, with its functions' signatures set (built first if needed); NativeUnavailable says why not (once
    it failed in this process, at once)."""
    global _failed
    if _failed is not None:
        raise _failed
    try:
        return _load()
    except NativeUnavailable as err:
        _failed = err
        raise
    except OSError as err:  # a library that does not load
        _failed = NativeUnavailable(f"cannot load the compiled receive loop: {err}")
        raise _failed from None
