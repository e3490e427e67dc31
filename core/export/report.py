"""report.json: what a run did, in one document (teacher, student, targets against what was achieved,
clusters and CKA, calibration, audio, both training stages, finalize, environment, speed)."""

from __future__ import annotations

import platform
from typing import Any

import torch

import core.evaluation.speed as speed
from core import __version__
from core.inputs import Job
from core.models import SpeechEncoder


def teacher_facts(job: Job) -> dict[str, Any]:
    return {**job.inputs.teacher_facts(job.teacher_dir), **job.teacher.config.unit_counts()}


def resolved_targets(job: Job, student: SpeechEncoder) -> dict[str, Any]:
    """What the spec asked for, resolved against the teacher, next to what the student achieved."""
    seconds = job.spec.macs_reference_seconds
    achieved = {"params": float(student.num_params()), "macs": float(student.expected_macs(seconds))}
    out: dict[str, Any] = {"macs_reference_seconds": seconds}
    for budget in job.inputs.budgets:
        out[budget.kind] = {
            **budget.to_dict(),
            "achieved": achieved[budget.kind],
            "achieved_sparsity": 1.0 - achieved[budget.kind] / budget.teacher,
            "relative_error": achieved[budget.kind] / budget.target - 1.0,
        }
    return out


def _without_seconds(stage: dict[str, Any]) -> dict[str, Any]:
    # the training loops' own `seconds` would be a second, partial clock: wall times are in timings_s
    return {k: v for k, v in stage.items() if k != "seconds"}


def build_report(job: Job, student: SpeechEncoder, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The report of a finished run; `stages` holds what calibrate, distill_prune, finalize and final_distill
    returned. Measures the student's speed against the teacher's (core.evaluation.speed)."""
    spec, inputs = job.spec, job.inputs
    cal = stages["calibrate"]
    return {
        "skillkd_version": __version__,
        "method": spec.method,
        "spec": spec.model_dump(),
        "teacher": teacher_facts(job),
        "task_head": inputs.head_facts(spec),
        "student": {
            "num_params": student.num_params(),
            "macs_per_second": float(student.expected_macs(spec.macs_reference_seconds)),
            **student.config.unit_counts(),
        },
        "target_sparsity": inputs.target_sparsity,
        "achieved_sparsity": 1.0 - student.num_params() / inputs.teacher_params,
        "targets": resolved_targets(job, student),
        "clusters": cal["clusters"],
        "cka": cal["cka"],
        "calibration": {
            "utterances": cal.get("utterances"),
            "frames": cal.get("frames"),
            "audio_seconds": cal.get("audio_seconds", cal.get("seconds")),
        },
        "audio": inputs.catalog.summary(),
        "stage1": _without_seconds(stages["distill_prune"]),
        "finalize": stages["finalize"],
        "stage2": _without_seconds(stages["final_distill"]),
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(job.device),
        },
        "speed": speed.measure(job.teacher, student, device=job.device),
    }


__all__ = ["build_report", "resolved_targets", "teacher_facts"]
