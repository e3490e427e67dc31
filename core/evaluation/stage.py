"""Evaluate (optional last stage of a run, `spec.evaluate`): the SUPERB-style probes on the exported student,
their results copied next to it and into its report."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from core.inputs import Job
from core.workdir import write_json


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The evaluation's headline numbers (student's PER and SID accuracy) for job metrics."""
    out: dict[str, float] = {}
    models = result.get("models") or []
    if models:
        student = models[0]
        if "pr" in student:
            out["eval_per"] = float(student["pr"]["per"])
        if "sid" in student:
            out["eval_sid_accuracy"] = float(student["sid"]["accuracy"])
        task = student.get("task") or {}
        if "per" in task:
            out["eval_task_per"] = float(task["per"])
        if "accuracy" in task:
            out["eval_task_accuracy"] = float(task["accuracy"])
        if "eer" in task:
            out["eval_task_eer"] = float(task["eer"])
    return out


def evaluate_student(job: Job, export_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Probe the student in `export_dir` on the job's audio; adds "evaluation" and "evaluation_headline" to
    `report` and writes it."""
    from core.evaluation.run import evaluate

    out_dir = job.workdir / "evaluate"
    result = evaluate(export_dir, job.audio, out_dir=out_dir, seed=job.spec.seed)
    shutil.copy2(out_dir / "evaluation.json", export_dir / "evaluation.json")
    report["evaluation"] = result
    report["evaluation_headline"] = headline(result)
    write_json(export_dir / "report.json", report)
    return {"ok": True}


__all__ = ["evaluate_student", "headline"]
