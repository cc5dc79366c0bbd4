"""Virtual environments for peer tools (abTEM, py4DSTEM, LiberTEM-live) under bench/.venvs/, built on first use.

A peer tool often pins what the project cannot take (numpy<2, an older numba), so it gets
a venv of its own and runs there in a subprocess; it never enters the project's
environment. ``bench/.venvs/`` is git-ignored.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"


def venv_python(name: str) -> Path:
    """The python of venv ``name`` (bench/.venvs/NAME/bin/python), whether or not it exists yet."""
    return VENVS / name / "bin" / "python"


def ensure_venv(name: str, requirements: list[str], *, check: str | None = None, install: bool = True) -> Path:
    """The python of venv ``name``, building it (python3 -m venv; pip install ``requirements``) if missing.

    ``check``: Python code run in the venv afterwards (e.g. ``import abtem``); RuntimeError
    with its last error line if it fails. ``install=False``: FileNotFoundError instead of
    building a missing venv.
    """
    python = venv_python(name)
    if not python.exists():
        if not install:
            raise FileNotFoundError(f"no venv at {VENVS / name}; build it with: python bench/peer_venv.py {name}")
        print(f"building {VENVS / name} ({' '.join(requirements)}) ...", flush=True)
        subprocess.run(["python3", "-m", "venv", str(VENVS / name)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    if check is not None:
        result = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["(no output)"]
            raise RuntimeError(f"the venv at {VENVS / name} does not pass its check: {lines[-1]}")
    return python


PEERS = {
    "abtem": (["abtem==1.0.11"], "import abtem, numpy, numba"),
    "py4dstem": (["py4DSTEM==0.14.18", "numpy<2"], "import py4DSTEM"),
    "libertem-live": (["libertem-live==0.3.0"], "import libertem_live, libertem_dectris"),
}
"""Each peer venv: (pip requirements, import check)."""


def ensure_peer(name: str, install: bool = True) -> Path:
    """The python of the peer venv ``name`` (a key of ``PEERS``), built on first use."""
    requirements, check = PEERS[name]
    return ensure_venv(name, requirements, check=check, install=install)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build a peer tool's venv under bench/.venvs/ (nothing happens if it exists).")
    parser.add_argument("name", choices=sorted(PEERS))
    print(ensure_peer(parser.parse_args().name))
