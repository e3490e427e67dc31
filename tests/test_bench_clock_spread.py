"""Smoke test of bench/clock_spread.py on a tiny teacher and a student exported from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import clock_spread
from core.export.student import save_student
from tests.utils.models import tiny_pair


def test_clock_spread_times_sessions_in_fresh_processes_and_here(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, student = tiny_pair(tmp_path / "teacher")
    student_dir = save_student(student, tmp_path / "student")
    out = tmp_path / "spread.json"
    argv = [str(student_dir), str(tmp_path / "teacher"), "--processes", "2", "--runs", "2", "--seconds", "1"]
    clock_spread.main([*argv, "--in-process", "--json", str(out)])
    sessions = json.loads(out.read_text())["sessions"]
    assert [(s["session"], s["clock"]) for s in sessions] == [
        (0, "fresh"),
        (0, "here"),
        (1, "fresh"),
        (1, "here"),
    ]
    for s in sessions:
        assert s["teacher_s"] > 0 and s["student_s"] > 0
        assert s["speedup"] == pytest.approx(s["teacher_s"] / s["student_s"])
    printed = capsys.readouterr().out
    assert "fresh: " in printed and "here : " in printed and "other processes:" in printed


def test_clock_spread_says_when_a_path_holds_no_model(tmp_path: Path) -> None:
    _, student = tiny_pair(tmp_path / "teacher")
    student_dir = save_student(student, tmp_path / "student")
    with pytest.raises(SystemExit, match=r"error \[.*\]: .*does not exist"):
        clock_spread.main([str(student_dir), str(tmp_path / "missing")])
