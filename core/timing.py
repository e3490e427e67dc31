"""Timing forward passes alike for every model: the interleaved rounds behind every speed figure
(`core.evaluation.speed`, the report's speed section) and the latency cost model's fit
(`core.calibrate.latency`), in one ground-floor module that both stages use (torch only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _utterance(seconds: float, sample_rate: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    samples = int(round(seconds * sample_rate))
    generator = torch.Generator().manual_seed(0)
    waveforms = 0.1 * torch.randn(1, samples, generator=generator)  # (batch, time)
    return waveforms.to(device), torch.tensor([samples], device=device)


def gpu_name() -> str | None:
    """The current CUDA GPU's name, or None on a machine without one (the `cuda` speed target's check)."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _home(model: torch.nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order of one timing round. Two models alternate (A B, B A, A B, ...). With more, the first (the
    reference: a teacher) opens every round and the others follow it in turn (A B C D, A C D B, A D B C,
    ...): a model that runs right after a much larger one reads slower (a hubert-mini 4x student copied seven
    times and timed with its teacher on one thread: the copy that followed the teacher in half the rounds read
    4.2% slower than the median of the six others over three sessions, bench/results/clock_order.md), so no
    one of them may be the one that always follows it."""
    if len(names) <= 2:
        return alternating_order(names, round_index)
    first, *rest = names
    shift = round_index % len(rest)
    return [first, *rest[shift:], *rest[:shift]]


def alternating_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order every timing round had until 2026-12-07 (A B C, C B A, A B C, ...): with more than two
    models the second always runs right after the first in the rounds it opens. Kept for
    `bench.clock_order`, which times it beside `round_order`."""
    return list(names) if round_index % 2 == 0 else list(names)[::-1]


ORDERS = {"balanced": round_order, "alternating": alternating_order}


def timed_rounds(
    models: Mapping[str, torch.nn.Module],
    *,
    sample_rate: int,
    device: torch.device | str,
    seconds: float,
    runs: int,
    warmup: int,
    order: str = "balanced",
) -> dict[str, list[float]]:
    """Seconds per forward pass of each model over the same `seconds`-long utterance at `sample_rate`, `runs`
    each after `warmup` untimed passes, in the rounds `round_order` gives (no model always runs right after
    the same one; `order` "alternating": `alternating_order`). The models are moved to `device` for the
    measurement and back afterwards; eval mode, no autograd.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, found runs={runs}, warmup={warmup}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {sorted(ORDERS)}, found {order!r}")
    arrange = ORDERS[order]
    device = torch.device(device)
    waveforms, lengths = _utterance(seconds, sample_rate, device)
    homes = {name: _home(m) for name, m in models.items()}
    modes = {name: m.training for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    try:
        for m in models.values():
            m.to(device).eval()
        with torch.inference_mode():
            for round_index in range(warmup + runs):
                for name in arrange(names, round_index):
                    _sync(device)
                    start = time.perf_counter()
                    models[name](waveforms, lengths)
                    _sync(device)
                    if round_index >= warmup:
                        times[name].append(time.perf_counter() - start)
    finally:
        for name, m in models.items():
            m.to(homes[name]).train(modes[name])
    return times


def machine_busy_seconds() -> float | None:
    """CPU seconds every core of this machine has spent busy since boot (/proc/stat: all but idle and iowait),
    or None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user


def other_cores(
    busy_before: float | None, busy_after: float | None, own_cpu_s: float, wall_s: float
) -> float | None:
    """Cores' worth of CPU that other processes used over `wall_s`: the machine's busy time between the two
    readings (`machine_busy_seconds`) less this process's own CPU time; None without both readings."""
    if busy_before is None or busy_after is None or wall_s <= 0:
        return None
    return max(0.0, (busy_after - busy_before - own_cpu_s) / wall_s)


@contextmanager
def other_load() -> Iterator[dict[str, float | None]]:
    """How many cores the machine's *other* processes kept busy, on average, while the block ran
    (`other_cores` over the block; this process's own time counts every thread, and that of the child
    processes it started and waited for in the block: `timed_rounds_in_fresh_process`).
    Yields a dict whose "other_cores" is set when the block ends (None where /proc/stat is missing)."""
    out: dict[str, float | None] = {"other_cores": None}
    busy, own, start = machine_busy_seconds(), _own_cpu_seconds(), time.monotonic()
    try:
        yield out
    finally:
        wall = time.monotonic() - start
        out["other_cores"] = other_cores(busy, machine_busy_seconds(), _own_cpu_seconds() - own, wall)


