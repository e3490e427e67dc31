"""`skillkd evaluate` and `skillkd compare`: the evaluation engine (core.evaluation) behind two click
commands.

Progress goes to stderr as tqdm bars (cli/progress.py; one per phase: extraction of a model, each probe, each
compression stage); stdout carries only the result (markdown summary, or JSON with --json), so it can be
piped. The engine (and torch) is imported inside the commands, so `skillkd --help` and the service commands
stay light.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli.errors import fail
from cli.progress import ProgressBars
from core.errors import SkillkdError


def _tasks(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    from core.evaluation.dataset import TASKS

    tasks = tuple(t.strip() for t in value.split(",") if t.strip())
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise click.BadParameter(f"expected a comma-separated subset of {','.join(TASKS)}, got {value!r}")
    return tasks


def _finetune_tasks(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    from core.evaluation.finetune import FINETUNE_TASKS

    tasks = tuple(dict.fromkeys(t.strip() for value in values for t in value.split(",") if t.strip()))
    bad = [t for t in tasks if t not in FINETUNE_TASKS]
    if bad:
        raise click.BadParameter(
            f"expected {' or '.join(FINETUNE_TASKS)} (repeat or comma-separate), got {bad}"
        )
    return tasks


def _methods(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from core.evaluation.compare import METHODS

    methods = [m.strip() for m in value.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        raise click.BadParameter(f"expected a comma-separated subset of {','.join(METHODS)}, got {value!r}")
    return methods


def _run(bars: ProgressBars, work: Callable[[], Any]) -> Any:
    """Run `work` with progress bars; engine errors become one line and an exit status, bad values a usage
    error (never a traceback)."""
    try:
        return work()
    except SkillkdError as exc:
        bars.close()
        fail(exc)
    except ValueError as exc:  # a bad option value the engine refused (e.g. a spec field out of range)
        bars.close()
        raise click.UsageError(str(exc)) from exc
    finally:
        bars.close()


_PATH = click.Path(exists=True, path_type=Path)


@click.command("evaluate")
@click.argument("model", type=_PATH)
@click.argument("dataset", type=_PATH)
@click.option(
    "--tasks",
    default="pr,sid",
    show_default=True,
    callback=_tasks,
    help="Comma-separated: pr (phonemes), sid (speakers).",
)
@click.option(
    "--phone-field", default="arpabet", show_default=True, help="Manifest field holding the phones."
)
@click.option("--train-split", default="train", show_default=True)
@click.option("--test-split", default="test", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Probe initialisation and shuffling.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory for evaluation.json and evaluation.md.",
)
@click.option("--fbank/--no-fbank", default=False, show_default=True, help="Also probe the FBANK baseline.")
@click.option("--teacher", type=_PATH, default=None, help="Also report CKA to this teacher per cluster.")
@click.option(
    "--head",
    type=click.Choice(["linear", "lstm"]),
    default="linear",
    show_default=True,
    help="PR probe head: linear, or one BiLSTM layer of 128.",
)
@click.option(
    "--device", default="auto", show_default=True, help="Feature extraction device: auto, cpu, cuda."
)
@click.option(
    "--per-layer",
    is_flag=True,
    help="Also the SID accuracy of each representation alone (one probe per layer): where speaker "
    "identity lives.",
)
@click.option(
    "--name",
    default=None,
    help="The model's name in the results [default: for a student, teacher, method and size from "
    "its report.json, e.g. 'hubert-mini SKILL 2.9M'; else the folder name].",
)
@click.option(
    "--finetune",
    multiple=True,
    callback=_finetune_tasks,
    help="Also fine-tune the whole model briefly (transformers Trainer, the recipe in docs/evaluation.md) on "
    "the train split and score it on the test split: ctc (phones, PER) or speaker (accuracy); repeat or "
    "comma-separate.",
)
@click.option(
    "--finetune-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Training steps of each fine-tuning run [default: 200].",
)
@click.option(
    "--label-field",
    default=None,
    help="A classifier model (a fine-tuned teacher or a student that kept its head) is scored on its task "
    "against this manifest field [default: the first of label, emotion, speaker that names its labels].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON on stdout.")
def evaluate_command(
    model: Path,
    dataset: Path,
    tasks: tuple[str, ...],
    phone_field: str,
    train_split: str,
    test_split: str,
    seed: int,
    out_dir: Path,
    fbank: bool,
    teacher: Path | None,
    head: str,
    device: str,
    per_layer: bool,
    name: str | None,
    finetune: tuple[str, ...],
    finetune_steps: int | None,
    label_field: str | None,
    as_json: bool,
) -> None:
    """Probe MODEL (a teacher or an exported student) on DATASET: phoneme recognition and speaker ID; with
    --finetune, also what it scores after brief fine-tuning of the whole model. A model with a task head (a
    fine-tuned teacher, or a student that kept its head) is also scored on its task with its own head."""
    from core.evaluation.finetune import FinetuneConfig
    from core.evaluation.probes import PhoneProbeConfig
    from core.evaluation.run import evaluate, render_markdown

    finetune_config = FinetuneConfig() if finetune_steps is None else FinetuneConfig(steps=finetune_steps)
    bars = ProgressBars(leave=False, unit="it")
    result = _run(
        bars,
        lambda: evaluate(
            model,
            dataset,
            tasks=tasks,
            phone_field=phone_field,
            train_split=train_split,
            test_split=test_split,
            seed=seed,
            out_dir=out_dir,
            include_fbank=fbank,
            teacher=teacher,
            name=name,
            device=device,
            phone_config=PhoneProbeConfig(head=head),  # type: ignore[arg-type]
            per_layer=per_layer,
            finetune=finetune,
            finetune_config=finetune_config,
            label_field=label_field,
            on_event=bars,
        ),
    )
    click.echo(json.dumps(result, indent=2) if as_json else render_markdown(result))


@click.command("compare")
@click.argument("teacher", type=_PATH)
@click.argument("dataset", type=_PATH)
@click.option(
    "--methods",
    default="skill,dphubert",
    show_default=True,
    callback=_methods,
    help="Comma-separated methods.",
)
@click.option("--sparsity", type=float, default=0.75, show_default=True)
@click.option(
    "--budgets",
    default=None,
    help="Compare budgets instead of one sparsity: ';'-separated, each ','-separated spec targets "
    "(sparsity, target_params, macs_sparsity, target_macs, target_speedup), "
    "e.g. 'sparsity=0.75;macs_sparsity=0.75;target_speedup=4;sparsity=0.75,macs_sparsity=0.75'; "
    "tradeoff.png then plots quality against the measured speed-up.",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Runs per method, seeds 0..N-1 (compression and probes).",
)
@click.option("--preset", type=click.Choice(["quick", "paper"]), default="quick", show_default=True)
@click.option("--stage1-steps", type=int, default=None)
@click.option("--stage2-steps", type=int, default=None)
@click.option(
    "--clusters", default=None, help="SKILL's k (default 4) or 'auto'; DPHuBERT keeps its fixed layers."
)
@click.option("--tasks", default="pr,sid", show_default=True, callback=_tasks)
@click.option("--phone-field", default="arpabet", show_default=True)
@click.option("--train-split", default="train", show_default=True)
@click.option("--test-split", default="test", show_default=True)
@click.option(
    "--compress-split",
    default=None,
    help="The split compression sees [default: the train split]; "
    "e.g. 'compress' on a held-out-speakers view (bench/heldout_speakers.py), whose probes then "
    "run "
    "on speakers no compression saw.",
)
@click.option(
    "--per-layer", is_flag=True, help="Also the SID accuracy of each representation alone, per model."
)
@click.option("--fbank/--no-fbank", default=True, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory for runs/, comparison.json, comparison.md, comparison.png and tradeoff.png.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison JSON on stdout.")
def compare_command(
    teacher: Path,
    dataset: Path,
    methods: list[str],
    sparsity: float,
    budgets: str | None,
    seeds: int,
    preset: str,
    stage1_steps: int | None,
    stage2_steps: int | None,
    clusters: str | None,
    tasks: tuple[str, ...],
    phone_field: str,
    train_split: str,
    test_split: str,
    compress_split: str | None,
    per_layer: bool,
    fbank: bool,
    device: str,
    out_dir: Path,
    as_json: bool,
) -> None:
    """Compress TEACHER with each method and seed on DATASET's train split (or --compress-split); probe all
    models alike."""
    from core.evaluation.compare import compare, parse_budgets, render_comparison

    overrides: dict[str, Any] = {}
    if clusters is not None:
        overrides["clusters"] = int(clusters) if clusters.strip().isdigit() else clusters.strip()
    bars = ProgressBars(leave=False, unit="it")
    budget_list = _run(bars, lambda: parse_budgets(budgets)) if budgets else None
    result = _run(
        bars,
        lambda: compare(
            teacher,
            dataset,
            out_dir=out_dir,
            methods=methods,
            sparsity=sparsity,
            seeds=seeds,
            preset=preset,
            stage1_steps=stage1_steps,
            stage2_steps=stage2_steps,
            tasks=tasks,
            phone_field=phone_field,
            train_split=train_split,
            test_split=test_split,
            compress_split=compress_split,
            per_layer=per_layer,
            include_fbank=fbank,
            device=device,
            on_event=bars,
            spec_overrides=overrides,
            budgets=budget_list,
        ),
    )
    click.echo(json.dumps(result, indent=2, default=str) if as_json else render_comparison(result))


COMMANDS = (evaluate_command, compare_command)

__all__ = ["COMMANDS", "compare_command", "evaluate_command"]
