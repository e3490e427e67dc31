"""report.json: what a run did, in one document (teacher, student, targets against what was achieved,
clusters and CKA, calibration, audio, both training stages, finalize, environment, speed)."""

from __future__ import annotations

import platform
import statistics
from typing import Any

import torch

import core.evaluation.speed as speed
from core import __version__
from core.calibrate.latency import timer_factory
from core.export.onnx import LATENCY_TIMERS
from core.inputs import Job
from core.models import SpeechEncoder
from core.spec import target_words


def teacher_facts(job: Job) -> dict[str, Any]:
    return {**job.inputs.teacher_facts(job.teacher_dir), **job.teacher.config.unit_counts()}


def resolved_targets(job: Job, student: SpeechEncoder) -> dict[str, Any]:
    """What the spec asked for, resolved against the teacher, next to what the student achieved."""
    seconds = job.spec.macs_reference_seconds
    achieved = {"params": float(student.num_params()), "macs": float(student.expected_macs(seconds))}
    if job.inputs.cost_model is not None:
        achieved["latency"] = job.inputs.cost_model.predict_seconds(student)
    out: dict[str, Any] = {"macs_reference_seconds": seconds}
    for budget in job.inputs.budgets:
        out[budget.kind] = {
            **budget.to_dict(),
            "achieved": achieved[budget.kind],
            "achieved_sparsity": 1.0 - achieved[budget.kind] / budget.teacher,
            "relative_error": achieved[budget.kind] / budget.target - 1.0,
        }
    return out


def latency_facts(
    job: Job, student: SpeechEncoder, measured: dict[str, Any], cost_model_record: dict[str, Any] | None
) -> dict[str, Any] | None:
    """A latency budget's outcome: the cost model (coefficients, its fit: measured against predicted times of
    every shape, relative errors, whether it came from the cache) and the predicted speed-up of the final
    student (teacher predicted / student predicted) beside the measured one (`measured`: the report's speed
    section, PyTorch fp32 on the CPU, interleaved; timed again here when the target's threads or utterance
    differ from that section's); None without a latency budget."""
    cost_model = job.inputs.cost_model
    if cost_model is None:
        return None
    teacher_s = cost_model.predict_seconds(job.teacher)
    student_s = cost_model.predict_seconds(student)
    out: dict[str, Any] = {
        "target": cost_model.target,
        "threads": cost_model.threads,
        "utterance_seconds": cost_model.seconds,
        "target_speedup": job.spec.target_speedup,
        "teacher_predicted_s": teacher_s,
        "student_predicted_s": student_s,
        "predicted_speedup": teacher_s / student_s,
        "measured_speedup": None,
        "cost_model": cost_model_record,
    }
    runs = speed.default_runs()
    if runs == 0:
        out["measured"] = f"skipped ({speed.RUNS_ENV}=0)"
        return out
    if cost_model.target != "cpu":  # another runtime (both exported and timed there) or the GPU
        factory = timer_factory(cost_model.target, LATENCY_TIMERS.get(cost_model.target))
        timer = factory(cost_model.seconds, cost_model.threads, runs)
        teacher_t, student_t = timer([job.teacher, student])
        out["measured_speedup"] = teacher_t / student_t
        out["measured"] = (
            f"{target_words(cost_model.target, cost_model.threads)}: median of {runs} passes, "
            "teacher and student in turn"
        )
        return out
    if cost_model.threads == 1 and cost_model.seconds == speed.SECONDS and "cpu_1_thread" in measured:
        out["measured_speedup"] = float(measured["cpu_1_thread"]["speedup"])
        out["measured"] = "the speed section's cpu_1_thread"
        return out
    models = {"teacher": job.teacher, "student": student}
    times = speed.cpu_times(models, threads=cost_model.threads, seconds=cost_model.seconds, runs=runs)
    teacher_t, student_t = (statistics.median(times[name]) for name in ("teacher", "student"))
    out["measured_speedup"] = teacher_t / student_t
    out["measured"] = f"median of {runs} interleaved passes, {cost_model.threads} thread(s), a fresh process"
    return out


def _without_seconds(stage: dict[str, Any]) -> dict[str, Any]:
    # the training loops' own `seconds` would be a second, partial clock: wall times are in timings_s
    return {k: v for k, v in stage.items() if k != "seconds"}


def build_report(job: Job, student: SpeechEncoder, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The report of a finished run; `stages` holds what calibrate, distill_prune, finalize and final_distill
    returned. Measures the student's speed against the teacher's (core.evaluation.speed)."""
    spec, inputs = job.spec, job.inputs
    cal = stages["calibrate"]
    measured = speed.measure(job.teacher, student, device=job.device)
    report = {
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
        "speed": measured,
    }
    latency = latency_facts(job, student, measured, cal.get("cost_model"))
    if latency is not None:
        # what the clock said when finalize landed the student (core.finalize.measured), beside the report's
        # own measurement: a record, or why nothing was timed
        latency["landing"] = stages["finalize"].get("landing", {}).get("measured")
        report["latency"] = latency
    return report


__all__ = ["build_report", "latency_facts", "resolved_targets", "teacher_facts"]
