"""Fit the latency cost model (`core.models.latency.CostModel`) of a teacher on its speed target, before stage
1 (a `target_speedup` run does it in the calibrate stage).

The teacher and `shapes` randomly pruned copies of it (every mask keeps a random fraction of its units,
log-uniform between 0.02 and 1, seeded; then pruned physically, so the copies are exactly the kind of model a
student becomes) are timed on one utterance of the reference length, in interleaved rounds
(`core.evaluation.speed`), the median per model. Non-negative least squares (scipy's nnls) on the features of
each model gives the coefficients: every cost is a time, none can be negative, and the columns are scaled by
the teacher's features first so that MACs (1e9) and the intercept (1) weigh alike.

Fits are cached under `SKILLKD_CACHE_DIR` (default ~/.cache/skillkd), `latency/<key>.json`, the key a hash of
the sampling's version and what the timings depend on: the teacher's architecture (its config, not its
weights), the target, the threads, the utterance length, torch's version and the CPU model.
`SKILLKD_LATENCY_SHAPES` and `SKILLKD_LATENCY_ROUNDS` (environment) cut the work (the test suite sets them).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls

from core import timing
from core.calibrate.clock import time_in_fresh_process, time_in_place
from core.models import SpeechEncoder, make_student
from core.models.hardconcrete import HardConcrete
from core.models.latency import CostModel, conv_groups, feature_names, feature_vector

SHAPES = 12  # randomly pruned copies besides the teacher
ROUNDS = 3  # timed passes of each, after one untimed
# Each mask of a shape keeps a fraction of its units drawn log-uniformly in [MIN_KEEP, 1]: small students (a
# 4x latency target prunes most heads and most of the front end) are the regime the model must predict, and a
# fit on shapes that keep 10-100% uniformly extrapolated to them badly (a hubert-mini student measured 6.1x
# faster than its teacher was predicted 3.3x-4.0x; fitted on log-uniform shapes: 6.5x).
MIN_KEEP = 0.02
# in the cache key: fits made by an earlier sampling (1), before the positional conv's overlap-save (2) or on
# shapes that all kept some of every attention and FFN block (3) are not reused. Shapes of version 3 kept at
# least one head per layer (a quarter of a mini teacher's attention), so the fit never saw a layer without
# attention and put the fixed costs (positional conv, LayerNorms) on the attention MACs: the 4x students of
# both mini teachers, which keep no head at all, measured 3.1x where it predicted 4.0x; or (4) timed on the
# CPU in the fitting process itself rather than in a fresh one (`core.timing.timed_rounds_in_fresh_process`),
# or (5) in rounds whose order let the first shape follow the teacher in half of them, where it reads a few
# percent slow (`core.timing.round_order`)
FIT_VERSION = 6
# in the key of a target that times int8 files: fits that timed static_conv files before their tuning for
# onnxruntime (`core.export.onnx.tune_static_conv`, version 2) are not reused; other targets' keys unchanged
INT8_FILE_VERSIONS = {"onnx-int8": 2}
SHAPES_ENV = "SKILLKD_LATENCY_SHAPES"
ROUNDS_ENV = "SKILLKD_LATENCY_ROUNDS"
CACHE_ENV = "SKILLKD_CACHE_DIR"
COST_MODEL_FILE = "cost_model.json"

# models -> median seconds of one forward pass of each over the utterance (injectable: tests fake the clock)
Timer = Callable[[list[SpeechEncoder]], list[float]]
# (seconds, threads, rounds) -> a Timer on one target: `cpu_timer` for "cpu"; the others' come from the caller
# (core.export.onnx.LATENCY_TIMERS: timing an ONNX file needs the export, a later stage than this one)
TimerFactory = Callable[[float, int, int], Timer]


def _env_count(name: str, default: int, least: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < least:
        raise ValueError(f"{name} must be a whole number >= {least}, found {value!r}")
    return int(value)


def default_shapes() -> int:
    return _env_count(SHAPES_ENV, SHAPES, 1)


def default_rounds() -> int:
    return _env_count(ROUNDS_ENV, ROUNDS, 1)


def cache_dir() -> Path:
    """`SKILLKD_CACHE_DIR`, else ~/.cache/skillkd."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "skillkd"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(teacher: SpeechEncoder, target: str, threads: int, seconds: float) -> dict[str, Any]:
    """What a fit depends on (the key's fields; `key_digest` hashes them)."""
    key = {
        "architecture": asdict(teacher.config.without_masks()),
        "fit_version": FIT_VERSION,
        "target": target,
        "threads": threads,
        "seconds": seconds,
        "torch": torch.__version__,
        **device_model(target),
    }
    if target in INT8_FILE_VERSIONS:
        key["int8_file"] = INT8_FILE_VERSIONS[target]
    return key


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def random_shapes(teacher: SpeechEncoder, n: int, seed: int) -> list[SpeechEncoder]:
    """`n` physically pruned copies of `teacher` (on the CPU): each mask keeps a random fraction of its units
    drawn log-uniformly in [MIN_KEEP, 1], the units themselves random too; each shape also empties every
    attention and FFN mask with a probability of its own (uniform in [0, 1), squared), so some shapes lose
    whole blocks, as trained students do."""
    rng = random.Random(seed)
    base = copy.deepcopy(teacher).cpu()
    shapes = []
    for _ in range(n):
        student = make_student(base)
        student.eval()
        empty = rng.random() ** 2
        for name, hc in student.named_modules():
            if not isinstance(hc, HardConcrete):
                continue
            fraction = math.exp(rng.uniform(math.log(MIN_KEEP), 0.0))
            keep = max(1, int(round(fraction * hc.n)))
            if not name.startswith("feature_extractor.") and rng.random() < empty:
                keep = 0  # the whole attention or FFN block goes
            chosen = rng.sample(range(hc.n), keep)
            override = torch.zeros(hc.n, dtype=torch.bool)
            override[chosen] = True
            hc.keep_override = override
        student.prune()
        shapes.append(student)
    return shapes


