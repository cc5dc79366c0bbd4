"""Docs and help texts cite only files in the repository; the design document they cite is docs/DESIGN.md and has the sections they name."""

from __future__ import annotations

import re
import subprocess

from tests.subprocess_env import REPO


def tracked_text_files() -> list[str]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [n for n in names if n.endswith((".py", ".md", ".yaml", ".yml", ".toml", ".sh", "Makefile", "Dockerfile"))]


def test_nothing_cites_a_design_file_outside_the_repository():
    design = (REPO / "docs" / "DESIGN.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\.", design, re.MULTILINE)}
    problems = []
    for name in tracked_text_files():
        if name == "tests/test_docs_references.py":
            continue
        text = (REPO / name).read_text(errors="replace")
        if "../shared" in text or "shared/DESIGN" in text:
            problems.append(f"{name}: cites a file outside the repository")
        for match in re.finditer(r"(\S*)DESIGN(?:\.md)?(?: section (\d+))?", text):
            if match[1].strip("`(\"'") != "docs/":
                problems.append(f"{name}: {match[0]!r} is not docs/DESIGN.md")
            if match[2] is not None and int(match[2]) not in sections:
                problems.append(f"{name}: docs/DESIGN.md has no section {match[2]}")
    assert problems == []
