"""The compression job, end to end: calibrate -> distill_prune -> finalize -> final_distill -> export
(-> evaluate). Each stage lives in the folder named after it (core/calibrate, core/distill, core/finalize,
core/export, core/evaluation); this module only runs them in order.

Each stage writes `workdir/<stage>/` and, when complete, `workdir/<stage>/done.json` (core.workdir). Calling
`run` again on the same workdir (after a crash, a kill or a stop) skips finished stages and resumes a training
stage from its last checkpoint. This is the engine's one entry point for the CLI and the service worker; it
never imports the service (the dependency rule is a test).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import core.evaluation.speed as speed
from core.calibrate.latency import COST_MODEL_FILE, load_cost_model
from core.calibrate.stage import calibrate
from core.distill.stage import distill_prune, final_distill
from core.evaluation.stage import evaluate_student
from core.evaluation.stage import headline as evaluation_headline
from core.events import Event, OnEvent, ShouldStop, ignore_event, never_stop
from core.export.onnx import LATENCY_TIMERS
from core.export.stage import HF_DIR, STUDENT_DIR, export
from core.finalize.stage import finalize
from core.inputs import Job, prepare_inputs, select_device
from core.spec import CompressionSpec
from core.workdir import Workdir, write_json

# What a finished run hands back: artifact name -> file name in the export directory.
ARTIFACT_FILES = {
    "cka.png": "cka.png",
    "clusters.json": "clusters.json",
    "train_log": "train_log.jsonl",
    "onnx": "model.onnx",
    "onnx_fp16": "model_fp16.onnx",
    "onnx_int8": "model_quantized.onnx",
    "evaluation.json": "evaluation.json",
}


@dataclass
class PipelineResult:
    export_dir: Path
    report: dict[str, Any]
    artifacts: dict[str, Path] = field(default_factory=dict)


def run(
    spec: CompressionSpec,
    teacher: Path | str,
    audio: Path | str,
    workdir: Path | str,
    *,
    calibration_audio: Path | str | None = None,
    on_event: OnEvent | None = None,
    should_stop: ShouldStop | None = None,
) -> PipelineResult:
    """Compress `teacher` on `audio` as `spec` says, in `workdir` (created, or resumed if it exists)."""
    with current_gpu(select_device(spec.device)):
        return _run(spec, Path(teacher), Path(audio), Path(workdir), calibration_audio, on_event, should_stop)


@contextlib.contextmanager
def current_gpu(device: torch.device) -> Iterator[None]:
    """The job's GPU (`cuda:N`) as the current CUDA device while it runs, so that what names or times "the"
    GPU (the `cuda` speed target's timer, its cost model's cache key) means the job's; nothing for a job on
    the CPU, or on `cuda` without an index (the current device already)."""
    if device.type != "cuda" or device.index is None:
        yield
        return
    with torch.cuda.device(device):
        yield


def _run(
    spec: CompressionSpec,
    teacher: Path,
    audio: Path,
    workdir: Path,
    calibration_audio: Path | str | None,
    on_event: OnEvent | None,
    should_stop: ShouldStop | None,
) -> PipelineResult:
    wd = Workdir(workdir, on_event or ignore_event, should_stop or never_stop)
    batches_per_step = wd.claim(spec, teacher, audio)

    start = time.monotonic()
    inputs = prepare_inputs(spec, teacher, audio, calibration_audio=calibration_audio, emit=wd.emit)
    job = Job(spec, teacher, audio, wd.path, inputs, wd.emit, wd.should_stop, batches_per_step)
    if wd.done("export") is None:
        wd.timings["inputs"] = time.monotonic() - start

    stages: dict[str, dict[str, Any]] = {}
    stages["calibrate"] = cal = wd.stage(
        "calibrate",
        lambda: calibrate(
            spec,
            inputs.teacher,
            inputs.cal_catalog,
            wd.path / "calibrate",
            inputs.device,
            wd.emit,
            wd.should_stop,
            LATENCY_TIMERS.get(spec.speed_target),
        ),
    )
    clusters: list[list[int]] = cal["clusters"]
    if spec.target_speedup is not None:  # the latency budget, now that its cost model is fitted
        inputs.use_cost_model(spec, load_cost_model(wd.path / "calibrate" / COST_MODEL_FILE))
    wd.emit(Event("clusters", "calibrate", metrics={"clusters": clusters, "k": len(clusters)}))
    wd.finished("calibrate")
    wd.check_stop("calibrate")

    stages["distill_prune"] = s1 = wd.stage("distill_prune", lambda: distill_prune(job, clusters))
    wd.finished("distill_prune", s1.get("final", {}))

    stages["finalize"] = fin = wd.stage(
        "finalize", lambda: finalize(job, clusters, LATENCY_TIMERS.get(spec.speed_target))
    )
    wd.finished("finalize", {"num_params": fin["num_params"]})
    wd.check_stop("finalize")

    stages["final_distill"] = s2 = wd.stage("final_distill", lambda: final_distill(job, clusters))
    wd.finished("final_distill", s2.get("final", {}))

    export_dir = wd.path / STUDENT_DIR
    wd.stage("export", lambda: export(job, stages), again=not export_dir.exists())
    report = _with_timings(export_dir, wd)
    wd.finished("export", speed.headline(report["speed"]) if "speed" in report else {})

    if spec.evaluate and wd.done("evaluate") is None:
        wd.stage("evaluate", lambda: evaluate_student(job, export_dir, report))
        report = _with_timings(export_dir, wd, again=True)
        headline = evaluation_headline(report["evaluation"])
        # a progress event carries the headline into the job's latest metrics (the service merges those)
        wd.emit(Event("progress", "evaluate", 1, 1, 0.0, headline))
        wd.finished("evaluate", headline)

    return PipelineResult(export_dir, report, _artifacts(wd.path, export_dir))


def _with_timings(export_dir: Path, wd: Workdir, again: bool = False) -> dict[str, Any]:
    """The report, with the wall seconds of every stage so far (added once the stage that wrote it is
    done)."""
    path = export_dir / "report.json"
    report = json.loads(path.read_text())
    if again or "timings_s" not in report:
        report["timings_s"] = wd.timings.report()
        write_json(path, report)
    return report


def _artifacts(workdir: Path, export_dir: Path) -> dict[str, Path]:
    artifacts = {"model": export_dir, "report.json": export_dir / "report.json"}
    for name, file in ARTIFACT_FILES.items():
        if (export_dir / file).exists():
            artifacts[name] = export_dir / file
    if (workdir / HF_DIR).is_dir():
        artifacts["hf"] = workdir / HF_DIR
    return artifacts


__all__ = ["ARTIFACT_FILES", "PipelineResult", "run"]