# what a timing child may take at most (seconds) beyond its own timing: the interpreter and torch starting
START_SECONDS = 120.0
# what it usually takes (seconds): starting, loading the pickled models and answering; ~3.6 s per timing
# session on this project's 2-core host (2026-12-07), for the dry run's estimate
CHILD_START_SECONDS = 4.0


def json_from_fresh_process(
    module: str, args: list[str], threads: int, what: str, *, passes: int, seconds: float
) -> Any:
    """Run `python -m module *args` in a new interpreter with `OMP_NUM_THREADS` and `MKL_NUM_THREADS` set to
    `threads`, and return the JSON its last line of output holds: the clocks of the cost model and of
    finalize time models there, since a job's own process is not a neutral clock
    (`timed_rounds_in_fresh_process`).
    The child may take START_SECONDS plus a minute per audio second of each of its `passes` forward passes
    over a `seconds`-long utterance; one that fails, answers nothing in that time or prints no JSON raises a
    RuntimeError that says `what` failed and the child's last line of error (never its traceback)."""
    limit_s = START_SECONDS + 60.0 * max(seconds, 1.0) * passes
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", module, *args]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=limit_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} in a fresh process failed: no answer in {limit_s:.0f} s") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"{what} in a fresh process failed: {last}")
    try:
        return json.loads((done.stdout.strip().splitlines() or [""])[-1])
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"{what} in a fresh process failed: it printed no result") from exc


def timed_rounds_in_fresh_process(
    models: Mapping[str, torch.nn.Module],
    *,
    sample_rate: int,
    seconds: float,
    runs: int,
    warmup: int,
    threads: int,
    order: str = "balanced",
) -> dict[str, list[float]]:
    """`timed_rounds` on the CPU with `threads` threads, in a new Python process (`python -m core.timing`).

    A job's own process is not a neutral clock: finalize run on the same stage 1 result timed the teacher
    about 13% faster and pruned students about 15% slower when stage 1 had trained in that process than when
    it had only loaded stage 1's result (bench/results/budgets/README.md, held-out section; the cause inside
    the process was not found). So the models are pickled into a private temporary directory
    (`tempfile.TemporaryDirectory`: this user's only), timed by a child that reads them back, and deleted;
    nothing else is ever loaded with `weights_only=False` here."""
    with tempfile.TemporaryDirectory(prefix="skillkd-clock-") as tmp:
        path = Path(tmp) / "models.pt"
        torch.save(dict(models), path)
        spec = {
            "sample_rate": sample_rate,
            "seconds": seconds,
            "runs": runs,
            "warmup": warmup,
            "threads": threads,
            "order": order,
        }
        passes = (max(runs, 0) + warmup) * len(models)
        args = [str(path), json.dumps(spec)]
        out = json_from_fresh_process(
            "core.timing", args, threads, "timing the models", passes=passes, seconds=seconds
        )
    if not isinstance(out, dict) or set(out) != set(models) or any(len(t) != runs for t in out.values()):
        raise RuntimeError(f"the timing process returned {out!r} for {sorted(models)}, {runs} runs each")
    return {name: [float(t) for t in out[name]] for name in models}


def main(argv: list[str] | None = None) -> None:
    """`python -m core.timing MODELS SPEC`: the child of `timed_rounds_in_fresh_process`."""
    path, spec_text = sys.argv[1:3] if argv is None else argv[:2]
    spec = json.loads(spec_text)
    models = torch.load(path, map_location="cpu", weights_only=False)  # our own file: see above
    with torch_threads(int(spec["threads"])):
        times = timed_rounds(
            models,
            sample_rate=int(spec["sample_rate"]),
            device="cpu",
            seconds=float(spec["seconds"]),
            runs=int(spec["runs"]),
            warmup=int(spec["warmup"]),
            order=str(spec.get("order", "balanced")),
        )
    print(json.dumps(times))


def _own_cpu_seconds() -> float:
    """CPU seconds of this process (every thread) and of its children that ended and were waited for."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


__all__ = [
    "ORDERS",
    "alternating_order",
    "gpu_name",
    "json_from_fresh_process",
    "machine_busy_seconds",
    "other_cores",
    "other_load",
    "round_order",
    "timed_rounds",
    "timed_rounds_in_fresh_process",
    "torch_threads",
]

if __name__ == "__main__":
    main()
