"""The CPU clock of the latency cost model and of finalize: models timed in a fresh Python process.

A job's own process is not a neutral clock. Finalize run on the same stage 1 result timed the teacher about
13% faster and the pruned candidates about 15% slower when stage 1 had trained in that process than when the
process had only loaded stage 1's result (bench/results/budgets/README.md, held-out section), so a latency
landing in a job kept students 15-25% more pruned than a clean clock asked for. The cause inside the process
was not found; this module takes the process out of the measurement: the models are pickled into a private
temporary directory and timed by `python -m core.calibrate.clock` in a new interpreter, with
`OMP_NUM_THREADS` set to the timed thread count, by the same protocol as before (`core.timing.timed_rounds`:
interleaved rounds over one utterance, median per model).

The pickle is this process's own file in a directory only this user can read (`tempfile.mkdtemp`), read back
by the child it starts, and deleted after; nothing else is ever loaded with `weights_only=False` here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from core.models import SpeechEncoder
from core.timing import json_from_fresh_process, timed_rounds, torch_threads

# What the child may take at most (seconds) beyond its own timing, for the interpreter and torch to start.
START_SECONDS = 120.0


def time_in_place(
    models: list[SpeechEncoder], seconds: float, threads: int, rounds: int, device: str = "cpu"
) -> list[float]:
    """Median seconds per forward pass of each model on `device` (the host with `threads` threads),
    interleaved rounds over one `seconds`-long utterance, in this process; on CUDA each pass is synchronised
    before and after (`core.timing.timed_rounds`)."""
    named = {f"m{i}": m for i, m in enumerate(models)}
    with torch_threads(threads):
        rate = models[0].config.sample_rate
        times = timed_rounds(named, sample_rate=rate, device=device, seconds=seconds, runs=rounds, warmup=1)
    return [statistics.median(times[name]) for name in named]


def time_in_fresh_process(
    models: list[SpeechEncoder], seconds: float, threads: int, rounds: int
) -> list[float]:
    """`time_in_place` in a new Python process (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="skillkd-clock-") as tmp:
        path = Path(tmp) / "models.pt"
        torch.save(list(models), path)
        args = [str(path), str(seconds), str(threads), str(rounds)]
        limit = START_SECONDS + 60.0 * max(seconds, 1.0) * (max(rounds, 0) + 1) * len(models)
        times = json_from_fresh_process("core.calibrate.clock", args, threads, limit, "timing the models")
    if not isinstance(times, list) or len(times) != len(models):
        raise RuntimeError(f"the timing process returned {times!r} for {len(models)} models")
    return [float(t) for t in times]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="time pickled models (core.calibrate.clock's child)")
    parser.add_argument("models", type=Path)
    parser.add_argument("seconds", type=float)
    parser.add_argument("threads", type=int)
    parser.add_argument("rounds", type=int)
    args = parser.parse_args(argv)
    models = torch.load(args.models, map_location="cpu", weights_only=False)  # our own file: see above
    print(json.dumps(time_in_place(models, args.seconds, args.threads, args.rounds)))


__all__ = ["time_in_fresh_process", "time_in_place"]

if __name__ == "__main__":
    main()