def _torch_timer(device: str, seconds: float, threads: int, rounds: int) -> Timer:
    """Median seconds per forward pass of each model in PyTorch fp32 on `device`, in this process
    (`core.calibrate.clock.time_in_place`)."""

    def timer(models: list[SpeechEncoder]) -> list[float]:
        return time_in_place(list(models), seconds, threads, rounds, device=device)

    return timer


def cpu_timer(seconds: float, threads: int, rounds: int) -> Timer:
    """The timer of the `cpu` target: PyTorch fp32 on the CPU with `threads` threads, in a fresh process
    (`core.calibrate.clock.time_in_fresh_process`: a job's own process times small students slower and the
    teacher faster once it has trained)."""

    def timer(models: list[SpeechEncoder]) -> list[float]:
        return time_in_fresh_process(list(models), seconds, threads, rounds)

    return timer


def cuda_timer(seconds: float, threads: int, rounds: int) -> Timer:
    """The timer of the `cuda` target: PyTorch fp32 on the current CUDA GPU (a job's own: the pipeline makes
    its `cuda:N` current), batch 1 (`threads` host threads)."""
    if timing.gpu_name() is None:
        raise RuntimeError("the cuda speed target needs a CUDA GPU")  # callers check first (SpecError)
    return _torch_timer("cuda", seconds, threads, rounds)


def timer_factory(target: str, make_timer: TimerFactory | None = None) -> TimerFactory:
    """`make_timer` when given (the caller's, for a target timed outside PyTorch: the ONNX targets' are
    core.export.onnx.LATENCY_TIMERS), else PyTorch's for `target` ("cpu", "cuda"); a ValueError for a target
    with neither."""
    if make_timer is not None:
        return make_timer
    if target == "cpu":
        return cpu_timer
    if target == "cuda":
        return cuda_timer
    raise ValueError(f"cannot time {target!r} without its timer")


def device_model(target: str) -> dict[str, str]:
    """What the timings of `target` ran on, for the cache key: the CPU model, and on `cuda` the GPU's name
    and CUDA version too."""
    where = {"cpu": cpu_model()}
    gpu = timing.gpu_name() if target == "cuda" else None
    if gpu is not None:
        where["gpu"] = gpu
        where["cuda"] = str(torch.version.cuda)
    return where


