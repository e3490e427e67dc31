"""The clock of the latency cost model's fit and of finalize on PyTorch targets: medians of interleaved
rounds.

On the CPU the models are timed in a fresh Python process (`core.timing.timed_rounds_in_fresh_process`, with
`OMP_NUM_THREADS` set to the timed thread count): a job's own process read the same candidates ~15% slower
and the teacher ~13% faster once stage 1 had trained there, and a latency landing kept students 15-25% more
pruned than a clean clock asked for (bench/results/budgets/README.md, held-out section). On CUDA they are
timed in this process (each pass synchronised before and after).
"""

from __future__ import annotations

import statistics

from core.models import SpeechEncoder
from core.timing import timed_rounds, timed_rounds_in_fresh_process, torch_threads


def time_in_place(
    models: list[SpeechEncoder], seconds: float, threads: int, rounds: int, device: str = "cpu"
) -> list[float]:
    """Median seconds per forward pass of each model on `device` (the host with `threads` threads),
    interleaved rounds over one `seconds`-long utterance after one untimed, in this process."""
    named = {f"m{i}": m for i, m in enumerate(models)}
    with torch_threads(threads):
        rate = models[0].config.sample_rate
        times = timed_rounds(named, sample_rate=rate, device=device, seconds=seconds, runs=rounds, warmup=1)
    return [statistics.median(times[name]) for name in named]


def time_in_fresh_process(
    models: list[SpeechEncoder], seconds: float, threads: int, rounds: int
) -> list[float]:
    """`time_in_place` on the CPU, in a new Python process (see the module docstring)."""
    named = {f"m{i}": m for i, m in enumerate(models)}
    rate = models[0].config.sample_rate
    times = timed_rounds_in_fresh_process(
        named, sample_rate=rate, seconds=seconds, runs=rounds, warmup=1, threads=threads
    )
    return [statistics.median(times[name]) for name in named]


__all__ = ["time_in_fresh_process", "time_in_place"]
