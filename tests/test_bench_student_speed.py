"""Smoke test of bench/student_speed.py on a tiny teacher and a student exported from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import student_speed
from core.export.student import save_student
from core.timing import machine_busy_seconds, other_cores
from tests.utils.models import tiny_pair


def test_student_speed_on_a_tiny_student(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher, student = tiny_pair(tmp_path / "teacher")
    student_dir = save_student(
        student, tmp_path / "student", metadata={"teacher": {"path": str(tmp_path / "teacher")}}
    )
    out = tmp_path / "speed.json"
    # the teacher comes from the student's metadata when not given
    report = student_speed.main([str(student_dir), "--seconds", "1", "--runs", "2", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["teacher_path"] == str(tmp_path / "teacher")
    assert report["student"]["params"] == student.num_params()
    assert report["teacher"]["params"] == teacher.num_params()
    assert report["cpu_1_thread"]["speedup"] > 0
    assert len(saved["cpu_1_thread"]["times_s"]["student"]) == 2
    table = capsys.readouterr().out
    assert "RTF, CPU 1 thread" in table and "MACs / s of audio" in table


def test_student_speed_says_when_no_teacher_is_known(tmp_path: Path) -> None:
    _, student = tiny_pair(tmp_path / "teacher")
    student_dir = save_student(student, tmp_path / "student")
    with pytest.raises(SystemExit, match="give TEACHER"):
        student_speed.main([str(student_dir)])


def test_a_busy_machine_is_flagged() -> None:
    # 10 s of wall time, 10 CPU seconds of our own: the machine's extra busy time is the others' load
    assert other_cores(100.0, 112.0, 10.0, 10.0) == pytest.approx(0.2)
    assert other_cores(100.0, 130.0, 10.0, 10.0) == pytest.approx(2.0)
    assert other_cores(None, 130.0, 10.0, 10.0) is None
    assert student_speed.busy_warning(0.2) is None
    warning = student_speed.busy_warning(2.0)
    assert warning is not None and "2.00 cores" in warning
    busy = machine_busy_seconds()
    assert busy is None or busy > 0
