"""The two training stages of a run (algorithm.md §4-5), in this process or on `spec.gpus` data-parallel
ranks.

    distill_prune   stage 1: the masked copy of the teacher learns the cluster targets under the size budgets
    final_distill   stage 2: the pruned, fixed student goes on learning them

Each returns the training loop's summary (steps, final losses) for the workdir's `done.json`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from core.distill import build
from core.distill.parallel import StageJob, run_parallel_stage
from core.distill.quant_aware import int8_aware
from core.distill.train import CHECKPOINT, StageContext, load_checkpoint, train_stage
from core.inputs import Job


def _parallel_job(job: Job, stage: str, clusters: list[list[int]]) -> StageJob:
    budgets = [b.to_dict() for b in job.inputs.budgets] if stage == "distill_prune" else []
    return StageJob(
        stage,
        job.spec.model_dump_json(),
        str(job.teacher_dir),
        str(job.audio),
        str(job.workdir),
        clusters,
        budgets=budgets,
        accumulation=job.accumulation,
    )


def distill_prune(job: Job, clusters: list[list[int]]) -> dict[str, Any]:
    """Stage 1: distillation with Hard Concrete masks and the Lagrangian size constraint; its last checkpoint
    is what `core.finalize` lands and prunes."""
    spec = job.spec
    if spec.gpus > 1:
        return run_parallel_stage(
            _parallel_job(job, "distill_prune", clusters), spec.gpus, job.emit, job.should_stop
        )
    recipe = spec.recipe(1)
    student, targets = build.new_student(
        job.teacher, clusters, spec, job.device, job.inputs.head, job.inputs.labels
    )
    batches = build.train_batches(
        job.inputs.catalog, job.teacher.config.sample_rate, recipe, spec.seed, accumulation=job.accumulation
    )
    ctx = StageContext(
        job.workdir / "distill_prune",
        recipe,
        job.device,
        "distill_prune",
        on_event=job.emit,
        should_stop=job.should_stop,
        seed=spec.seed,
        accumulation=job.accumulation,
        compile=spec.compile,
        data_workers=spec.data_workers,
        budgets=job.inputs.budgets,
        macs_seconds=spec.macs_reference_seconds,
        cost_model=job.inputs.cost_model,
        whole=build.transcribed(job.inputs.catalog, targets, job.teacher.config.sample_rate, spec.seed),
    )
    return train_stage(student, job.teacher, targets, batches, ctx)


def final_distill(job: Job, clusters: list[list[int]]) -> dict[str, Any]:
    """Stage 2: distillation of the finalized student (no masks); saves `build.STAGE2_RESULT` for export."""
    spec = job.spec
    dim = job.teacher.config.hidden_size
    student, targets = build.load_result(
        job.workdir, build.FINALIZED, clusters, dim, spec, job.device, job.inputs.head, job.inputs.labels
    )
    result = job.workdir / build.STAGE2_RESULT
    if spec.stage2_steps == 0:
        build.save_result(result, student, targets)
        return {"steps": 0, "final": {}, "seconds": 0.0}
    if spec.gpus > 1:
        summary = run_parallel_stage(
            _parallel_job(job, "final_distill", clusters), spec.gpus, job.emit, job.should_stop
        )
        state = load_checkpoint(job.workdir / "final_distill" / CHECKPOINT)
        student.load_state_dict(state["student"])
        targets.load_state_dict(state["targets"])
    else:
        recipe = spec.recipe(2)
        batches = build.train_batches(
            job.inputs.catalog,
            job.teacher.config.sample_rate,
            recipe,
            spec.seed + 1,
            accumulation=job.accumulation,
        )
        ctx = StageContext(
            job.workdir / "final_distill",
            recipe,
            job.device,
            "final_distill",
            on_event=job.emit,
            should_stop=job.should_stop,
            seed=spec.seed + 1,
            accumulation=job.accumulation,
            compile=spec.compile,
            data_workers=spec.data_workers,
            whole=build.transcribed(
                job.inputs.catalog, targets, job.teacher.config.sample_rate, spec.seed + 1
            ),
        )
        with int8_aware(student, spec.int8_consistency) if spec.int8_aware else nullcontext() as quantised:
            ctx.int8 = quantised
            summary = train_stage(student, job.teacher, targets, batches, ctx)
        if quantised is not None:
            summary["int8_aware"] = quantised
    build.save_result(result, student, targets)
    return summary


__all__ = ["distill_prune", "final_distill"]
