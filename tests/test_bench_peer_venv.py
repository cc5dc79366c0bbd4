"""bench/peer_venv.py without building anything: a missing venv, an existing one checked, one whose check fails."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "peer_venv.py"


@pytest.fixture
def peer_venv(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("peer_venv", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "VENVS", tmp_path)
    return module


def _fake_venv(root: Path, name: str) -> Path:
    python = root / name / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    return python


def test_a_missing_venv_is_not_built_without_install_and_the_error_says_how(peer_venv, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"build it with: python bench/peer_venv.py libertem-live"):
        peer_venv.ensure_peer("libertem-live", install=False)
    assert not (tmp_path / "libertem-live").exists()


def test_an_existing_venv_is_checked_not_rebuilt(peer_venv, tmp_path):
    python = _fake_venv(tmp_path, "tool")
    assert peer_venv.ensure_venv("tool", ["never-installed==0"], check="import json") == python
    with pytest.raises(RuntimeError, match=r"does not pass its check: ModuleNotFoundError: No module named 'no_such_module'"):
        peer_venv.ensure_venv("tool", ["never-installed==0"], check="import no_such_module")


def test_every_peer_names_pinned_requirements_and_a_check():
    spec = importlib.util.spec_from_file_location("peer_venv_table", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, (requirements, check) in module.PEERS.items():
        assert any("==" in r for r in requirements) and check.startswith("import "), name
