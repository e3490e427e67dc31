"""What a student bought: its size, compute and measured speed next to its teacher's, in one process.

Parameters and MACs say how much a model *should* cost; only a clock says what it does cost, and the two
disagree (a conv extractor holds half of a small teacher's MACs and under a tenth of its parameters). So every
report measures both models the same way:

- MACs per second of audio, counted on a forward pass over the reference utterance
  (`core.evaluation.facts.count_macs`; attention grows with the square of the length, so the utterance length
  is stated with the figure);
- real-time factor (processing time / audio duration, below 1 is faster than real time): the median of `runs`
  forward passes of one fixed `seconds`-long utterance, teacher and student *interleaved* (T S S T T S ...,
  after `warmup` untimed passes of each), so a machine that gets busier or cooler during the measurement
  affects both alike. On the CPU with one thread (the comparable figure) and with every core this process
  may use, each in a fresh Python process (`cpu_times`: a process that has trained is a biased clock), and
  on the given CUDA device when there is one.

`SKILLKD_SPEED_RUNS` (environment) sets the default number of timed passes (5); 0 skips the timing, leaving
parameters and MACs (the test suite does that: on a shared 2-core machine the all-cores passes alone take
half a minute per run).
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import torch

from core.evaluation.facts import count_macs, count_parameters, sample_rate_of
from core.models import SpeechEncoder
from core.timing import timed_rounds, timed_rounds_in_fresh_process, torch_threads

SECONDS = 10.0  # the reference utterance of every speed figure
RUNS = 5
WARMUP = 1
RUNS_ENV = "SKILLKD_SPEED_RUNS"


def default_runs() -> int:
    """`SKILLKD_SPEED_RUNS` if set (a whole number >= 0), else 5."""
    value = os.environ.get(RUNS_ENV, "").strip()
    if not value:
        return RUNS
    if not value.isdigit():
        raise ValueError(f"{RUNS_ENV} must be a whole number >= 0, found {value!r}")
    return int(value)


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _common_rate(models: dict[str, SpeechEncoder]) -> int:
    """The one sample rate every model expects (a ValueError when they differ)."""
    rates = {sample_rate_of(m) for m in models.values()}
    if len(rates) != 1:
        raise ValueError(f"the models expect different sample rates: {sorted(rates)}")
    return rates.pop()


def interleaved_times(
    models: dict[str, SpeechEncoder],
    *,
    device: torch.device | str = "cpu",
    seconds: float = SECONDS,
    runs: int = RUNS,
    warmup: int = WARMUP,
) -> dict[str, list[float]]:
    """Seconds per forward pass of each model over the same `seconds`-long utterance, `runs` each, in
    interleaved rounds (`core.timing.timed_rounds`, ordered by `core.timing.round_order`); the models must
    expect one sample rate."""
    rate = _common_rate(models)
    return timed_rounds(models, sample_rate=rate, device=device, seconds=seconds, runs=runs, warmup=warmup)


def cpu_times(
    models: dict[str, SpeechEncoder],
    *,
    threads: int,
    seconds: float = SECONDS,
    runs: int = RUNS,
    warmup: int = WARMUP,
) -> dict[str, list[float]]:
    """`interleaved_times` on the CPU with `threads` threads, in a fresh Python process
    (`core.timing.timed_rounds_in_fresh_process`): a job's process that has trained reads small students
    slower and its teacher faster than a clean one, so a report timed there under-states the speed-up."""
    rate = _common_rate(models)
    return timed_rounds_in_fresh_process(
        models, sample_rate=rate, seconds=seconds, runs=runs, warmup=warmup, threads=threads
    )


def _setting(times: dict[str, list[float]], seconds: float, threads: int | None) -> dict[str, Any]:
    rtf = {name: statistics.median(values) / seconds for name, values in times.items()}
    out: dict[str, Any] = {"threads": threads, **{f"{name}_rtf": value for name, value in rtf.items()}}
    if "teacher" in rtf and "student" in rtf:
        out["speedup"] = rtf["teacher"] / rtf["student"]
    out["times_s"] = {name: [round(t, 6) for t in values] for name, values in times.items()}
    return out


def measure(
    teacher: SpeechEncoder,
    student: SpeechEncoder,
    *,
    device: torch.device | str | None = None,
    seconds: float = SECONDS,
    runs: int | None = None,
    warmup: int = WARMUP,
) -> dict[str, Any]:
    """Teacher and student side by side: parameters, MACs per audio second, and real-time factors.

    Returns `{"protocol", "teacher": {params, macs_per_second}, "student": {...}, "params_ratio",
    "macs_ratio", "cpu_1_thread", "cpu_all_threads", ["cuda"]}`; each speed setting holds `teacher_rtf`,
    `student_rtf`, `speedup` (teacher RTF / student RTF), the thread count and every timed pass.
    `device`: a CUDA device adds a measurement there (a CPU device adds nothing: the CPU is always measured).
    `runs`: timed passes per model and setting (default `default_runs()`); 0 measures no speed.
    """
    runs = default_runs() if runs is None else runs
    models = {"teacher": teacher, "student": student}
    result: dict[str, Any] = {
        "protocol": {
            "utterance_seconds": seconds,
            "runs": runs,
            "warmup": warmup,
            "statistic": "median of interleaved forward passes (batch 1, fp32, inference mode)",
            "macs": "counted on a forward pass over the same utterance, per second of audio",
        },
    }
    for name, model in models.items():
        macs = count_macs(model, seconds=seconds)
        result[name] = {
            "params": count_parameters(model),
            "macs_per_second": macs.macs_per_second,
            "macs_by_kind": macs.by_kind,
        }
    result["params_ratio"] = result["teacher"]["params"] / max(1, result["student"]["params"])
    result["macs_ratio"] = result["teacher"]["macs_per_second"] / max(1, result["student"]["macs_per_second"])
    if runs == 0:
        result["protocol"]["timing"] = f"skipped ({RUNS_ENV}=0)"
        return result
    result["protocol"]["cpu"] = "timed in a fresh Python process"
    result["cpu_1_thread"] = _setting(
        cpu_times(models, threads=1, seconds=seconds, runs=runs, warmup=warmup), seconds, 1
    )
    cores = available_cores()
    if cores > 1:
        result["cpu_all_threads"] = _setting(
            cpu_times(models, threads=cores, seconds=seconds, runs=runs, warmup=warmup), seconds, cores
        )
    else:  # one core: the same measurement
        result["cpu_all_threads"] = result["cpu_1_thread"]
    if device is not None and torch.device(device).type == "cuda":
        result["cuda"] = _setting(
            interleaved_times(models, device=device, seconds=seconds, runs=runs, warmup=warmup), seconds, None
        )
        result["cuda"]["device"] = torch.cuda.get_device_name(torch.device(device))
    return result


def headline(speed: dict[str, Any]) -> dict[str, float]:
    """The few numbers a job's metrics carry: sizes, compute and speed-ups (teacher time / student time)."""
    out: dict[str, float] = {
        "teacher_params": float(speed["teacher"]["params"]),
        "student_params": float(speed["student"]["params"]),
        "teacher_macs_per_s": float(speed["teacher"]["macs_per_second"]),
        "student_macs_per_s": float(speed["student"]["macs_per_second"]),
    }
    for setting in ("cpu_1_thread", "cpu_all_threads", "cuda"):
        if setting in speed:
            out[f"student_rtf_{setting}"] = float(speed[setting]["student_rtf"])
            out[f"speedup_{setting}"] = float(speed[setting]["speedup"])
    return out


__all__ = [
    "RUNS_ENV",
    "SECONDS",
    "available_cores",
    "cpu_times",
    "default_runs",
    "headline",
    "interleaved_times",
    "measure",
    "torch_threads",
]
