"""core.evaluation.speed: teacher vs student sizes, MACs and interleaved real-time factors on tiny random-init
models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.evaluation import count_macs, speed
from tests.utils.models import tiny_pair


def test_measure_gives_sizes_macs_and_interleaved_speed(tmp_path: Path) -> None:
    teacher, student = tiny_pair(tmp_path / "t")
    threads = torch.get_num_threads()
    result = speed.measure(teacher, student, seconds=1.0, runs=3, warmup=1)
    assert torch.get_num_threads() == threads  # restored
    assert result["teacher"]["params"] == teacher.num_params()
    assert result["student"]["params"] == student.num_params() < teacher.num_params()
    assert result["teacher"]["macs_per_second"] == count_macs(teacher, seconds=1.0).macs_per_second
    assert result["student"]["macs_per_second"] < result["teacher"]["macs_per_second"]
    assert result["macs_ratio"] == pytest.approx(
        result["teacher"]["macs_per_second"] / result["student"]["macs_per_second"]
    )
    one = result["cpu_1_thread"]
    assert one["threads"] == 1
    assert len(one["times_s"]["teacher"]) == len(one["times_s"]["student"]) == 3
    assert one["teacher_rtf"] > 0 and one["student_rtf"] > 0
    assert one["speedup"] == pytest.approx(one["teacher_rtf"] / one["student_rtf"])
    assert result["cpu_all_threads"]["threads"] == speed.available_cores()
    assert "cuda" not in result
    assert result["protocol"]["utterance_seconds"] == 1.0
    head = speed.headline(result)
    assert head["student_params"] == student.num_params()
    assert head["speedup_cpu_1_thread"] == one["speedup"]
    assert "speedup_cuda" not in head
    # the models are left where and as they were
    assert not teacher.training and next(student.parameters()).device.type == "cpu"


def test_interleaved_times_alternate_order_and_restore_modes(tmp_path: Path) -> None:
    teacher, student = tiny_pair(tmp_path / "t")
    calls: list[str] = []
    teacher.register_forward_hook(lambda *_: calls.append("t"))
    student.register_forward_hook(lambda *_: calls.append("s"))
    student.train()
    times = speed.interleaved_times({"teacher": teacher, "student": student}, seconds=0.5, runs=2, warmup=1)
    assert calls == ["t", "s", "s", "t", "t", "s"]
    assert [len(v) for v in times.values()] == [2, 2]
    assert student.training and not teacher.training
    with pytest.raises(ValueError, match="runs"):
        speed.interleaved_times({"teacher": teacher}, runs=0)


def test_zero_runs_gives_sizes_and_macs_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher, student = tiny_pair(tmp_path / "t")
    monkeypatch.setenv(speed.RUNS_ENV, "0")
    result = speed.measure(teacher, student, seconds=1.0)
    assert result["student"]["params"] == student.num_params()
    assert "cpu_1_thread" not in result and "skipped" in result["protocol"]["timing"]
    assert set(speed.headline(result)) == {
        "teacher_params",
        "student_params",
        "teacher_macs_per_s",
        "student_macs_per_s",
    }
    monkeypatch.setenv(speed.RUNS_ENV, "many")
    with pytest.raises(ValueError, match=speed.RUNS_ENV):
        speed.default_runs()


def test_the_cpu_speed_is_timed_in_a_fresh_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report's CPU figures come from a child process (`core.timing.timed_rounds_in_fresh_process`): with
    this process's own timing loop broken they are still measured, every pass of both models."""
    import core.timing

    def broken(*args: object, **kw: object) -> None:
        raise AssertionError("timed in the job's own process")

    monkeypatch.setattr(core.timing, "timed_rounds", broken)
    monkeypatch.setattr(speed, "timed_rounds", broken)
    teacher, student = tiny_pair(tmp_path / "t")
    result = speed.measure(teacher, student, seconds=1.0, runs=2, warmup=1)
    assert result["protocol"]["cpu"] == "timed in a fresh Python process"
    for setting in ("cpu_1_thread", "cpu_all_threads"):
        times = result[setting]["times_s"]
        assert len(times["teacher"]) == len(times["student"]) == 2
        assert all(t > 0 for t in times["teacher"] + times["student"])