def fit_coefficients(features: np.ndarray, times: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Non-negative least squares of `times` (model,) on `features` (model, feature), with each column divided
    by `scale` (feature,) first (the teacher's features: MACs and the intercept then weigh alike; a column
    that is zero for the teacher is not scaled). Returns the coefficients in the features' own units."""
    scale = np.where(scale > 0, scale, 1.0)
    # relative errors: every row divided by its time, so the fastest shapes count as much as the teacher
    weights = 1.0 / np.maximum(times, 1e-12)
    a = features / scale[None, :] * weights[:, None]
    solution, _ = nnls(a, times * weights)
    return np.asarray(solution / scale, dtype=np.float64)


def fit_cost_model(
    teacher: SpeechEncoder,
    *,
    target: str = "cpu",
    threads: int = 1,
    seconds: float = 10.0,
    shapes: int | None = None,
    rounds: int | None = None,
    seed: int = 0,
    timer: Timer | None = None,
    make_timer: TimerFactory | None = None,
) -> tuple[CostModel, dict[str, Any]]:
    """Time the teacher and `shapes` random pruned copies of it, fit the cost model; returns it and a record
    of the fit (each model's units, measured and predicted seconds, the relative errors). The timings are
    `timer`'s, else `make_timer(seconds, threads, rounds)`'s, else (targets "cpu", "cuda") PyTorch's."""
    if timer is None:
        make_timer = timer_factory(target, make_timer)
    start = time.monotonic()
    shapes = default_shapes() if shapes is None else shapes
    rounds = default_rounds() if rounds is None else rounds
    groups = conv_groups(teacher)
    names = feature_names(groups)
    models = [copy.deepcopy(teacher).cpu(), *random_shapes(teacher, shapes, seed)]
    if timer is None:
        assert make_timer is not None
        timer = make_timer(seconds, threads, rounds)
    measured = np.array(timer(models), dtype=np.float64)
    features = np.array([feature_vector(m, seconds, groups) for m in models], dtype=np.float64)
    coefficients = fit_coefficients(features, measured, features[0])
    model = CostModel(target, threads, seconds, groups, dict(zip(names, coefficients.tolist())))
    predicted = features @ coefficients
    relative = predicted / measured - 1.0
    rows = [
        {
            "model": "teacher" if i == 0 else f"shape{i}",
            **m.config.unit_counts(),
            "measured_s": float(measured[i]),
            "predicted_s": float(predicted[i]),
            "relative_error": float(relative[i]),
        }
        for i, m in enumerate(models)
    ]
    record = {
        "shapes": rows,
        "rounds": rounds,
        "seed": seed,
        "mean_abs_relative_error": float(np.abs(relative).mean()),
        "max_abs_relative_error": float(np.abs(relative).max()),
        "teacher_by_feature_s": {n: float(c * f) for n, c, f in zip(names, coefficients, features[0])},
        "fit_seconds": time.monotonic() - start,
    }
    return model, record


def cost_model_for(
    teacher: SpeechEncoder,
    *,
    target: str,
    threads: int,
    seconds: float,
    out: Path | None,
    seed: int = 0,
    timer: Timer | None = None,
    make_timer: TimerFactory | None = None,
) -> dict[str, Any]:
    """The teacher's cost model on `target`: from the cache when it holds a fit for the same key, else fitted
    (and cached). Returns the model, its fit record, the key and whether it was cached, and writes them to
    `out/cost_model.json` unless `out` is None (the dry run)."""
    key = cache_key(teacher, target, threads, seconds)
    digest = key_digest(key)
    cached = cache_dir() / "latency" / f"{digest}.json"
    document: dict[str, Any] | None = None
    if cached.exists():
        try:
            document = json.loads(cached.read_text())
            CostModel.from_dict(document["cost_model"])
        except (OSError, ValueError, KeyError, TypeError):
            document = None  # a damaged cache entry is fitted again
    from_cache = document is not None
    if document is None:
        model, record = fit_cost_model(
            teacher,
            target=target,
            threads=threads,
            seconds=seconds,
            seed=seed,
            timer=timer,
            make_timer=make_timer,
        )
        document = {"cost_model": model.to_dict(), "fit": record, "key": key, "key_digest": digest}
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(document, indent=2))
            tmp.replace(cached)
        except OSError:
            pass  # a read-only cache only costs the next run a fit
    document = {**document, "from_cache": from_cache}
    model = CostModel.from_dict(document["cost_model"])
    document["teacher_predicted_s"] = model.predict_seconds(teacher)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / COST_MODEL_FILE).write_text(json.dumps(document, indent=2))
    return document


def load_cost_model(path: Path) -> CostModel:
    """The cost model a calibrate stage wrote (`cost_model.json`)."""
    return CostModel.from_dict(json.loads(Path(path).read_text())["cost_model"])


def summary(document: dict[str, Any]) -> dict[str, Any]:
    """What the report and the stage's record show of a cost model document (no per-shape rows' key)."""
    fit = document["fit"]
    return {
        **document["cost_model"],
        "from_cache": document["from_cache"],
        "cache_key": document["key_digest"],
        "teacher_predicted_s": document["teacher_predicted_s"],
        "mean_abs_relative_error": fit["mean_abs_relative_error"],
        "max_abs_relative_error": fit["max_abs_relative_error"],
        "shapes": fit["shapes"],
        "teacher_by_feature_s": fit["teacher_by_feature_s"],
    }


__all__ = [
    "CACHE_ENV",
    "COST_MODEL_FILE",
    "ROUNDS_ENV",
    "SHAPES_ENV",
    "Timer",
    "TimerFactory",
    "cache_dir",
    "cache_key",
    "cost_model_for",
    "cpu_model",
    "cpu_timer",
    "cuda_timer",
    "device_model",
    "timer_factory",
    "default_rounds",
    "default_shapes",
    "fit_coefficients",
    "fit_cost_model",
    "key_digest",
    "load_cost_model",
    "random_shapes",
    "summary",
]
