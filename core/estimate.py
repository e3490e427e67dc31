"""Estimate a compression job before running it: `skillkd compress ... --dry-run`, `POST
/v1/jobs?dry_run=true`.

A dry run does what a real run does up to its first stage, and no more:

1. Inputs: `core.inputs.prepare_inputs`, the real run's own validation (device, teacher, target against the
   teacher, explicit clusters, audio, evaluation labels), then the training batches of both stages are built
   as the real stages build them (an audio set with no utterance long enough fails here, as it would there).
2. Sizes: the teacher's parameters and MACs per audio second, the targets, and two students of the target
   size that bracket what a run learns: `uniform`, every prunable unit kind (conv channels where the layout
   allows, heads, FFN units) kept in the same fraction, the largest that meets every target; and
   `conv_kept`, the same with every conv channel kept (what parameter targets tend to learn: the extractor
   holds much compute and few parameters). Stage 2 is timed on `uniform` when a MACs target is given, else
   on `conv_kept`.
3. Work: steps, audio seconds per stage and the calibration subset, from the spec's recipe.
4. Time: a few real steps (`core.distill.train.DistillStep`) of stage 1 (the masked student) and stage 2 (the
uniform
   student) on the chosen device, on batches from the real loader, after one untimed step each; one
   calibration batch through the teacher and the CKA accumulator; one forward pass of each model for the
   report's speed measurement. Stage time = steps x median step time. Eager mode (a `compile` run adds its
   compilation time), one process (a `gpus` > 1 run adds its gradient all-reduce).

Nothing is written: no workdir, no checkpoint, no output directory.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from core.calibrate.cka import StreamingCKA
from core.calibrate.latency import cost_model_for
from core.data import TrainBatches, iter_padded_batches
from core.distill.build import cluster_targets, train_batches
from core.distill.quant_aware import int8_aware
from core.distill.train import DistillStep
from core.errors import SpecError
from core.evaluation.speed import (
    RUNS,
    SECONDS,
    WARMUP,
    available_cores,
    default_runs,
    interleaved_times,
    torch_threads,
)
from core.events import OnEvent, ignore_event
from core.export.onnx import LATENCY_TIMERS
from core.finalize.measured import CANDIDATES, landing_runs
from core.inputs import JobInputs, prepare_inputs
from core.models import SpeechEncoder, make_student
from core.models.latency import CostModel
from core.rules import dphubert_clusters, fixed_clusters
from core.spec import Budget, CompressionSpec, target_words
from core.timing import CHILD_START_SECONDS

TIMED_STEPS = 3


def default_clusters(spec: CompressionSpec, num_layers: int) -> list[list[int]]:
    """The clusters a run would most likely use, before calibration decides: explicit ones as given,
    DPHuBERT's fixed layers, else k contiguous groups over r[0..L] (the usual outcome; the cost hardly depends
    on it)."""
    num_reps = num_layers + 1
    fixed = fixed_clusters(spec, num_reps)
    if fixed is not None:
        return fixed
    if spec.method == "dphubert":
        return dphubert_clusters(num_layers)
    if isinstance(spec.clusters, int):
        k = spec.clusters
    else:  # 'auto': as many clusters as target weights were given, else the default 4
        k = len(spec.target_weights) if spec.target_weights else 4
    k = min(k, num_reps)
    bounds = [round(i * num_reps / k) for i in range(k + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(k)]


# ------------------------------------------------------------------------------------------------------------
# The uniform student


def keep_fraction(student: SpeechEncoder, fraction: float, conv: bool = True) -> None:
    """Set every mask so that its eval gate keeps the first round(fraction * n) units (at least one conv
    channel; every conv channel with `conv=False`; whole-layer gates stay open)."""
    with torch.no_grad():
        for module in student.modules():
            for name in ("hard_concrete", "layer_hard_concrete"):
                hc = getattr(module, name, None)
                if hc is None or not hasattr(hc, "log_alpha"):
                    continue
                keep = hc.n if name == "layer_hard_concrete" else round(fraction * hc.n)
                if "conv" in type(module).__name__.lower():
                    keep = max(1, keep) if conv else hc.n
                log_alpha = torch.full((hc.n,), -30.0)
                log_alpha[:keep] = 30.0
                hc.log_alpha.copy_(log_alpha.to(hc.log_alpha.device))


def _sizes(student: SpeechEncoder, seconds: float, cost_model: CostModel | None = None) -> dict[str, float]:
    with torch.no_grad():
        sizes = {
            "params": float(student.expected_num_params()),
            "macs": float(student.expected_macs(seconds)),
        }
        if cost_model is not None:
            sizes["latency"] = float(cost_model.predict(student))
        return sizes


def uniform_student(
    student: SpeechEncoder,
    budgets: list[Budget],
    seconds: float,
    conv: bool = True,
    cost_model: CostModel | None = None,
) -> dict[str, Any] | None:
    """Set `student`'s masks (eval mode) to the largest uniform keep fraction that meets every budget;
    returns that fraction and the sizes it gives (None if even keeping nothing prunable misses a target).
    `conv=False` keeps every conv channel and prunes only heads and FFN units. A latency budget needs the
    `cost_model` that predicts it."""
    student.eval()

    def fits(fraction: float) -> bool:
        keep_fraction(student, fraction, conv)
        sizes = _sizes(student, seconds, cost_model)
        return all(sizes[b.kind] <= b.target for b in budgets)

    if not fits(0.0):
        return None
    low, high = 0.0, 1.0
    if fits(high):
        low = high
    else:
        for _ in range(30):  # the sizes are step functions of the fraction: bisect to well below one unit
            middle = (low + high) / 2
            low, high = (middle, high) if fits(middle) else (low, middle)
    keep_fraction(student, low, conv)
    sizes = _sizes(student, seconds, cost_model)
    out: dict[str, Any] = {
        "keep_fraction": round(low, 4),
        "num_params": round(sizes["params"]),
        "macs_per_second": round(sizes["macs"]),
    }
    if "latency" in sizes:
        out["predicted_latency_s"] = sizes["latency"]
    return out


# ------------------------------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: DistillStep, batches: Any, device: torch.device, steps: int) -> dict[str, Any]:
    """Median seconds of `steps` real steps (batch loading included, as in the loop), after one untimed."""
    times, audio = [], []
    for i in range(steps + 1):
        _sync(device)
        start = time.perf_counter()
        batch = batches.serve(i)
        values, _, _ = step(i, batch.waveforms.to(device))
        float(values["loss"])  # the loop reads the figures back: wait for the step
        _sync(device)
        if i > 0:
            times.append(time.perf_counter() - start)
            audio.append(batch.waveforms.numel() / step.student.config.sample_rate)
    return {
        "step_s": statistics.median(times),
        "times_s": [round(t, 4) for t in times],
        "batch_audio_s": statistics.mean(audio),
    }


def time_calibration(spec: CompressionSpec, inputs: JobInputs) -> dict[str, Any]:
    """Seconds per audio second of calibration (teacher forward + CKA update), from its first batch."""
    teacher, device = inputs.teacher, inputs.device
    cal = inputs.cal_catalog.subset(spec.calibration_utterances, spec.calibration_seconds, seed=spec.seed)
    sr = teacher.config.sample_rate
    batch_seconds = 160.0 if device.type == "cuda" else 40.0
    batch = next(
        iter(iter_padded_batches(cal, sample_rate=sr, batch_seconds=batch_seconds, max_utterance_s=30.0))
    )
    acc = StreamingCKA(teacher.num_layers + 1, teacher.config.hidden_size, device=device)
    teacher.eval()
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        reps, frames = teacher(batch.waveforms.to(device), batch.lengths.to(device))
        acc.update(reps, frames)
    _sync(device)
    seconds = time.perf_counter() - start
    batch_audio = float(batch.lengths.sum()) / sr
    return {
        "utterances": len(cal.items),
        "audio_seconds": cal.total_seconds,
        "s_per_audio_s": seconds / max(batch_audio, 1e-9),
    }


def time_speed_measurement(teacher: SpeechEncoder, student: SpeechEncoder) -> float:
    """What the report's speed measurement (core.evaluation.speed.measure) will take: one timed pass of each
    model per setting, times the passes it makes, plus the two MACs-counting passes."""
    runs = default_runs()
    if runs == 0:
        return 0.0
    passes = WARMUP + runs
    models = {"teacher": teacher, "student": student}
    with torch_threads(1):
        one = interleaved_times(models, seconds=SECONDS, runs=1, warmup=0)
    total = passes * sum(v[0] for v in one.values())
    total += sum(v[0] for v in one.values())  # count_macs: one pass each
    total += CHILD_START_SECONDS * (2 if available_cores() > 1 else 1)  # each setting in a fresh process
    if available_cores() > 1:
        with torch_threads(available_cores()):
            every = interleaved_times(models, seconds=SECONDS, runs=1, warmup=0)
        total += passes * sum(v[0] for v in every.values())
    return total


def time_measured_landing(latency: dict[str, Any] | None) -> float:
    """What finalize's timing of a latency budget (core.finalize.measured) will take: the teacher and every
    candidate student (about the target's time each, by the cost model) passed WARMUP + runs times; 0 without
    a latency budget or with SKILLKD_SPEED_RUNS=0. Its first session only: a second one, timed when the
    first one's candidates all missed the target on one side, adds about as much again."""
    runs = landing_runs()
    if latency is None or runs == 0:
        return 0.0
    passes = (WARMUP + runs) * (latency["teacher_predicted_s"] + len(CANDIDATES) * latency["target_s"])
    return CHILD_START_SECONDS + passes  # in a fresh process (core.timing.timed_rounds_in_fresh_process)


# ------------------------------------------------------------------------------------------------------------
# The estimate


def _shapes(spec: CompressionSpec, inputs: JobInputs) -> tuple[SpeechEncoder, dict[str, Any], str]:
    """The masked student set to the uniform shape stage 2 is timed on, the candidate shapes, and which
    one."""
    seconds = spec.macs_reference_seconds
    torch.manual_seed(spec.seed)
    student = make_student(inputs.teacher, layers=spec.prune_layers)
    cost_model = inputs.cost_model
    shapes = {
        "conv_kept": uniform_student(student, inputs.budgets, seconds, conv=False, cost_model=cost_model),
        "uniform": uniform_student(student, inputs.budgets, seconds, cost_model=cost_model),
    }
    timed_shape = (
        "uniform"
        if any(b.kind in ("macs", "latency") for b in inputs.budgets) or shapes["conv_kept"] is None
        else "conv_kept"
    )
    if shapes[timed_shape] is None:  # not even an empty transformer meets the targets
        raise SpecError(
            "no student of this teacher's layout meets the targets "
            f"({', '.join(f'{b.kind} <= {b.target:.4g}' for b in inputs.budgets)})"
        )
    uniform_student(student, inputs.budgets, seconds, conv=timed_shape == "uniform", cost_model=cost_model)
    return student, shapes, timed_shape


def _time_training(
    spec: CompressionSpec,
    inputs: JobInputs,
    student: SpeechEncoder,
    pruned: SpeechEncoder,
    batches: tuple[TrainBatches, TrainBatches],
    timed_steps: int,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Seconds per step of stage 1 (the masked student from its initial masks) and stage 2 (the pruned
    one)."""
    model, device = inputs.teacher, inputs.device
    dim = model.config.hidden_size
    recipe1, recipe2 = spec.recipe(1), spec.recipe(2)
    batches1, batches2 = batches
    clusters = default_clusters(spec, model.num_layers)
    for hc in student.hard_concretes():  # stage 1 starts from the masks' initial state
        hc.reset_parameters()
    targets = cluster_targets(clusters, dim, spec).to(device)
    step1 = DistillStep(
        student,
        model,
        targets,
        recipe1,
        device,
        budgets=inputs.budgets,
        macs_seconds=spec.macs_reference_seconds,
        cost_model=inputs.cost_model,
    )
    timing1 = time_steps(step1, batches1, device, timed_steps)
    del step1, targets
    if spec.stage2_steps == 0:
        return timing1, None
    pruned.to(device)
    # an int8-aware stage 2 is timed as it trains: through the rounding, with its consistency pass (1.9 plain
    # steps on one CPU thread, wavlm-mini), the hooks gone after
    rounding = int8_aware(pruned, spec.int8_consistency) if spec.int8_aware else contextlib.nullcontext()
    with rounding as int8:
        targets2 = cluster_targets(clusters, dim, spec).to(device)
        step2 = DistillStep(pruned, model, targets2, recipe2, device, int8=int8)
        timing2 = time_steps(step2, batches2, device, timed_steps)
    return timing1, {**timing2, "int8_aware": spec.int8_aware}


def _work(
    spec: CompressionSpec,
    calibration: dict[str, Any],
    timing1: dict[str, Any],
    timing2: dict[str, Any] | None,
) -> dict[str, Any]:
    """How much the run will process: calibration audio, steps, audio through the training stages."""
    recipe1, recipe2 = spec.recipe(1), spec.recipe(2)
    stage2_steps = 0 if spec.stage2_steps == 0 else recipe2.steps
    world = spec.gpus * (spec.grad_accumulation or 1)  # batches per optimiser step
    return {
        "calibration_utterances": calibration["utterances"],
        "calibration_audio_seconds": round(calibration["audio_seconds"], 1),
        "stage1_steps": recipe1.steps,
        "stage2_steps": stage2_steps,
        "gpus": spec.gpus,
        "grad_accumulation": spec.grad_accumulation or 1,
        "batch_seconds": {"stage1": recipe1.batch_seconds, "stage2": recipe2.batch_seconds},
        "stage1_audio_seconds": round(recipe1.steps * timing1["batch_audio_s"] * world, 1),
        "stage2_audio_seconds": round(
            stage2_steps * (timing2["batch_audio_s"] if timing2 else 0.0) * world, 1
        ),
    }


def _latency_budget(spec: CompressionSpec, inputs: JobInputs) -> dict[str, Any] | None:
    """With target_speedup: the teacher's cost model on the speed target (the cache's, else fitted now and
    cached, as the run's calibrate stage would), the latency budget resolved with it into `inputs`; what the
    dry run says of it."""
    if spec.target_speedup is None:
        return None
    document = cost_model_for(
        inputs.teacher,
        target=spec.speed_target,
        threads=spec.speed_threads,
        seconds=spec.macs_reference_seconds,
        out=None,
        seed=spec.seed,
        make_timer=LATENCY_TIMERS.get(spec.speed_target),
    )
    inputs.use_cost_model(spec, CostModel.from_dict(document["cost_model"]))
    fit = document["fit"]
    return {
        "target": spec.speed_target,
        "threads": spec.speed_threads,
        "target_speedup": spec.target_speedup,
        "teacher_predicted_s": document["teacher_predicted_s"],
        "target_s": document["teacher_predicted_s"] / spec.target_speedup,
        "from_cache": document["from_cache"],
        "mean_abs_relative_error": fit["mean_abs_relative_error"],
        "fit_seconds": 0.0 if document["from_cache"] else fit["fit_seconds"],
        "int8_aware": spec.int8_aware,
        "margin": spec.speed_margin,
    }


def estimate(
    spec: CompressionSpec,
    teacher: Path | str,
    audio: Path | str,
    *,
    calibration_audio: Path | str | None = None,
    timed_steps: int = TIMED_STEPS,
    on_event: OnEvent | None = None,
) -> dict[str, Any]:
    """Validate the job as a real run would and estimate what it will produce, process and take. Writes
    nothing."""
    if timed_steps < 1:
        raise ValueError(f"timed_steps must be >= 1, found {timed_steps}")
    started = time.monotonic()
    teacher, audio = Path(teacher), Path(audio)
    inputs = prepare_inputs(
        spec, teacher, audio, calibration_audio=calibration_audio, emit=on_event or ignore_event
    )
    latency = _latency_budget(spec, inputs)
    inputs_s = time.monotonic() - started
    model = inputs.teacher
    recipe1, recipe2 = spec.recipe(1), spec.recipe(2)
    stage2_steps = 0 if spec.stage2_steps == 0 else recipe2.steps
    # built as the real stages build them (one rank's share when data parallel), which checks the audio again
    sr = model.config.sample_rate
    batches = (
        train_batches(inputs.catalog, sr, recipe1, spec.seed, world_size=spec.gpus),
        train_batches(inputs.catalog, sr, recipe2, spec.seed + 1, world_size=spec.gpus),
    )

    student, shapes, timed_shape = _shapes(spec, inputs)
    pruned = copy.deepcopy(student)
    pruned.prune()
    calibration = time_calibration(spec, inputs)
    timing1, timing2 = _time_training(spec, inputs, student, pruned, batches, timed_steps)
    del student
    pruned.cpu().eval()
    export_s = time_speed_measurement(model, pruned)
    landing_s = time_measured_landing(latency)

    accumulation = spec.grad_accumulation or 1  # a step adds up this many timed batches
    estimated = {
        "inputs": inputs_s,
        "calibrate": calibration["audio_seconds"] * calibration["s_per_audio_s"],
        "distill_prune": recipe1.steps * timing1["step_s"] * accumulation,
        "finalize": landing_s,
        "final_distill": stage2_steps * timing2["step_s"] * accumulation if timing2 else 0.0,
        "export": export_s,
    }
    estimated = {k: round(v, 1) for k, v in estimated.items()}
    estimated["total"] = round(sum(estimated.values()), 1)
    return {
        "dry_run": True,
        "teacher": inputs.teacher_facts(teacher),
        "task_head": inputs.head_facts(spec),
        "int8_aware": spec.int8_aware,
        "int8_aware_consistency": spec.int8_consistency,
        "macs_reference_seconds": spec.macs_reference_seconds,
        "targets": [b.to_dict() for b in inputs.budgets],
        **({"latency": latency} if latency is not None else {}),
        "student_estimate": {
            **shapes,
            "stage2_timed_on": timed_shape,
            "basis": "uniform: every prunable unit kind kept in the same fraction, the largest that meets "
            "every target; conv_kept: the same with every conv channel kept. A run learns its own shape "
            "under the same targets",
        },
        "audio": inputs.catalog.summary(),
        "work": _work(spec, calibration, timing1, timing2),
        "device": str(inputs.device),
        "threads": torch.get_num_threads(),
        "timing": {
            "timed_steps": timed_steps,
            "stage1": timing1,
            "stage2": timing2,
            "calibration_s_per_audio_s": round(calibration["s_per_audio_s"], 5),
            "speed_measurement_runs": default_runs(),
            "notes": "eager steps in one process: compilation (--compile) and multi-GPU all-reduce not "
            f"included; the report's speed measurement makes {WARMUP} + {RUNS} passes per setting by default",
        },
        "estimated_seconds": estimated,
        "dry_run_seconds": round(time.monotonic() - started, 1),
    }


BY_DEFAULT = " (by default: the manifest has transcripts)"


def _head_lines(head: dict[str, Any] | None) -> list[str]:
    """The teacher's task head and what the student keeps of it (nothing when the teacher has none)."""
    if head is None:
        return []
    if not head["kept"]:
        return [f"head:     {head['dropped']}; dropped (drop_head): the student is an encoder alone"]
    return [
        f"head:     {head['description']}; the student keeps it, distilled on the teacher's outputs "
        f"(weight {head['weight']:g}, temperature {head['temperature']:g}"
        + (f"; its input, weight {head['input_weight']:g}" if head.get("input_weight") else "")
        + (
            f"; on the manifest's labels, weight {head['supervised_weight']:g}"
            + (BY_DEFAULT if head.get("supervised_by_default") else "")
            if head.get("supervised_weight")
            else ""
        )
        + ") and exports as the same task model"
    ]


def render(result: dict[str, Any]) -> str:
    """The estimate as a few lines for a terminal."""
    from core.evaluation.run import format_count

    t, w, e = result["teacher"], result["work"], result["estimated_seconds"]
    timing = result["timing"]
    ref = f"{result['macs_reference_seconds']:g} s utterance"
    targets = ", ".join(
        f"{b['kind']} <= {format_count(b['target'])}{' MACs/s' if b['kind'] == 'macs' else ''} "
        f"(sparsity {b['sparsity']:.3f})"
        for b in result["targets"]
        if b["kind"] != "latency"
    ) or ("latency alone (below)" if result.get("latency") else "none")
    latency = result.get("latency")
    latency_lines = (
        [
            f"latency:  {latency['target_speedup']:g}x faster than the teacher on "
            f"{target_words(latency['target'], latency['threads'])}: <= "
            f"{1000 * latency['target_s']:.1f} ms per {ref} (teacher predicted "
            f"{1000 * latency['teacher_predicted_s']:.1f} ms; cost model "
            + (
                "from the cache"
                if latency["from_cache"]
                else f"fitted in {latency['fit_seconds']:.1f} s and cached"
            )
            + f", mean error {100 * latency['mean_abs_relative_error']:.1f}% on its shapes)",
            "          finalize keeps the least pruned student timed at "
            f"{latency['target_speedup'] * (1 + latency['margin']):.3g}x or more on the clock"
            + (f" (speed_margin {latency['margin']:.0%})" if latency["margin"] else ""),
        ]
        + (
            [
                "          onnx-int8 times static_conv files; without --int8-aware the student's int8 file "
                "may miss the int8 gate (README: int8 that is faster)"
            ]
            if latency["target"] == "onnx-int8" and not latency.get("int8_aware")
            else []
        )
        if latency
        else []
    )
    audio = result["audio"]
    stage2 = (
        f"{w['stage2_steps']} steps x {w['batch_seconds']['stage2']:g} s" if w["stage2_steps"] else "skipped"
    )
    timed2 = ""
    if timing["stage2"]:
        timed2 = f", stage 2 {timing['stage2']['step_s']:.3f} s/step"
        if timing["stage2"].get("int8_aware"):
            timed2 += " (int8-aware: through the rounding, with its consistency pass)"
    lines = [
        "dry run: inputs checked as a real run checks them; nothing was written"
        + (" but the latency cost model's cache" if latency and not latency["from_cache"] else ""),
        f"teacher:  {t['name']} ({t['architecture']}, {t['layout']} layout, {t['num_layers']} "
        "layers): "
        f"{format_count(t['num_params'])} params, {format_count(t['macs_per_second'])} MACs per audio second "
        f"({ref})",
        *_head_lines(result.get("task_head")),
        f"targets:  {targets}",
        *latency_lines,
        *_student_lines(result["student_estimate"]),
        *(
            [
                "int8:     stage 2 trains through the int8 export's rounding (int8_aware); the int8 ONNX "
                "export then quantises the conv front end too (static_conv)",
                "          consistency term (rounded student to its fp32 self): "
                + (
                    f"weight {result['int8_aware_consistency']:g}"
                    if result.get("int8_aware_consistency")
                    else "off"
                ),
            ]
            if result.get("int8_aware")
            else []
        ),
        f"audio:    {audio.get('files')} files, {audio.get('hours', 0.0):.2f} h"
        + (f" ({sum(audio['skipped'].values())} skipped)" if audio.get("skipped") else ""),
        f"work:     calibration {w['calibration_utterances']} utterances ({w['calibration_audio_seconds']:g} "
        "s of "
        f"audio); stage 1 {w['stage1_steps']} steps x {w['batch_seconds']['stage1']:g} s; stage 2 {stage2}"
        + (f"; x {w['gpus']} GPUs" if w["gpus"] > 1 else ""),
        f"          {w['stage1_audio_seconds'] + w['stage2_audio_seconds']:g} s of audio through the "
        "training "
        f"stages ({w['stage1_audio_seconds']:g} + {w['stage2_audio_seconds']:g})",
        f"timed:    on {result['device']} ({result['threads']} "
        f"thread{'s' if result['threads'] != 1 else ''}), median of {timing['timed_steps']} steps "
        f"after one: stage 1 {timing['stage1']['step_s']:.3f} s/step{timed2}",
        f"estimate: {_duration(e['total'])} (inputs {e['inputs']:g} s, calibrate {e['calibrate']:g} s, stage "
        "1 "
        f"{e['distill_prune']:g} s, "
        + (f"finalize's timing {e['finalize']:g} s, " if e["finalize"] else "")
        + f"stage 2 {e['final_distill']:g} s, export {e['export']:g} s)",
        f"(this dry run took {result['dry_run_seconds']:g} s)",
    ]
    return "\n".join(lines)


def _student_lines(estimate: dict[str, Any]) -> list[str]:
    from core.evaluation.run import format_count

    labels = {"uniform": "pruned alike", "conv_kept": "conv kept"}
    lines: list[str] = []
    for shape, label in labels.items():
        s = estimate.get(shape)
        text = (
            (
                "none meets the targets: the conv front end alone costs more"
                if shape == "conv_kept"
                else "no such student meets the targets"
            )
            if s is None
            else f"~{format_count(s['num_params'])} params, ~{format_count(s['macs_per_second'])} MACs/s "
            f"(keep {s['keep_fraction']:.3f} of heads, FFN "
            f"units{' and conv channels' if shape == 'uniform' else ''})"
        )
        timed = ", stage 2 timed on it" if estimate.get("stage2_timed_on") == shape else ""
        lines.append(f"{'student:' if not lines else '':<10}{label}: {text}{timed}")
    lines.append(f"{'':<10}(a run learns its own shape under the same targets)")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["default_clusters", "estimate", "render", "time_steps", "uniform_student"]
