"""The compression job, end to end: calibrate -> distill_prune -> finalize -> final_distill -> export
(-> evaluate).

Each stage writes `workdir/<stage>/` and, when complete, `workdir/<stage>/done.json`. Calling `run` again on
the same workdir (after a crash, a kill or a stop) skips finished stages and resumes a training stage from its
last checkpoint. This module is the engine's one entry point for the CLI and the service worker; it never
imports the service (the dependency rule is a test).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, speed, stages
from .audio import AudioCatalog, iter_padded_batches, scan_audio
from .cka import StreamingCKA
from .clustering import Clustering, cluster_layers
from .errors import SpecError, StopRequested
from .events import STAGES, Event, OnEvent, ShouldStop, ignore_event, never_stop
from .export import export_for_users, save_student
from .landing import land
from .models import SpeechEncoder, load_model
from .parallel import StageJob, run_parallel_stage
from .rules import check_against_teacher, dphubert_clusters, fixed_clusters
from .spec import Budget, CompressionSpec
from .train import CHECKPOINT, StageContext, load_checkpoint, train_stage


@dataclass
class PipelineResult:
    export_dir: Path
    report: dict[str, Any]
    artifacts: dict[str, Path] = field(default_factory=dict)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device {name!r} was asked for but CUDA is not available on this machine")
    return device


def _done(workdir: Path, stage: str) -> dict[str, Any] | None:
    marker = workdir / stage / "done.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def _mark_done(workdir: Path, stage: str, info: dict[str, Any]) -> None:
    marker = workdir / stage / "done.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2, default=_json_default))
    tmp.replace(marker)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _check_spec(workdir: Path, spec: CompressionSpec, teacher: Path, audio: Path) -> None:
    """A workdir belongs to one job: resuming it with a different spec or input would mix two runs."""
    path = workdir / "job.json"
    current = {"spec": spec.model_dump(exclude={"device", "gpus", "evaluate", "export_onnx"}),
               "teacher": str(teacher.resolve()), "audio": str(audio.resolve())}
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("spec") != current["spec"]:
            raise SpecError(f"{workdir} holds a run with a different spec; use a new output directory")
        return
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2))


class _Stopper:
    """Polls should_stop between calibration batches and stage boundaries."""

    def __init__(self, should_stop: ShouldStop) -> None:
        self.should_stop = should_stop

    def check(self, where: str) -> None:
        if self.should_stop():
            raise StopRequested(f"stopped during {where}")


@dataclass
class JobInputs:
    """Everything a run checks and loads before its first stage (`prepare_inputs`)."""

    device: torch.device
    teacher: SpeechEncoder
    teacher_params: int
    target_sparsity: float | None  # of parameters; None when only a MACs target is given
    teacher_macs: float  # per audio second, for an utterance of spec.macs_reference_seconds
    budgets: list[Budget]  # stage 1's size constraints, resolved against the teacher
    catalog: AudioCatalog
    cal_catalog: AudioCatalog


def prepare_inputs(spec: CompressionSpec, teacher: Path, audio: Path, *, calibration_audio: Path | str | None = None,
                   emit: OnEvent = ignore_event) -> JobInputs:
    """Check the device, load the teacher, resolve the target, scan the audio and check the spec against them.

    The one validation of a job's inputs: `run` and the dry run (`core.estimate`) both call it, so a dry run
    refuses exactly what a real run would refuse, with the same errors.
    """
    device = select_device(spec.device)
    teacher_model = load_model(teacher).to(device)
    teacher_params = teacher_model.num_params()
    with torch.no_grad():
        teacher_macs = float(teacher_model.expected_macs(spec.macs_reference_seconds))
    check_against_teacher(spec, num_layers=teacher_model.num_layers, num_params=teacher_params, macs=teacher_macs)
    target_sparsity = spec.target_sparsity(teacher_params)
    budgets = spec.budgets(teacher_params, teacher_macs)
    catalog = scan_audio(audio)
    if catalog.skipped:
        emit(Event("skipped_audio", "calibrate", metrics=catalog.summary(),
                   message=f"{len(catalog.skipped)} audio files skipped"))
    cal_catalog = scan_audio(calibration_audio) if calibration_audio else catalog
    if spec.evaluate and not any(item.extra.get("arpabet") for item in catalog.items):
        raise SpecError("evaluate=true needs a dataset manifest with an 'arpabet' phone field and 'split' rows "
                        "(train/test); this audio has none. Run without evaluation, or `skillkd evaluate` later")
    return JobInputs(device, teacher_model, teacher_params, target_sparsity, teacher_macs, budgets, catalog,
                     cal_catalog)


class _Timings(dict[str, float]):
    """Wall seconds per stage, kept in `workdir/timings.json` so a resumed run still reports the stages an
    earlier attempt finished (each stage counts the attempt that finished it)."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "timings.json"
        super().__init__(json.loads(self.path.read_text()) if self.path.exists() else {})

    def __setitem__(self, stage: str, seconds: float) -> None:
        super().__setitem__(stage, round(seconds, 3))
        self.path.write_text(json.dumps(dict(self), indent=2))

    def report(self) -> dict[str, float]:
        stages = {stage: self[stage] for stage in ("inputs", *STAGES) if stage in self}
        return {**stages, "total": round(sum(stages.values()), 3)}


