"""Frozen probe vs fine-tuning (issue 21): what each model scores with its encoder frozen and after brief
fine-tuning of the whole model, seed by seed, on the same splits.

    python -m bench.finetune_probe runs/tts-dev-heldout ../shared/teachers/hubert-mini \\
        runs/q21/skill-hubert-mini-seed0/student --seeds 3 --out runs/finetune-probe

`--paired`: the models are one recipe compressed with seeds 0..N-1 (a student per seed); model i is probed
and fine-tuned with seed i, and they make one row, paired by seed with the teacher's runs:

    python -m bench.finetune_probe runs/tts-dev-heldout runs/q21/skill-hubert-mini-seed{0,1,2}/student \\
        --paired --out runs/finetune-probe-students

Otherwise, for each model (a teacher or exported student directory), in order: its features are extracted
once and the frozen probe runs with seeds 0..N-1 (`run_probes`, as `bench.heldout_speakers probe` and
`skillkd evaluate` do), then the model is fine-tuned with seeds 0..N-1 (`core.evaluation.finetune`, the
recipe of `skillkd evaluate --finetune`). Both train on `--train-split` and score on `--test-split`
(probe_train -> probe_test on the held-out-speakers view of `bench.heldout_speakers split`). `--task ctc`
(default) pairs the PR probe with CTC fine-tuning (PER), `--task speaker` the SID probe with speaker
classification (accuracy).

Writes `finetune_probe.json` (every run, with its losses and settings) and `finetune_probe.md`: the frozen and
fine-tuned figures as mean ± sample standard deviation over seeds, the per-seed values, the fine-tuning time
per run, the wall time per model, and the load average (as `uptime` shows it) before and after each model:
on a shared 2-core machine other processes can double the fine-tuning time, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.evaluation.finetune import DEFAULT_STEPS, FinetuneConfig, finetune
from core.evaluation.run import describe_model, environment, extract, load_representation_model, run_probes

PROBES = {"ctc": ("pr", "per", "PER % ↓"), "speaker": ("sid", "accuracy", "speaker accuracy % ↑")}


def _load() -> list[float]:
    """The 1, 5 and 15 minute load averages (`uptime`)."""
    return [round(value, 2) for value in os.getloadavg()]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(
    view: Path,
    models: list[str],
    *,
    seeds: int,
    out: Path,
    task: str = "ctc",
    steps: int = DEFAULT_STEPS,
    device: str = "cpu",
    train_split: str = "probe_train",
    test_split: str = "probe_test",
    paired: bool = False,
) -> dict[str, Any]:
    """Probe and fine-tune every model with seeds 0..seeds-1; write finetune_probe.json and .md."""
    import torch

    from core.evaluation.dataset import load_probe_data

    probe, metric, _ = PROBES[task]
    config = FinetuneConfig(steps=steps)
    data = load_probe_data(view, tasks=(probe,), train_split=train_split, test_split=test_split)
    groups = [[(spec, seed) for seed in range(seeds)] for spec in models]
    if paired:
        # one recipe compressed with seeds 0..N-1: model i is probed and fine-tuned with seed i only
        groups = [[(spec, seed) for seed, spec in enumerate(models)]]
    rows = []
    for group in groups:
        load_before, started = _load(), time.perf_counter()
        frozen, runs, names, sources = [], [], [], []
        for spec, seed in group:
            model, name, source = load_representation_model(Path(spec))
            names.append(name)
            sources.append(source)
            if not frozen or paired:
                features = extract(
                    model, data, name=name, device=torch.device(device), on_event=lambda event: None
                )
                for probe_seed in [seed] if paired else range(seeds):
                    frozen.append(run_probes(features, data, seed=probe_seed)[probe][metric])
                    _say(f"{name} seed {probe_seed}: frozen {probe.upper()} {metric} {100 * frozen[-1]:.2f}")
                del features
            result = finetune(
                model,
                data,
                task,
                config=config,
                seed=seed,
                device=device,
                name=name,
                on_event=lambda event: _say(event.message) if event.kind == "log" else None,
            )
            runs.append({"model": name, **result.to_dict()})
            params = describe_model(model, measure_speed=False)["params"]
            if paired:
                del model
        rows.append(
            {
                "model": names[0] + (f" (compression seeds 0–{len(group) - 1})" if paired else ""),
                "source": sources if paired else sources[0],
                "params": params,
                "seeds": [seed for _, seed in group],
                "frozen": frozen,
                "finetuned": [r[metric] for r in runs],
                "finetune_seconds": [r["train_seconds"] + r["test_seconds"] for r in runs],
                "wall_seconds": time.perf_counter() - started,
                "load_before": load_before,
                "load_after": _load(),
                "runs": runs,
            }
        )
    result = {
        "format": "skillkd-finetune-probe",
        "view": str(view),
        "task": task,
        "metric": metric,
        "train_split": train_split,
        "test_split": test_split,
        **data.summary(),
        "finetune": asdict(config),
        "paired": paired,
        "rows": rows,
        "notes": data.notes,
        "environment": environment(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_probe.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "finetune_probe.md").write_text(render(result))
    return result


def _pm(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * sd:.2f}"


def _each(values: list[float]) -> str:
    return ", ".join(f"{100 * v:.2f}" for v in values)


def render(result: dict[str, Any]) -> str:
    from core.evaluation.run import format_count

    _, _, label = PROBES[result["task"]]
    settings = result["finetune"]
    lines = [
        f"Frozen probe vs fine-tuning ({result['task']}) on `{result['view']}`: trained on "
        f"`{result['train_split']}` ({result['train_utterances']} utterances), scored on "
        f"`{result['test_split']}` ({result['test_utterances']}). Fine-tuning: {settings['steps']} steps of "
        f"{settings['batch_size']} utterances, the recipe of `skillkd evaluate --finetune` "
        "(docs/evaluation.md). Mean ± sample sd over seeds; the same seeds for both.",
        "",
        f"| model | params | frozen {label} | fine-tuned {label} | per seed frozen | per seed fine-tuned | "
        "fine-tuning s per run | wall time | load before → after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        seconds = " ".join(f"{s:.0f}" for s in row["finetune_seconds"])
        load = f"{' '.join(map(str, row['load_before']))} → {' '.join(map(str, row['load_after']))}"
        lines.append(
            f"| {row['model']} | {format_count(row['params'])} | {_pm(row['frozen'])} | "
            f"{_pm(row['finetuned'])} | {_each(row['frozen'])} | {_each(row['finetuned'])} | {seconds} | "
            f"{row['wall_seconds'] / 60:.1f} min | {load} |"
        )
    env = result["environment"]
    lines += [
        "",
        f"torch {env['torch']}, {env['threads']} CPU threads"
        + (f", {env['cuda']}" if env["cuda"] else "")
        + "; load: 1, 5 and 15 minute load averages.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("view", type=Path, help="a dataset with the two splits (the held-out-speakers view)")
    parser.add_argument("models", nargs="+", help="teacher or student directories")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--task", choices=sorted(PROBES), default="ctc")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="fine-tuning steps per run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-split", default="probe_train")
    parser.add_argument("--test-split", default="probe_test")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="the models are one recipe compressed with seeds 0..N-1: model i runs with seed i, one row",
    )
    args = parser.parse_args(argv)
    result = run(
        args.view,
        args.models,
        seeds=args.seeds,
        out=args.out,
        task=args.task,
        steps=args.steps,
        device=args.device,
        train_split=args.train_split,
        test_split=args.test_split,
        paired=args.paired,
    )
    print(render(result))
    return result


if __name__ == "__main__":
    main()
