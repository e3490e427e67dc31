"""bench/budget_table.py's arithmetic on a made-up report: budgets parsed, mean ± sd, and each student paired
with the teacher probed with its own seed (no timing)."""

from __future__ import annotations

import argparse

import pytest

from bench.budget_table import clock_drift, format_markdown, mean_sd, parse_budget


def test_a_budget_is_a_label_and_its_run_directories() -> None:
    label, dirs = parse_budget("latency 4x=runs/a, runs/b")
    assert label == "latency 4x" and [str(d) for d in dirs] == ["runs/a", "runs/b"]
    for bad in ("no-equals", "=runs/a", "label="):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_budget(bad)


def test_students_are_paired_with_the_teacher_of_their_seed() -> None:
    def student(seed: int, per: float, speedup: float) -> dict:
        return {
            "run": f"runs/s{seed}",
            "seed": seed,
            "params": 1.5e6,
            "macs_per_second": 2.5e8,
            "predicted_speedup": 4.0,
            "measured_speedup": speedup,
            "rounds": [speedup],
            "job_latency": None,
            "evaluation": {"seed": seed, "per": per, "sid": 70.0},
        }

    report = {
        "command": "python -m bench.budget_table ...",
        "teacher": {
            "name": "t",
            "params": 11e6,
            "macs_per_second": 1.27e9,
            "evaluations": [
                {"seed": 1, "per": 20.0, "sid": 75.0},
                {"seed": 0, "per": 30.0, "sid": 74.0},
            ],
            "per": [20.0, 30.0],
            "sid": [75.0, 74.0],
        },
        "budgets": [{"label": "latency 4x", "students": [student(0, 31.0, 4.2), student(1, 23.0, 4.4)]}],
        "speed_log": [{"other_processes_cores": 0.02}],
        "machine": {"cpu": "x", "torch": "y"},
        "load_average_before": 1.0,
        "load_average_after": 1.0,
    }
    text = format_markdown(report)
    # seed 0: 31 - 30 = +1; seed 1: 23 - 20 = +3 -> +2.00 (unpaired means would say 27 - 25 = +2 too, but
    # the SID pairs differ: 70 - 74 = -4, 70 - 75 = -5 -> -4.50)
    assert report["budgets"][0]["paired_vs_teacher"] == {"per": "+2.00", "sid": "-4.50"}
    assert "| 27.00 ± 5.66 (+2.00) |" in text
    assert "**4.30 ± 0.14x**" in text
    assert mean_sd([]) == "-" and mean_sd([3.0]) == "3.00"


def test_render_reads_the_students_evaluations_again(tmp_path) -> None:
    """An evaluation that finished after the speed was measured is in the re-rendered table."""
    import json

    from bench.budget_table import refresh_evaluations

    run = tmp_path / "runs" / "s0"
    (tmp_path / "runs" / "s0-eval").mkdir(parents=True)
    (tmp_path / "runs" / "s0-eval" / "evaluation.json").write_text(
        json.dumps({"seed": 0, "models": [{"pr": {"per": 0.2512}, "sid": {"accuracy": 0.7}}]})
    )
    report = {
        "budgets": [
            {"students": [{"run": str(run), "evaluation": None}, {"run": "gone", "evaluation": None}]}
        ]
    }
    refresh_evaluations(report, "-eval")
    first, second = report["budgets"][0]["students"]
    assert first["evaluation"] == {"seed": 0, "per": pytest.approx(25.12), "sid": pytest.approx(70.0)}
    assert second["evaluation"] is None


def test_the_teachers_drift_is_said_beside_the_students() -> None:
    log = [
        {"run": "a", "teacher_median_s": 0.25, "student_median_s": 0.050},
        {"run": "b", "teacher_median_s": 0.20, "student_median_s": 0.060},
        {"run": "a", "teacher_median_s": 0.21, "student_median_s": 0.052},
        {"run": "b", "teacher_median_s": 0.24, "student_median_s": 0.063},
    ]
    text = clock_drift(log)
    assert "0.200-0.250 s (+25% slowest over fastest)" in text
    assert "the most any student's moved between its rounds: +5%." in text  # b: 0.063 / 0.060; a: +4%
    assert clock_drift([{"other_processes_cores": 0.0}]) == ""  # an old log without medians says nothing


def test_bad_paths_are_one_error_line_not_a_traceback(tmp_path, capsys) -> None:
    from bench.budget_table import main

    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--budget", f"x={tmp_path / 'nowhere'}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no finished job (student/report.json) in" in err and "nowhere" in err and "Traceback" not in err
    (tmp_path / "run" / "student").mkdir(parents=True)
    (tmp_path / "run" / "student" / "report.json").write_text("{}")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "no-teacher"), "--budget", f"x={tmp_path / 'run'}"])
    assert "teacher: [" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--render", str(tmp_path / "none.json")])
    assert "no earlier --json" in capsys.readouterr().err
