"""The documentation names files and benchmarks that exist: every repository path in backticks (under the
project's own folders) and every `python -m bench.NAME` in README.md and docs/*.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FOLDERS = ("api", "bench", "cli", "core", "docs", "migrations", "service", "tests", "worker")
PATH = re.compile(r"`((?:" + "|".join(FOLDERS) + r")/[A-Za-z0-9_./-]*[A-Za-z0-9_])`")
MODULE = re.compile(r"python3? -m (bench\.[a-z0-9_]+)")


def named_paths(text: str) -> set[str]:
    return set(PATH.findall(text))


def named_benches(text: str) -> set[str]:
    return set(MODULE.findall(text))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_paths_exist(doc: Path) -> None:
    missing = sorted(p for p in named_paths(doc.read_text()) if not (REPO / p).exists())
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_benches_exist(doc: Path) -> None:
    missing = sorted(
        m for m in named_benches(doc.read_text()) if not (REPO / (m.replace(".", "/") + ".py")).exists()
    )
    assert not missing, f"{doc.name} runs benches that do not exist: {missing}"


def test_the_patterns_find_what_is_missing() -> None:
    text = "see `bench/no_such_bench.py` and `core/models/latency.py`, then `python -m bench.nothing_here`"
    assert named_paths(text) == {"bench/no_such_bench.py", "core/models/latency.py"}
    assert named_benches(text) == {"bench.nothing_here"}
    assert not (REPO / "bench/no_such_bench.py").exists()
