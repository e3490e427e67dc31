"""bench/clock_order.py on a tiny teacher and a student exported from it, and the timing rounds' orders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import clock_order
from core.export.student import save_student
from core.timing import ORDERS, round_order
from tests.utils.models import tiny_pair


def _followers(order: str, names: list[str], rounds: int) -> dict[str, int]:
    """How many times each model runs right after the first one, over `rounds` rounds in a row."""
    sequence = [name for r in range(rounds) for name in ORDERS[order](names, r)]
    counts = dict.fromkeys(names[1:], 0)
    for before, after in zip(sequence, sequence[1:]):
        if before == names[0] and after != names[0]:
            counts[after] += 1
    return counts


def test_the_balanced_order_lets_every_model_follow_the_reference_in_turn() -> None:
    names = ["teacher", *(f"s{i}" for i in range(7))]
    rounds = 12  # finalize's: one untimed round, 11 timed
    balanced = _followers("balanced", names, rounds)
    assert max(balanced.values()) - min(balanced.values()) <= 1 and sum(balanced.values()) == rounds
    alternating = _followers("alternating", names, rounds)
    assert alternating["s0"] == rounds // 2 and sum(alternating.values()) == rounds // 2  # the old bias
    for r in range(rounds):
        assert sorted(round_order(names, r)) == sorted(names) and round_order(names, r)[0] == "teacher"
    # two models alternate, as before
    assert [round_order(["t", "s"], r) for r in range(3)] == [["t", "s"], ["s", "t"], ["t", "s"]]


def test_clock_order_times_identical_copies_in_each_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, student = tiny_pair(tmp_path / "teacher")
    student_dir = save_student(student, tmp_path / "student")
    out = tmp_path / "order.json"
    argv = [str(student_dir), str(tmp_path / "teacher"), "--copies", "3", "--sessions", "2", "--runs", "2"]
    clock_order.main([*argv, "--seconds", "1", "--json", str(out)])
    sessions = json.loads(out.read_text())["sessions"]
    assert [(s["session"], s["order"]) for s in sessions] == [
        (0, "balanced"),
        (0, "alternating"),
        (1, "alternating"),
        (1, "balanced"),
    ]
    for s in sessions:
        assert len(s["speedups"]) == 3 and all(v > 0 for v in s["speedups"])
        assert s["first_copy_gap"] == pytest.approx(clock_order.first_copy_gap(s["speedups"]))
    printed = capsys.readouterr().out
    assert "balanced   : first copy against the others" in printed and "other processes:" in printed
    with pytest.raises(SystemExit, match=r"error \[bad_argument\]"):
        clock_order.main([*argv[:2], "--copies", "1"])
