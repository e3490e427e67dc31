"""What a model is called in evaluation results: `--name`, else teacher, method and size from a student's
report."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli.evaluate import evaluate_command
from core.evaluation.run import default_name
from tests.utils.models import save_tiny_teacher


def test_default_name_of_a_student_comes_from_its_report(tmp_path: Path) -> None:
    student = tmp_path / "runs" / "x" / "student"
    student.mkdir(parents=True)
    (student / "report.json").write_text(
        json.dumps(
            {
                "method": "skill",
                "teacher": {"path": "../shared/teachers/hubert-mini/"},
                "student": {"num_params": 2_912_345},
            }
        )
    )
    assert default_name(student) == "hubert-mini SKILL 2.9M"
    (student / "report.json").write_text(
        json.dumps(
            {
                "method": "dphubert",
                "teacher": {"path": "/m/wavlm-base-plus"},
                "student": {"num_params": 812_000},
            }
        )
    )
    assert default_name(student) == "wavlm-base-plus DPHuBERT 812k"
    (student / "report.json").write_text("{not json")
    assert default_name(student) == "student"
    assert default_name(tmp_path / "runs") == "runs"  # a teacher: no report


def test_cli_name_option(tmp_path: Path, tiny_dataset: Path) -> None:
    teacher = save_tiny_teacher(tmp_path / "teacher")
    result = CliRunner().invoke(
        evaluate_command,
        [
            str(teacher),
            str(tiny_dataset),
            "--tasks",
            "sid",
            "--name",
            "my teacher",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert [m["name"] for m in json.loads(result.stdout)["models"]] == ["my teacher"]
    assert "| my teacher |" in (tmp_path / "out" / "evaluation.md").read_text()
