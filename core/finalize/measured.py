"""Measured landing: a latency budget lands on the clock, not only on the cost model.

Exact landing (`core.finalize.landing`) puts the student's *predicted* latency within 0.5% of its target, but
the prediction is only as good as the cost model's fit, and fits of the same teacher on the same machine
differ (three fits of wavlm-mini's 4x budget landed students measured 4.25x, 4.22x and 3.90x faster than the
teacher: bench/results/budgets/README.md). So a latency budget is checked against the target itself before
the pruning becomes physical:

1. besides the cost model's landing, the student is landed (the same exact landing) on a few other predicted
   speed-ups around the target (CANDIDATES: 0.9x to 1.3x of it), each a set of eval gates;
2. every candidate is pruned (a copy) and timed against the teacher on the budget's target in *one* session,
   interleaved (the same timer as the fit: PyTorch on the CPU, or the ONNX files in onnxruntime), so a machine
   whose speed drifts from one minute to the next (this project's shared machine: the teacher's time moved
   0.46-0.64 s within half an hour) moves all of them alike;
3. the least pruned candidate that measured at least the target times (1 + the spec's `speed_margin`, 5% by
   default), less the landing's 0.5% tolerance, is kept (the target is a floor: "4x faster" means at least 4x,
   and the margin is for the machine's drift: the same files read 0.84-1.08x of their landing's speed-up in
   later quiet tables on this project's hosts);
4. when the candidates all measured on one side of that aim (none fast enough, or even the least pruned
   one), the cost model is off by more than their span (version-3 fits read 4x-predicted students at 3.1x):
   a second session times SECOND_SESSION around the factor the edge candidate points at and decides (the
   least pruned there that measured the target; else, too slow, the fastest there; else the first choice).

A timing during which other processes kept BUSY_CORES or more busy judges nothing (one other training job on
a 2-core machine read a 3.94x student as 3.37-3.74x): the cost model's landing stands and the record says
why. The record keeps every candidate's predicted and measured speed-up and its shape (parameters, heads and
FFN units per layer, conv channels), so the report shows what the clock said about what. With
`SKILLKD_SPEED_RUNS=0` nothing is timed and the cost model's landing stands (the test suite does that).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

import torch

import core.evaluation.speed as speed
from core.calibrate.latency import Timer
from core.finalize.landing import TOLERANCE, land
from core.models import SpeechEncoder
from core.models.latency import CostModel
from core.spec import Budget
from core.timing import other_load

# Predicted speed-ups tried, relative to the target: the cost model's errors on 4x students seen so far run
# from -20% to +17%, and candidates 5% apart resolve a 4x target to about 0.2x
CANDIDATES = (0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3)
# When every candidate measured too slow (or even the least pruned fast enough), a second session times these
# around the factor the first session's edge candidate points at (its predicted over its measured speed-up):
# a fit off by more than the candidates' span (two fits on one host were 27-30% optimistic at 4x) still lands.
# Never more than MAX_FACTOR x the target predicted: a cost model off by more than that is not to be followed.
SECOND_SESSION = (0.95, 1.0, 1.05, 1.1, 1.2)
MAX_FACTOR = 2.0
RUNS = 11  # timed passes of each model, interleaved (the floor; SKILLKD_SPEED_RUNS may ask more)
# A timing during which the machine's other processes kept this many cores busy (on average) judges nothing
BUSY_CORES = 0.5


def landing_runs() -> int:
    """Timed passes of each model in finalize's timing: SKILLKD_SPEED_RUNS, at least RUNS; 0 (no timing)
    when that is 0."""
    runs = speed.default_runs()
    return 0 if runs == 0 else max(runs, RUNS)


def _overrides(student: SpeechEncoder) -> list[torch.Tensor | None]:
    return [None if hc.keep_override is None else hc.keep_override.clone() for hc in student.hard_concretes()]


def _restore(student: SpeechEncoder, overrides: Sequence[torch.Tensor | None]) -> None:
    for hc, override in zip(student.hard_concretes(), overrides):
        hc.keep_override = None if override is None else override.clone()


def _landed_on(
    student: SpeechEncoder,
    budgets: list[Budget],
    cost_model: CostModel,
    target_speedup: float,
    index: int,
    factors: Sequence[float],
    landed: Sequence[torch.Tensor | None],
    seconds: float,
    teacher_predicted: float,
) -> tuple[list[list[torch.Tensor | None]], list[dict[str, Any]]]:
    """The student landed on each of `factors` x `target_speedup` predicted (`budgets[index]` the latency
    budget; from the cost model's landing, `landed`; factor 1.0 is that landing itself): the masks' states and
    a row per factor."""
    states: list[list[torch.Tensor | None]] = []
    rows: list[dict[str, Any]] = []
    for factor in factors:
        _restore(student, landed)
        if factor != 1.0:
            aimed = list(budgets)
            aimed[index] = replace(budgets[index], sparsity=1.0 - 1.0 / (factor * target_speedup))
            land(student, aimed, seconds=seconds, cost_model=cost_model)
        states.append(_overrides(student))
        rows.append(
            {"factor": factor, "predicted_speedup": teacher_predicted / cost_model.predict_seconds(student)}
        )
    return states, rows


def _timed(
    student: SpeechEncoder,
    teacher: SpeechEncoder,
    states: Sequence[Sequence[torch.Tensor | None]],
    rows: list[dict[str, Any]],
    timer: Timer,
    load: Callable[[], AbstractContextManager[dict[str, float | None]]],
    session: int,
) -> dict[str, Any]:
    """Every state pruned (a copy) and timed against the teacher in one session; fills in each row's seconds
    and measured speed-up, returns the session's record (teacher's seconds, other processes' cores)."""
    pruned = []
    for row, state in zip(rows, states):
        _restore(student, state)
        copy_ = copy.deepcopy(student)
        row["units"] = copy_.prune().unit_counts()  # what the clock timed: heads, FFN, conv channels
        row["params"] = copy_.num_params()
        pruned.append(copy_)
    with load() as busy:
        times = timer([teacher, *pruned])
    del pruned
    teacher_s = times[0]
    for row, student_s in zip(rows, times[1:]):
        row["session"] = session
        row["student_s"] = student_s
        row["measured_speedup"] = teacher_s / student_s
    return {"teacher_s": teacher_s, "other_cores": busy["other_cores"], "candidates": len(rows)}


def _busy(session: dict[str, Any]) -> bool:
    """Whether other processes kept BUSY_CORES or more busy during a session's timing."""
    return session["other_cores"] is not None and session["other_cores"] >= BUSY_CORES


def _fast_enough(rows: Sequence[dict[str, Any]], floor: float) -> list[int]:
    """The candidates (indices, least pruned first) that measured `floor` or more."""
    return [i for i, row in enumerate(rows) if row["measured_speedup"] >= floor]


def _fastest(rows: Sequence[dict[str, Any]]) -> int:
    return max(range(len(rows)), key=lambda i: rows[i]["measured_speedup"])


def _inversions(rows: Sequence[dict[str, Any]]) -> int:
    """Pairs of one session's candidates (in the cost model's order) that the clock timed the other way
    round."""
    measured = [row["measured_speedup"] for row in rows]
    return sum(1 for i in range(len(rows)) for j in range(i + 1, len(rows)) if measured[j] < measured[i])


def _second_factors(edge: dict[str, Any], target_speedup: float, margin: float) -> list[float]:
    """The second session's factors: SECOND_SESSION around the factor the first session's `edge` candidate
    points at (its predicted over its measured speed-up: the cost model's error there, times 1 + `margin`),
    kept to predicted speed-ups above 1 and at most MAX_FACTOR x the target."""
    aimed = edge["predicted_speedup"] / edge["measured_speedup"] * (1.0 + margin)
    lowest = 1.0 / target_speedup * 1.01  # a student predicted no faster than the teacher is no candidate
    return sorted({round(min(max(aimed * f, lowest), MAX_FACTOR), 6) for f in SECOND_SESSION})


def land_measured(
    student: SpeechEncoder,
    teacher: SpeechEncoder,
    budgets: list[Budget],
    cost_model: CostModel,
    target_speedup: float,
    timer: Timer,
    *,
    seconds: float,
    margin: float = 0.0,
    candidates: Sequence[float] | None = None,
    log: Callable[[str], None] | None = None,
    load: Callable[[], AbstractContextManager[dict[str, float | None]]] | None = None,
) -> dict[str, Any]:
    """Land the `student` (whose eval gates `core.finalize.landing.land` has set: the cost model's landing) on
    each of `candidates` (default CANDIDATES) x `target_speedup` predicted, time every candidate against
    `teacher` with `timer` in one session, and keep the least pruned one that measured at least
    `target_speedup` x (1 + `margin`) (the aim); when none did, or when even the least pruned did (the
    candidates missed the aim on one side), a second session times SECOND_SESSION around the factor the
    first one's error points at and decides (else the first session's choice stands, or its fastest). Leaves
    the kept state in the masks' `keep_override`. When other processes kept BUSY_CORES or more busy during
    the first timing (`load`, default `core.timing.other_load`) the cost model's landing is kept. Returns a
    record: every candidate (its session, factor, predicted and measured speed-up, seconds, parameters and
    units), each session's teacher seconds and other processes' cores, which candidate was kept and why, and
    whether it reached the target itself (`reached_target`, without the margin)."""
    latency = [i for i, b in enumerate(budgets) if b.kind == "latency"]
    if len(latency) != 1:
        raise ValueError("measured landing needs exactly one latency budget")
    candidates = CANDIDATES if candidates is None else candidates  # the module's, read at call time
    if margin < 0:
        raise ValueError(f"margin must be 0 or more: {margin}")
    if not candidates or 1.0 not in candidates or any(c <= 0 for c in candidates):
        raise ValueError(
            f"candidates must be positive and include 1.0 (the cost model's landing): {candidates}"
        )
    load = load or other_load
    teacher_predicted = cost_model.predict_seconds(teacher)
    landed = _overrides(student)  # the cost model's landing
    factors = sorted(set(candidates))
    states, rows = _landed_on(
        student, budgets, cost_model, target_speedup, latency[0], factors, landed, seconds, teacher_predicted
    )
    sessions = [_timed(student, teacher, states, rows, timer, load, 1)]
    # the aim (the floor and its margin), less the landing's own tolerance: a clock that agrees with the cost
    # model keeps its landing
    aim_speedup = target_speedup * (1.0 + margin)
    aim = aim_speedup * (1.0 - TOLERANCE)
    floor = target_speedup * (1.0 - TOLERANCE)
    fast_enough = _fast_enough(rows, aim)
    aimed = f"{target_speedup:g}x"
    if margin:
        aimed += f" + {margin:.0%} ({aim_speedup:.3g}x)"
    if _busy(sessions[0]):
        kept = factors.index(1.0)
        reason = (
            f"the CPU was busy (other processes kept {sessions[0]['other_cores']:.2f} cores busy during the "
            "timing): the cost model's landing stands"
        )
    else:
        if fast_enough:
            kept = fast_enough[0]  # the least pruned that is fast enough
            reason = f"the least pruned candidate that measured at least {aimed}"
        else:
            kept = _fastest(rows)
            reason = f"no candidate measured {aimed}: the fastest one"
        too_slow = not fast_enough
        if too_slow or fast_enough[0] == 0:  # every candidate on one side of the aim: a second session
            first = "too slow" if too_slow else "fast enough"
            edge = rows[-1] if too_slow else rows[0]
            states2, rows2 = _landed_on(
                student,
                budgets,
                cost_model,
                target_speedup,
                latency[0],
                _second_factors(edge, target_speedup, margin),
                landed,
                seconds,
                teacher_predicted,
            )
            second = _timed(student, teacher, states2, rows2, timer, load, 2)
            sessions.append(second)
            offset = len(rows)
            states, rows = states + states2, rows + rows2
            reach2 = _fast_enough(rows2, aim)
            if _busy(second):
                reason += (
                    f" (a second session, all {first} at first, was busy: other processes kept "
                    f"{second['other_cores']:.2f} cores busy)"
                )
            elif reach2:
                kept = offset + reach2[0]
                reason = (
                    f"the least pruned candidate that measured at least {aimed}, in a second session "
                    f"(every first candidate was {first})"
                )
            elif too_slow:
                kept = offset + _fastest(rows2)
                reason = f"no candidate measured {aimed} in two sessions: the fastest of the second"
            else:
                reason += " (a second session, less pruned, measured none fast enough)"
    _restore(student, states[kept])
    chosen = rows[kept]
    loads = [s["other_cores"] for s in sessions if s["other_cores"] is not None]
    if log is not None:
        for number in range(1, len(sessions) + 1):
            own = [r for r in rows if r["session"] == number]
            log(
                f"latency landing, session {number}: {len(own)} candidates timed against the teacher ("
                + ", ".join(f"{r['predicted_speedup']:.2f}x -> {r['measured_speedup']:.2f}x" for r in own)
                + " predicted -> measured)"
            )
        log(
            f"latency landing: kept {chosen['predicted_speedup']:.2f}x predicted, "
            f"{chosen['measured_speedup']:.2f}x measured ({reason})"
        )
    return {
        "target_speedup": target_speedup,
        "margin": margin,
        "teacher_s": sessions[chosen["session"] - 1]["teacher_s"],
        "other_cores": max(loads) if loads else None,  # the busier session's
        "sessions": sessions,
        "candidates": rows,
        "kept": kept,
        "reason": reason,
        "predicted_speedup": chosen["predicted_speedup"],
        "measured_speedup": chosen["measured_speedup"],
        "reached_target": bool(chosen["measured_speedup"] >= floor),
        # the clock's order of each session's candidates against the cost model's: pairs timed the other way
        "inversions": sum(_inversions([r for r in rows if r["session"] == n]) for n in (1, 2)),
    }


__all__ = [
    "BUSY_CORES",
    "CANDIDATES",
    "MAX_FACTOR",
    "RUNS",
    "SECOND_SESSION",
    "land_measured",
    "landing_runs",
]
