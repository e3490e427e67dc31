"""Finalize (algorithm.md §4b): land stage 1's masks exactly on the budgets (`core.finalize.landing`), then
remove the pruned units physically and check that the pruned model computes what the masked one did."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import core.calibrate.latency as fitting
import core.evaluation.speed as speed
from core.calibrate.latency import TimerFactory
from core.data import AudioCatalog, load_waveform
from core.distill import build
from core.distill.train import CHECKPOINT, load_checkpoint
from core.events import Event
from core.finalize.landing import land
from core.finalize.measured import land_measured, landing_runs
from core.inputs import Job
from core.models import SpeechEncoder


def finalize(job: Job, clusters: list[list[int]], make_timer: TimerFactory | None = None) -> dict[str, Any]:
    """Load stage 1's final state, land the eval gates on the budgets (a latency budget then on the clock:
    `core.finalize.measured`, timed by `make_timer` on a target other than "cpu"), prune physically and
    compare the pruned model with the masked one on a few seconds of the job's audio; saves
    `build.FINALIZED`."""
    spec = job.spec
    state = load_checkpoint(job.workdir / "distill_prune" / CHECKPOINT)
    student, targets = build.restore(state, clusters, job.teacher.config.hidden_size, spec, job.inputs.head)
    student.eval()
    cost_model = job.inputs.cost_model
    landing = land(student, job.inputs.budgets, seconds=spec.macs_reference_seconds, cost_model=cost_model)
    if cost_model is not None and spec.target_speedup is not None:
        landing["measured"] = _land_on_the_clock(job, student, make_timer)
    probe = torch.from_numpy(probe_audio(job.inputs.cal_catalog, job.teacher.config.sample_rate))[None]
    with torch.no_grad():
        expected = float(student.expected_num_params())
        before, _ = student(probe)
    config = student.prune()
    with torch.no_grad():
        after, _ = student(probe)
    diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
    build.save_result(job.workdir / build.FINALIZED, student, targets)
    return {
        "num_params": student.num_params(),
        "expected_params_before": expected,
        "macs_per_second": float(student.expected_macs(spec.macs_reference_seconds)),
        **({"predicted_latency_s": cost_model.predict_seconds(student)} if cost_model is not None else {}),
        "landing": landing,
        "max_abs_diff_masked_vs_pruned": diff,
        **config.unit_counts(),
    }


def _land_on_the_clock(
    job: Job, student: SpeechEncoder, make_timer: TimerFactory | None
) -> dict[str, Any] | str:
    """`land_measured` on the latency budget's target, or why it was not timed."""
    runs = landing_runs()
    if runs == 0:
        return f"skipped ({speed.RUNS_ENV}=0)"
    cost_model, spec = job.inputs.cost_model, job.spec
    assert cost_model is not None and spec.target_speedup is not None
    factory = fitting.timer_factory(cost_model.target, make_timer)
    timer = factory(cost_model.seconds, cost_model.threads, runs)

    def log(message: str) -> None:
        job.emit(Event("log", "finalize", message=message))

    return land_measured(
        student,
        job.teacher,
        job.inputs.budgets,
        cost_model,
        spec.target_speedup,
        timer,
        seconds=spec.macs_reference_seconds,
        margin=spec.speed_margin,
        log=log,
    )


def probe_audio(catalog: AudioCatalog, sample_rate: int, seconds: float = 4.0) -> np.ndarray:
    """The first `seconds` of the catalog's first utterance."""
    wave = load_waveform(catalog.items[0], sample_rate)
    return wave[: int(seconds * sample_rate)].astype(np.float32)


__all__ = ["finalize", "probe_audio"]
