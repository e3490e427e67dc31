"""Export (algorithm.md §6): the stage-2 student in skillkd's format with its report, plots and training log,
the Hugging Face export, and the ONNX variants the spec asks for (each verified before it is offered)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

import core.evaluation.speed as speed
from core.distill import build
from core.events import Event
from core.export.for_users import export_for_users
from core.export.onnx import int8_mode_for
from core.export.report import build_report
from core.export.student import save_student, world_readable
from core.inputs import Job
from core.models.heads import PROCESSOR_FILES
from core.workdir import write_json

STUDENT_DIR = "student"  # workdir/student: the export in skillkd's format
HF_DIR = "student-hf"  # workdir/student-hf: the Hugging Face export


def export(job: Job, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write `workdir/student/` (with report.json) and `workdir/student-hf/`; `stages` holds what the earlier
    stages returned."""
    spec, workdir = job.spec, job.workdir
    clusters = stages["calibrate"]["clusters"]
    export_dir = workdir / STUDENT_DIR
    student, targets = build.load_result(
        workdir, build.STAGE2_RESULT, clusters, job.teacher.config.hidden_size, spec, head=job.inputs.head
    )
    student.eval()
    head = targets.task.student_head.cpu().eval() if targets.task is not None else None
    report = build_report(job, student, stages)
    if export_dir.exists():
        shutil.rmtree(export_dir)
    save_student(
        student,
        export_dir,
        heads=nn.ModuleDict({"projections": targets.projections}),
        task_head=head,
        metadata={"teacher": report["teacher"], "clusters": clusters, "method": spec.method},
    )
    for name in ("cka.png", "clusters.json"):
        src = workdir / "calibrate" / name
        if src.exists():
            shutil.copy2(src, export_dir / name)
    if head is not None:  # the teacher's tokenizer goes with its head (decoding the student's CTC output)
        for name in PROCESSOR_FILES:
            if (job.teacher_dir / name).is_file():
                shutil.copyfile(job.teacher_dir / name, export_dir / name)
    merge_train_logs(workdir, export_dir / "train_log.jsonl")
    report.update(
        export_for_users(
            student.cpu(),
            export_dir,
            workdir / HF_DIR,
            spec.export_onnx,
            audio=job.audio,
            seed=spec.seed,
            int8_mode=int8_mode_for(spec.model_dump()),
            metadata={"teacher": report["teacher"]},
            head=head,
            processor_dir=job.teacher_dir if head is not None else None,
        )
    )
    write_json(export_dir / "report.json", report)
    world_readable(export_dir)
    # a progress event carries the speed headline into the job's latest metrics (the service merges those)
    job.emit(Event("progress", "export", 1, 1, 0.0, speed.headline(report["speed"])))
    return {"export_dir": str(export_dir)}


def merge_train_logs(workdir: Path, out: Path) -> None:
    """Both training stages' train_log.jsonl in one file, each line tagged with its stage."""
    with open(out, "w") as f:
        for stage in ("distill_prune", "final_distill"):
            log = workdir / stage / "train_log.jsonl"
            if log.exists():
                for line in log.read_text().splitlines():
                    if line.strip():
                        f.write(json.dumps({"stage": stage, **json.loads(line)}) + "\n")


__all__ = ["HF_DIR", "STUDENT_DIR", "export", "merge_train_logs"]