def run(spec: CompressionSpec, teacher: Path | str, audio: Path | str, workdir: Path | str, *,
        calibration_audio: Path | str | None = None, on_event: OnEvent | None = None,
        should_stop: ShouldStop | None = None) -> PipelineResult:
    """Compress `teacher` on `audio` as `spec` says, in `workdir` (created, or resumed if it exists)."""
    teacher, audio, workdir = Path(teacher), Path(audio), Path(workdir)
    emit = on_event or ignore_event
    stop = _Stopper(should_stop or never_stop)
    select_device(spec.device)
    _check_spec(workdir, spec, teacher, audio)
    timings = _Timings(workdir)

    # 0. Inputs -------------------------------------------------------------------------------------------------
    t0 = time.monotonic()
    inputs = prepare_inputs(spec, teacher, audio, calibration_audio=calibration_audio, emit=emit)
    device, teacher_model, teacher_params = inputs.device, inputs.teacher, inputs.teacher_params
    target_sparsity, catalog, cal_catalog = inputs.target_sparsity, inputs.catalog, inputs.cal_catalog
    sr = teacher_model.config.sample_rate
    if _done(workdir, "export") is None:
        timings["inputs"] = time.monotonic() - t0

    # 1. Calibrate ----------------------------------------------------------------------------------------------
    cal = _done(workdir, "calibrate")
    if cal is None:
        t0 = time.monotonic()
        emit(Event("stage_started", "calibrate"))
        cal = calibrate(spec, teacher_model, cal_catalog, workdir / "calibrate", device, emit, stop)
        timings["calibrate"] = time.monotonic() - t0
        _mark_done(workdir, "calibrate", cal)
    clusters: list[list[int]] = cal["clusters"]
    emit(Event("clusters", "calibrate", metrics={"clusters": clusters, "k": len(clusters)}))
    emit(Event("stage_finished", "calibrate"))
    stop.check("calibrate")

    dim = teacher_model.config.hidden_size

    # 2. Stage 1: distillation + structured pruning ------------------------------------------------------------
    s1 = _done(workdir, "distill_prune")
    if s1 is None:
        t0 = time.monotonic()
        emit(Event("stage_started", "distill_prune"))
        recipe = spec.recipe(1)
        if spec.gpus > 1:
            s1 = run_parallel_stage(StageJob("distill_prune", spec.model_dump_json(), str(teacher), str(audio),
                                             str(workdir), clusters,
                                             budgets=[b.to_dict() for b in inputs.budgets]),
                                    spec.gpus, emit, stop.should_stop)
        else:
            student, targets = stages.new_student(teacher_model, clusters, spec, device)
            batches = stages.train_batches(catalog, sr, recipe, spec.seed)
            ctx = StageContext(workdir / "distill_prune", recipe, device, "distill_prune",
                               on_event=emit, should_stop=stop.should_stop, seed=spec.seed, compile=spec.compile,
                               data_workers=spec.data_workers, budgets=inputs.budgets,
                               macs_seconds=spec.macs_reference_seconds)
            s1 = train_stage(student, teacher_model, targets, batches, ctx)
        timings["distill_prune"] = time.monotonic() - t0
        _mark_done(workdir, "distill_prune", s1)
    emit(Event("stage_finished", "distill_prune", metrics=s1.get("final", {})))

    # 3. Finalise: physical pruning ----------------------------------------------------------------------------
    fin = _done(workdir, "finalize")
    if fin is None:
        t0 = time.monotonic()
        emit(Event("stage_started", "finalize"))
        fin = finalize(workdir, teacher_model, clusters, dim, spec, cal_catalog, sr, inputs.budgets)
        timings["finalize"] = time.monotonic() - t0
        _mark_done(workdir, "finalize", fin)
    emit(Event("stage_finished", "finalize", metrics={"num_params": fin["num_params"]}))
    stop.check("finalize")

    # 4. Stage 2: distillation of the fixed student ------------------------------------------------------------
    s2 = _done(workdir, "final_distill")
    if s2 is None:
        t0 = time.monotonic()
        emit(Event("stage_started", "final_distill"))
        student, targets = stages.load_result(workdir, stages.FINALIZED, clusters, dim, spec, device)
        recipe2 = spec.recipe(2)
        if spec.stage2_steps == 0:
            s2 = {"steps": 0, "final": {}, "seconds": 0.0}
            stages.save_result(workdir / stages.STAGE2_RESULT, student, targets)
        elif spec.gpus > 1:
            s2 = run_parallel_stage(StageJob("final_distill", spec.model_dump_json(), str(teacher), str(audio),
                                             str(workdir), clusters), spec.gpus, emit, stop.should_stop)
            state = load_checkpoint(workdir / "final_distill" / CHECKPOINT)
            student.load_state_dict(state["student"])
            targets.load_state_dict(state["targets"])
            stages.save_result(workdir / stages.STAGE2_RESULT, student, targets)
        else:
            batches = stages.train_batches(catalog, sr, recipe2, spec.seed + 1)
            ctx = StageContext(workdir / "final_distill", recipe2, device, "final_distill", on_event=emit,
                               should_stop=stop.should_stop, seed=spec.seed + 1, compile=spec.compile,
                               data_workers=spec.data_workers)
            s2 = train_stage(student, teacher_model, targets, batches, ctx)
            stages.save_result(workdir / stages.STAGE2_RESULT, student, targets)
        timings["final_distill"] = time.monotonic() - t0
        _mark_done(workdir, "final_distill", s2)
    emit(Event("stage_finished", "final_distill", metrics=s2.get("final", {})))

    # 5. Export --------------------------------------------------------------------------------------------------
    export_dir = workdir / "student"
    ex = _done(workdir, "export")
    if ex is None or not export_dir.exists():
        t0 = time.monotonic()
        emit(Event("stage_started", "export"))
        student, targets = stages.load_result(workdir, stages.STAGE2_RESULT, clusters, dim, spec)
        student.eval()
        report = {
            "skillkd_version": __version__,
            "method": spec.method,
            "spec": spec.model_dump(),
            "teacher": {"path": str(teacher), "architecture": teacher_model.config.architecture,
                        "layout": "large" if teacher_model.config.layer_norm_first else "base",
                        "num_layers": teacher_model.config.num_layers, "num_params": teacher_params,
                        "macs_per_second": inputs.teacher_macs,
                        "layers": [{"heads": lc.num_heads, "ffn": lc.ffn_dim} for lc in teacher_model.config.layers],
                        "conv_channels": [c.out_channels for c in teacher_model.config.conv]},
            "student": {"num_params": student.num_params(),
                        "macs_per_second": float(student.expected_macs(spec.macs_reference_seconds)),
                        "layers": [{"heads": lc.num_heads, "ffn": lc.ffn_dim} for lc in student.config.layers],
                        "conv_channels": [c.out_channels for c in student.config.conv]},
            "target_sparsity": target_sparsity,
            "achieved_sparsity": 1.0 - student.num_params() / teacher_params,
            "targets": _resolved_targets(spec, inputs, student),
            "clusters": clusters,
            "cka": cal["cka"],
            "calibration": {"utterances": cal.get("utterances"), "frames": cal.get("frames"),
                            "audio_seconds": cal.get("audio_seconds", cal.get("seconds"))},
            "audio": catalog.summary(),
            # the training loops' own `seconds` would be a second, partial clock: wall times are in timings_s
            "stage1": _without_seconds(s1), "finalize": fin, "stage2": _without_seconds(s2),
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "device": str(device)},
            "speed": speed.measure(teacher_model, student, device=device),
        }
        if export_dir.exists():
            shutil.rmtree(export_dir)
        save_student(student, export_dir, heads=targets, metadata={
            "teacher": report["teacher"], "clusters": clusters, "method": spec.method})
        for name in ("cka.png", "clusters.json"):
            src = workdir / "calibrate" / name
            if src.exists():
                shutil.copy2(src, export_dir / name)
        _merge_logs(workdir, export_dir / "train_log.jsonl")
        # the Hugging Face export (always) and the verified ONNX variants asked for (export.export_for_users)
        report.update(export_for_users(student.cpu(), export_dir, workdir / "student-hf", spec.export_onnx,
                                       audio=audio, seed=spec.seed, metadata={"teacher": report["teacher"]}))
        timings["export"] = time.monotonic() - t0
        report["timings_s"] = timings.report()
        (export_dir / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
        ex = {"export_dir": str(export_dir)}
        _mark_done(workdir, "export", ex)
        # a progress event carries the speed headline into the job's latest metrics (the service merges those)
        emit(Event("progress", "export", 1, 1, 0.0, speed.headline(report["speed"])))
    report = json.loads((export_dir / "report.json").read_text())
    emit(Event("stage_finished", "export", metrics=speed.headline(report["speed"]) if "speed" in report else {}))

    # 6. Evaluate (optional) -------------------------------------------------------------------------------------
    if spec.evaluate and _done(workdir, "evaluate") is None:
        t0 = time.monotonic()
        emit(Event("stage_started", "evaluate"))
        from .evaluation.run import evaluate

        result = evaluate(export_dir, audio, out_dir=workdir / "evaluate", seed=spec.seed)
        shutil.copy2(workdir / "evaluate" / "evaluation.json", export_dir / "evaluation.json")
        report["evaluation"] = result
        headline = evaluation_headline(result)
        report["evaluation_headline"] = headline
        timings["evaluate"] = time.monotonic() - t0
        report["timings_s"] = timings.report()
        (export_dir / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
        _mark_done(workdir, "evaluate", {"ok": True})
        # a progress event carries the headline into the job's latest metrics (the service merges those)
        emit(Event("progress", "evaluate", 1, 1, 0.0, headline))
        emit(Event("stage_finished", "evaluate", metrics=headline))

    artifacts = {"model": export_dir, "report.json": export_dir / "report.json"}
    for name, file in (("cka.png", "cka.png"), ("clusters.json", "clusters.json"),
                       ("train_log", "train_log.jsonl"), ("onnx", "model.onnx"), ("onnx_fp16", "model_fp16.onnx"),
                       ("onnx_int8", "model_quantized.onnx"), ("evaluation.json", "evaluation.json")):
        if (export_dir / file).exists():
            artifacts[name] = export_dir / file
    if (workdir / "student-hf").is_dir():
        artifacts["hf"] = workdir / "student-hf"
    return PipelineResult(export_dir, report, artifacts)


# ---------------------------------------------------------------------------------------------------------------
def calibrate(spec: CompressionSpec, teacher: SpeechEncoder, catalog: AudioCatalog, out: Path,
              device: torch.device, emit: OnEvent = ignore_event, stop: _Stopper | None = None) -> dict[str, Any]:
    """Streaming linear CKA over the teacher's L+1 representations, then the layer clusters."""
    out.mkdir(parents=True, exist_ok=True)
    num_reps = teacher.num_layers + 1
    cal = catalog.subset(spec.calibration_utterances, spec.calibration_seconds, seed=spec.seed)
    acc = StreamingCKA(num_reps, teacher.config.hidden_size, device=device)
    sr = teacher.config.sample_rate
    batch_seconds = 160.0 if device.type == "cuda" else 40.0
    batches = list(iter_padded_batches(cal, sample_rate=sr, batch_seconds=batch_seconds, max_utterance_s=30.0))
    teacher.eval()
    for i, batch in enumerate(batches):
        with torch.inference_mode():
            reps, frames = teacher(batch.waveforms.to(device), batch.lengths.to(device))
            acc.update(reps, frames)
        emit(Event("progress", "calibrate", i + 1, len(batches)))
        if stop is not None:
            stop.check("calibrate")
    cka = acc.compute()
    np.save(out / "cka.npy", cka)
    clustering: Clustering | None = None
    fixed = fixed_clusters(spec, num_reps)
    if fixed is not None:
        clusters = fixed
    elif spec.method == "dphubert":
        clusters = dphubert_clusters(teacher.num_layers)
    else:
        k = spec.clusters
        assert not isinstance(k, list)  # explicit groups are `fixed`
        if isinstance(k, int) and k > num_reps:
            k = num_reps  # the default k=4 on a teacher with fewer layers: one cluster per representation
        clustering = cluster_layers(cka, k, spec.linkage, spec.contiguous)
        clusters = clustering.clusters
    if clustering is None:  # still draw the similarity structure; boxes show the fixed clusters
        clustering = cluster_layers(cka, min(len(clusters), num_reps), spec.linkage, spec.contiguous)
        clustering = Clustering(clusters, clustering.linkage, clustering.method, len(clusters), False)
    from .plots import plot_cka

    plot_cka(cka, clustering, out / "cka.png",
             title=f"{teacher.config.architecture}: linear CKA of r0..r{teacher.num_layers}")
    info = {"clusters": clusters, "cka": cka.tolist(), "clustering": clustering.to_dict(),
            "utterances": len(cal.items), "audio_seconds": cal.total_seconds, "frames": int(acc.count)
            if hasattr(acc, "count") else None}
    (out / "clusters.json").write_text(json.dumps(info, indent=2, default=_json_default))
    return info


def _without_seconds(stage: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stage.items() if k != "seconds"}


def evaluation_headline(result: dict[str, Any]) -> dict[str, float]:
    """The evaluation's headline numbers (student's PER and SID accuracy) for job metrics."""
    headline: dict[str, float] = {}
    models = result.get("models") or []
    if models:
        student = models[0]
        if "pr" in student:
            headline["eval_per"] = float(student["pr"]["per"])
        if "sid" in student:
            headline["eval_sid_accuracy"] = float(student["sid"]["accuracy"])
    return headline


def finalize(workdir: Path, teacher: SpeechEncoder, clusters: list[list[int]], dim: int,
             spec: CompressionSpec, catalog: AudioCatalog, sr: int,
             budgets: list[Budget] | None = None) -> dict[str, Any]:
    """Load stage 1's final state, land the eval gates on the budgets (core/landing.py), prune physically
    and check the pruned model against the masked one."""
    student, targets = stages.restore(load_checkpoint(workdir / "distill_prune" / CHECKPOINT), clusters, dim, spec)
    student.eval()
    landing = land(student, budgets or [], seconds=spec.macs_reference_seconds)
    with torch.no_grad():
        expected = float(student.expected_num_params())
    probe = torch.from_numpy(_probe_audio(catalog, sr))[None]
    with torch.no_grad():
        before, _ = student(probe)
    config = student.prune()
    with torch.no_grad():
        after, _ = student(probe)
    diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
    stages.save_result(workdir / stages.FINALIZED, student, targets)
    return {"num_params": student.num_params(), "expected_params_before": expected,
            "macs_per_second": float(student.expected_macs(spec.macs_reference_seconds)), "landing": landing,
            "max_abs_diff_masked_vs_pruned": diff,
            "layers": [{"heads": lc.num_heads, "ffn": lc.ffn_dim} for lc in config.layers],
            "conv_channels": [c.out_channels for c in config.conv]}


def _resolved_targets(spec: CompressionSpec, inputs: JobInputs, student: SpeechEncoder) -> dict[str, Any]:
    """What the spec asked for, resolved against the teacher, next to what the student achieved."""
    achieved = {"params": float(student.num_params()),
                "macs": float(student.expected_macs(spec.macs_reference_seconds))}
    out: dict[str, Any] = {"macs_reference_seconds": spec.macs_reference_seconds}
    for budget in inputs.budgets:
        out[budget.kind] = {**budget.to_dict(), "achieved": achieved[budget.kind],
                            "achieved_sparsity": 1.0 - achieved[budget.kind] / budget.teacher,
                            "relative_error": achieved[budget.kind] / budget.target - 1.0}
    return out


def _probe_audio(catalog: AudioCatalog, sr: int) -> np.ndarray:
    from .audio import load_waveform

    wave = load_waveform(catalog.items[0], sr)
    return wave[: 4 * sr].astype(np.float32)


def _merge_logs(workdir: Path, out: Path) -> None:
    with open(out, "w") as f:
        for stage in ("distill_prune", "final_distill"):
            log = workdir / stage / "train_log.jsonl"
            if log.exists():
                for line in log.read_text().splitlines():
                    if line.strip():
                        f.write(json.dumps({"stage": stage, **json.loads(line)}) + "\n")
