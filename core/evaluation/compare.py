"""`compare`: compress one teacher with several methods and seeds, then probe everything the same way.

The question it answers is the paper's: at the same sparsity, do SKILL's cluster targets keep more of the
teacher than DPHuBERT's hand-picked layers? So every model (teacher, each student, FBANK) gets the same
probes, the same seeds and the same test split, and the table reports mean ± standard deviation over seeds:
one seed per compression run (student seed s is probed with seed s), and the teacher and FBANK probed with
every seed so their spread shows how much of a difference is probe noise.

Compression sees the train split only: the pipeline takes a directory, so a train-only view of the dataset is
written into the output directory (audio hard-linked, copied where linking is impossible), keeping the test
utterances out of calibration and distillation. `compress_split` names another split for compression, so the
probes can run on speakers compression never heard (the held-out-speakers view of `bench/heldout_speakers.py`:
compress on `compress`, probe on `probe_train` / `probe_test`).

Phases: 1. labels and the train view; 2. teacher features and probes (all seeds); 3. FBANK (all seeds);
4. per method and seed: compress, then probe the student (its seed) and measure CKA to the teacher on the
test split per distillation cluster; 5. aggregate and write `comparison.json`, `comparison.md`,
`comparison.png` and `tradeoff.png` (quality against the measured speed-up, the Pareto front joined). Probe
results are deterministic given the seeds; timings (RTF) are measurements and vary.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.data import MANIFEST_NAME
from core.errors import AudioError
from core.evaluation.dataset import TASKS, load_probe_data
from core.evaluation.facts import cluster_cka
from core.evaluation.fbank import Fbank
from core.evaluation.probes import PhoneProbeConfig, SpeakerProbeConfig
from core.evaluation.run import (
    STAGE,
    clusters_from_export,
    describe_model,
    environment,
    extract,
    format_count,
    format_rtf,
    layer_table,
    load_representation_model,
    run_probes,
    select_device,
)
from core.events import Event, OnEvent, ignore_event

FORMAT = "skillkd-comparison"
METHODS = ("skill", "dphubert")
BUDGET_FIELDS = ("sparsity", "target_params", "macs_sparsity", "target_macs", "target_speedup")
# budget fields read as numbers here (the counts, e.g. 2.5G, are left to the spec to parse)
_FLOAT_FIELDS = ("sparsity", "macs_sparsity", "target_speedup")


def parse_budgets(text: str) -> list[dict[str, Any]]:
    """'sparsity=0.75;macs_sparsity=0.75;target_speedup=4;sparsity=0.75,macs_sparsity=0.75' -> one dict of
    spec target fields per budget (sparsities and speed-ups as numbers, counts as written: the spec parses
    counts such as 2.5G and checks ranges)."""
    budgets: list[dict[str, Any]] = []
    for part in text.split(";"):
        budget: dict[str, Any] = {}
        for item in part.split(","):
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in BUDGET_FIELDS or not value.strip():
                raise ValueError(
                    f"cannot read budget {part.strip()!r}: expected field=value pairs of "
                    f"{', '.join(BUDGET_FIELDS)}, e.g. 'sparsity=0.75;macs_sparsity=0.75;target_speedup=4'"
                )
            try:
                budget[key] = float(value) if key in _FLOAT_FIELDS else value.strip()
            except ValueError:
                raise ValueError(
                    f"budget {part.strip()!r}: {key} must be a number, found {value!r}"
                ) from None
        budgets.append(budget)
    return budgets


def budget_label(budget: dict[str, Any]) -> str:
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in budget.items())


def link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes a hard link to `source` (no extra disk), or a copy when the two are on different file
    systems; an existing `target` is left as it is (rewriting a view is idempotent)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def write_split_view(dataset: Path, split: str, dest: Path) -> Path:
    """A dataset directory at `dest` holding only the rows of `split` (same relative paths, same fields).

    Audio is hard-linked (no extra disk) or copied when the two directories are on different file systems.
    Rows whose path could leave the dataset are left out here as the audio scan would leave them out.
    Rewriting an existing view gives the same content, so a resumed comparison finds its workdirs unchanged.
    """
    manifest = dataset / MANIFEST_NAME
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AudioError(f"cannot read {manifest}: {exc}") from exc
    kept = []
    for line in lines:
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or row.get("split") != split or not isinstance(row.get("path"), str):
            continue
        relative = Path(row["path"])
        if relative.is_absolute() or ".." in relative.parts:
            continue
        source, target = dataset / relative, dest / relative
        if not source.is_file():
            continue
        link_or_copy(source, target)
        kept.append(json.dumps(row, ensure_ascii=False))
    if not kept:
        raise AudioError(f"{manifest}: no row with split {split!r} to compress on")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST_NAME).write_text("\n".join(kept) + "\n", encoding="utf-8")
    return dest


def _budget_of(spec: Any) -> dict[str, Any]:
    return {k: getattr(spec, k) for k in BUDGET_FIELDS if getattr(spec, k) is not None}


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for a single value); (None, None) for none."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _report_speedup(report: dict[str, Any]) -> float | None:
    """Teacher time / student time on one CPU thread, from the job's own report: the two models interleaved in
    one process (core.evaluation.speed), the figure a ratio of this table's separately timed RTFs cannot
    replace."""
    setting = (report.get("speed") or {}).get("cpu_1_thread") or {}
    value = setting.get("speedup")
    return float(value) if value is not None else None


def _paired(mine: list[dict[str, Any]], runs: list[dict[str, Any]], task: str, key: str) -> list[float]:
    """Each of `mine`'s `task` `key` less the teacher's probed with the same seed (the same probe
    initialisation and batch order), so that what a seed does to both probes is not counted as a difference
    between the models. Runs whose seed the teacher was not probed with are left out."""
    teacher = {run["seed"]: run[task][key] for run in runs if run["group"] == "teacher" and task in run}
    return [run[task][key] - teacher[run["seed"]] for run in mine if task in run and run["seed"] in teacher]


def _aggregate(group: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [run for run in runs if run["group"] == group]
    per = [run["pr"]["per"] for run in mine if "pr" in run]
    acc = [run["sid"]["accuracy"] for run in mine if "sid" in run]
    cka = [statistics.fmean(run["cka"]["values"]) for run in mine if run.get("cka")]
    layers = [run["sid_per_layer"]["accuracy"] for run in mine if "sid_per_layer" in run]
    rtf = [run["speed"]["cpu"]["rtf"] for run in mine if "cpu" in run.get("speed", {})]
    gpu = [run["speed"]["cuda"]["rtf"] for run in mine if "cuda" in run.get("speed", {})]
    speedups = [run["speedup_cpu_1_thread"] for run in mine if run.get("speedup_cpu_1_thread") is not None]
    per_mean, per_std = _mean_std(per)
    acc_mean, acc_std = _mean_std(acc)
    per_diff = _mean_std(_paired(mine, runs, "pr", "per")) if group != "teacher" else (None, None)
    acc_diff = _mean_std(_paired(mine, runs, "sid", "accuracy")) if group != "teacher" else (None, None)
    return {
        "model": group,
        "runs": len(mine),
        "params": statistics.fmean(run["params"] for run in mine),
        "per_mean": per_mean,
        "per_std": per_std,
        "sid_accuracy_mean": acc_mean,
        "sid_accuracy_std": acc_std,
        # minus the teacher's, paired by probe seed (None for the teacher itself)
        "per_vs_teacher_mean": per_diff[0],
        "per_vs_teacher_std": per_diff[1],
        "sid_accuracy_vs_teacher_mean": acc_diff[0],
        "sid_accuracy_vs_teacher_std": acc_diff[1],
        "macs_per_second": statistics.fmean(run["macs_per_second"] for run in mine),
        "rtf_cpu": _mean_std(rtf)[0],
        "rtf_cuda": _mean_std(gpu)[0],
        "speedup_cpu_1_thread": _mean_std(speedups)[0],
        "cka_mean": _mean_std(cka)[0],
        # Mean over seeds of each layer's own SID accuracy (runs of one group share their layer count).
        "sid_per_layer_mean": [statistics.fmean(column) for column in zip(*layers, strict=True)]
        if layers
        else None,
    }


@dataclass
class _Probing:
    """Extracts features of each model on the probe data and appends one row per probe seed to `runs`."""

    data: Any
    device: Any
    emit: OnEvent
    measure_speed: bool
    per_layer: bool
    phone_config: PhoneProbeConfig
    speaker_config: SpeakerProbeConfig
    runs: list[dict[str, Any]] = field(default_factory=list)

    def probes(self, features: Any, seed: int) -> dict[str, Any]:
        return run_probes(
            features,
            self.data,
            seed=seed,
            phone_config=self.phone_config,
            speaker_config=self.speaker_config,
            per_layer=self.per_layer,
            on_event=self.emit,
        )

    def reference(self, model: Any, name: str, group: str, seeds: list[int], **extra: Any) -> Any:
        """A teacher or FBANK, probed with every seed; returns its features."""
        features = extract(model, self.data, name=name, device=self.device, on_event=self.emit)
        facts = describe_model(model, measure_speed=self.measure_speed)
        for seed in seeds:
            self.runs.append(
                {
                    "model": name,
                    "group": group,
                    "seed": seed,
                    "num_representations": features.num_reps,
                    "dim": features.dim,
                    **facts,
                    **extra,
                    **self.probes(features, seed),
                }
            )
        return features

    def reference_models(self, teacher: Path, seeds: list[int], include_fbank: bool) -> Any:
        """The teacher (its features returned, for CKA) and FBANK, each probed with every seed."""
        model, name, _ = load_representation_model(teacher)
        features = self.reference(model, name, "teacher", seeds, source=str(teacher))
        del model
        if include_fbank:
            self.reference(Fbank(), "fbank", "fbank", seeds, source="fbank")
        return features

    def student(
        self, result: Any, run_name: str, group: str, method: str, seed: int, teacher_features: Any
    ) -> None:
        """A compressed student, probed with its compression seed, with the CKA of its layers to the teacher's
        cluster means on the test utterances."""
        model, name, _ = load_representation_model(result.export_dir, run_name)
        clusters = result.report.get("clusters") or clusters_from_export(result.export_dir)
        features = extract(model, self.data, name=name, device=self.device, on_event=self.emit)
        facts = describe_model(model, measure_speed=self.measure_speed)
        test_ids = [item.id for item in self.data.test]
        cka = (
            {"clusters": clusters, "values": cluster_cka(teacher_features, features, clusters, test_ids)}
            if clusters
            else None
        )
        self.runs.append(
            {
                "model": name,
                "group": group,
                "method": method,
                "seed": seed,
                "source": str(result.export_dir),
                "num_representations": features.num_reps,
                "dim": features.dim,
                "achieved_sparsity": result.report.get("achieved_sparsity"),
                "targets": result.report.get("targets"),
                "speedup_cpu_1_thread": _report_speedup(result.report),
                **facts,
                "cka": cka,
                **self.probes(features, seed),
            }
        )


def _seed_list(methods: Sequence[str], seeds: int) -> list[int]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, found {list(methods)}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, found {seeds}")
    return list(range(seeds))


def _run_name(group: str, method: str, seed: int, spec: Any) -> str:
    """The run's directory name: method and seed, with the budget when the comparison names budgets."""
    if group == method:
        return f"{method}-seed{seed}"
    return f"{method}-{budget_label(_budget_of(spec)).replace('=', '').replace(',', '-')}-seed{seed}"


def _student_specs(
    methods: Sequence[str],
    budget_list: list[dict[str, Any]],
    seed_list: list[int],
    named: bool,
    base: dict[str, Any],
) -> dict[tuple[str, str, int], Any]:
    """(group, method, seed) -> CompressionSpec; built up front so a bad spec fails before any minute is
    spent."""
    from core.spec import CompressionSpec

    def group_name(method: str, budget: dict[str, Any]) -> str:
        return f"{method} [{budget_label(budget)}]" if named else method

    return {
        (group_name(method, budget), method, seed): CompressionSpec(
            **{**base, **budget, "method": method, "seed": seed}
        )
        for method in methods
        for budget in budget_list
        for seed in seed_list
    }


def compare(
    teacher: Path | str,
    dataset: Path | str,
    *,
    out_dir: Path | str,
    methods: Sequence[str] = METHODS,
    sparsity: float = 0.75,
    seeds: int = 3,
    preset: str = "quick",
    stage1_steps: int | None = None,
    stage2_steps: int | None = None,
    tasks: Sequence[str] = TASKS,
    phone_field: str = "arpabet",
    train_split: str = "train",
    test_split: str = "test",
    compress_split: str | None = None,
    per_layer: bool = False,
    include_fbank: bool = True,
    device: str = "auto",
    measure_speed: bool = True,
    spec_overrides: dict[str, Any] | None = None,
    budgets: Sequence[dict[str, Any]] | None = None,
    phone_config: PhoneProbeConfig = PhoneProbeConfig(),
    speaker_config: SpeakerProbeConfig = SpeakerProbeConfig(),
    on_event: OnEvent | None = None,
) -> dict[str, Any]:
    """Compress `teacher` with each method × seed (0..seeds-1) on the train split (or `compress_split`), probe
    all (with `per_layer`, also each layer's own SID accuracy), write the report.

    With `budgets` (each a dict of spec target fields, e.g. {"macs_sparsity": 0.75}) every method is also run
    at every budget instead of at `sparsity`; the groups are then named "method [budget]"."""
    from core import pipeline

    emit = on_event or ignore_event
    teacher, dataset, out_dir = Path(teacher), Path(dataset), Path(out_dir)
    seed_list = _seed_list(methods, seeds)
    budget_list = list(budgets) if budgets else [{"sparsity": sparsity}]
    base = dict(preset=preset, stage1_steps=stage1_steps, stage2_steps=stage2_steps, device=device)
    named = len(budget_list) > 1 or budgets is not None
    specs = _student_specs(methods, budget_list, seed_list, named, {**base, **(spec_overrides or {})})
    student_groups = list(dict.fromkeys(group for group, _, _ in specs))

    # 1. Labels, and the train-only view compression runs on
    splits = dict(train_split=train_split, test_split=test_split)
    data = load_probe_data(dataset, tasks=tasks, phone_field=phone_field, **splits)
    compress_split = compress_split or train_split
    train_view = write_split_view(dataset, compress_split, out_dir / "train-data")
    configs = (phone_config, speaker_config)
    probing = _Probing(data, select_device(device), emit, measure_speed, per_layer, *configs)

    # 2-4. Teacher (features kept for CKA), FBANK, the students
    teacher_features = probing.reference_models(teacher, seed_list, include_fbank)
    for (group, method, seed), spec in specs.items():
        emit(Event("log", STAGE, message=f"compress {group} seed {seed}"))
        run_name = _run_name(group, method, seed, spec)
        result = pipeline.run(spec, teacher, train_view, out_dir / "runs" / run_name, on_event=emit)
        probing.student(result, run_name, group, method, seed, teacher_features)

    # 5. Aggregate and write
    groups = ["teacher"] + (["fbank"] if include_fbank else []) + student_groups
    comparison = {
        "format": FORMAT,
        "teacher": str(teacher),
        "dataset": dict(path=str(dataset), **splits, compress_split=compress_split) | data.summary(),
        "methods": list(methods),
        "sparsity": None if budgets else sparsity,
        "budgets": [budget_label(b) for b in budget_list] if budgets else None,
        "seeds": seed_list,
        **{key: base[key] for key in ("preset", "stage1_steps", "stage2_steps")},
        "spec_overrides": spec_overrides or {},
        "tasks": list(data.tasks),
        "phone_field": phone_field if "pr" in data.tasks else None,
        "rows": [_aggregate(group, probing.runs) for group in groups],
        "runs": probing.runs,
        "notes": list(data.notes),
        "environment": environment(),
    }
    write_comparison(comparison, out_dir)
    return comparison


# ------------------------------------------------------------------------------------------------------------
# Report files


def _pm(mean: float | None, std: float | None, signed: bool = False) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:{'+' if signed else ''}.2f} ± {100 * (std or 0.0):.2f}"


def _budget_text(comparison: dict[str, Any]) -> str:
    budgets = comparison.get("budgets")
    return f"budgets {'; '.join(budgets)}" if budgets else f"sparsity {comparison['sparsity']}"


def render_comparison(comparison: dict[str, Any]) -> str:
    data = comparison["dataset"]
    lines = [
        f"# Comparison on `{data['path']}`",
        "",
        f"Teacher `{comparison['teacher']}`; methods {', '.join(comparison['methods'])} at "
        f"{_budget_text(comparison)} (preset {comparison['preset']}), seeds {comparison['seeds']}. "
        "Compression on "
        f"split `{data.get('compress_split') or data['train_split']}` only; probes trained on "
        f"`{data['train_split']}` "
        f"({data['train_utterances']} utterances) and scored on `{data['test_split']}` "
        f"({data['test_utterances']} utterances). Mean ± standard deviation over seeds.",
        "",
        "| model | params | PER % ↓ | SID acc % ↑ | PER − teacher | SID − teacher | MACs / s of audio "
        "| speed-up, 1 thread | CPU RTF | GPU RTF | CKA to teacher |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in comparison["rows"]:
        rtf, gpu = format_rtf(row["rtf_cpu"]), format_rtf(row["rtf_cuda"])
        cka = "—" if row["cka_mean"] is None else f"{row['cka_mean']:.3f}"
        speedup = row.get("speedup_cpu_1_thread")
        faster = "1" if row["model"] == "teacher" else ("—" if speedup is None else f"{speedup:.2f}×")
        lines.append(
            f"| {row['model']} | {format_count(row['params'])} | {_pm(row['per_mean'], row['per_std'])} | "
            f"{_pm(row['sid_accuracy_mean'], row['sid_accuracy_std'])} | "
            f"{_pm(row.get('per_vs_teacher_mean'), row.get('per_vs_teacher_std'), signed=True)} | "
            f"{_pm(row.get('sid_accuracy_vs_teacher_mean'), row.get('sid_accuracy_vs_teacher_std'), True)} | "
            f"{format_count(row['macs_per_second'])} | "
            f"{faster} | {rtf} | {gpu} | {cka} |"
        )
    lines += [
        "",
        "PER − teacher, SID − teacher: each student run less the teacher probed with the same seed (the "
        "same probe initialisation and order), mean ± standard deviation of those differences over seeds, "
        "in points.",
        "CKA to teacher: linear CKA between the teacher's and the student's cluster-mean representations "
        "on the test split, averaged over the student's distillation clusters (per run in comparison.json).",
        "Speed-up: teacher time / student time for 10 s of audio on one CPU thread, the two interleaved in "
        "one "
        "process when the job ended (its report.json `speed`); mean over seeds.",
        "RTF: median time to encode 10 s of audio / 10 s, each model timed on its own during the comparison "
        f"(CPU threads as set: {comparison['environment']['threads']}); on a busy machine a ratio of two "
        "RTFs "
        "is not a speed-up.",
    ]
    layered = [row for row in comparison["rows"] if row.get("sid_per_layer_mean")]
    if layered:
        lines += [
            "",
            "SID accuracy % of each representation alone (its own linear probe), mean over seeds:",
            "",
            *layer_table([(row["model"], row["sid_per_layer_mean"]) for row in layered]),
        ]
    lines += render_tradeoff(comparison)
    if comparison["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in comparison["notes"]]
    return "\n".join(lines) + "\n"


def plot_comparison(comparison: dict[str, Any], path: Path) -> None:
    """Bars with standard-deviation whiskers: PER, SID accuracy, parameters, per model."""
    rows = comparison["rows"]
    names = [row["model"] for row in rows]
    panels: list[tuple[str, str, str | None, float]] = []
    if any(row["per_mean"] is not None for row in rows):
        panels.append(("PER % (lower is better)", "per_mean", "per_std", 100.0))
    if any(row["sid_accuracy_mean"] is not None for row in rows):
        panels.append(("SID accuracy % (higher is better)", "sid_accuracy_mean", "sid_accuracy_std", 100.0))
    panels.append(("parameters (M)", "params", None, 1e-6))
    figure = Figure(figsize=(4.0 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    colours = [f"C{i}" for i in range(len(rows))]
    for ax, (title, key, err, scale) in zip(axes, panels, strict=True):
        values = [(row[key] or 0.0) * scale for row in rows]
        errors = [(row[err] or 0.0) * scale for row in rows] if err else None
        ax.bar(range(len(rows)), values, yerr=errors, color=colours, capsize=4)
        ax.set_xticks(range(len(rows)), names, rotation=20, ha="right")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{_budget_text(comparison)}, seeds {comparison['seeds']}", fontsize=10)
    figure.savefig(path, dpi=120)


# The trade-off picture: (key, axis title, mean field, sd field, higher is better) per quality metric.
TRADEOFF_METRICS = (
    ("per", "PER % (lower is better)", "per_mean", "per_std", False),
    ("sid", "SID accuracy % (higher is better)", "sid_accuracy_mean", "sid_accuracy_std", True),
)


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the (speed-up, quality) points no other point dominates, fastest last.

    A point dominates another when it is at least as fast (x, higher is better) and at least as good (y,
    higher or lower is better as told) and strictly better in one of the two. Equal points dominate neither
    other: both are on the front. Points with a non-finite coordinate are never on it."""
    sign = 1.0 if higher_is_better else -1.0
    finite = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        ya, yb = sign * a[1], sign * b[1]
        return a[0] >= b[0] and ya >= yb and (a[0] > b[0] or ya > yb)

    front = [i for i in finite if not any(dominates(points[j], points[i]) for j in finite if j != i)]
    return sorted(front, key=lambda i: (points[i][0], -sign * points[i][1]))


def tradeoff(comparison: dict[str, Any]) -> dict[str, Any]:
    """What `tradeoff.png` draws: per available metric, each row with a measured speed-up on one CPU thread
    (the teacher at 1×) as {model, speedup, mean, sd} (metric in %) and the names on its Pareto front (slowest
    first); `left_out` names the rows without a measured speed-up (FBANK; students of runs made with
    SKILLKD_SPEED_RUNS=0)."""
    placed: list[tuple[dict[str, Any], float]] = []
    left_out: list[str] = []
    for row in comparison["rows"]:
        speedup = 1.0 if row["model"] == "teacher" else row.get("speedup_cpu_1_thread")
        if speedup is None:
            left_out.append(row["model"])
        else:
            placed.append((row, float(speedup)))
    panels = []
    for key, title, mean, std, higher in TRADEOFF_METRICS:
        points = [
            {
                "model": row["model"],
                "speedup": speedup,
                "mean": 100 * row[mean],
                "sd": 100 * (row[std] or 0.0),
            }
            for row, speedup in placed
            if row.get(mean) is not None
        ]
        if not points:
            continue
        front = pareto_front([(p["speedup"], p["mean"]) for p in points], higher)
        panels.append(
            {
                "metric": key,
                "title": title,
                "higher_is_better": higher,
                "points": points,
                "front": [points[i]["model"] for i in front],
            }
        )
    return {"panels": panels, "left_out": left_out}


def _tradeoff_caption(picture: dict[str, Any]) -> str:
    left = picture["left_out"]
    if not left:
        return "every model placed"
    return f"{len(left)} left out without a measured speed-up ({', '.join(left)})"


def render_tradeoff(comparison: dict[str, Any]) -> list[str]:
    """comparison.md's lines on `tradeoff.png`: what it shows, each metric's Pareto front, what is left
    out."""
    picture = tradeoff(comparison)
    lines = [
        "",
        "Trade-off (`tradeoff.png`): quality against the measured speed-up on one CPU thread (the teacher at "
        "1×), mean ± sd over seeds; the Pareto front joins the models no other model beats in both (at least "
        f"as fast and at least as good, better in one); {_tradeoff_caption(picture)}.",
    ]
    if not picture["panels"]:
        return [*lines, "", "No PER or SID accuracy to place."]
    lines.append("")
    for panel in picture["panels"]:
        by_name = {p["model"]: p for p in panel["points"]}
        front = ", ".join(
            f"{name} ({by_name[name]['speedup']:.2f}×, {by_name[name]['mean']:.2f})"
            for name in panel["front"]
        )
        lines.append(f"- Pareto front, {panel['title']}: {front}")
    return lines


def plot_tradeoff(comparison: dict[str, Any], path: Path) -> None:
    """One panel per metric: mean with sd error bars against the measured speed-up, one labelled marker per
    row, the Pareto front joined by a line; the caption says how many rows had no speed-up to place."""
    picture = tradeoff(comparison)
    panels = picture["panels"]
    figure = Figure(figsize=(5.0 * max(1, len(panels)), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
    colours = {row["model"]: f"C{i % 10}" for i, row in enumerate(comparison["rows"])}
    for ax, panel in zip(axes, panels, strict=False):
        for point in panel["points"]:
            ax.errorbar(
                point["speedup"],
                point["mean"],
                yerr=point["sd"],
                fmt="o",
                color=colours[point["model"]],
                capsize=4,
                zorder=3,
            )
            ax.annotate(
                point["model"],
                (point["speedup"], point["mean"]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=7,
            )
        by_name = {p["model"]: p for p in panel["points"]}
        front = [by_name[name] for name in panel["front"]]
        ax.plot(
            [p["speedup"] for p in front],
            [p["mean"] for p in front],
            "-",
            color="0.35",
            zorder=2,
            label="Pareto front",
        )
        ax.set_xlabel("measured speed-up, CPU 1 thread (×, teacher = 1)")
        ax.set_ylabel(panel["title"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if not panels:
        axes[0].text(0.5, 0.5, "no PER or SID accuracy to place", ha="center", va="center")
        axes[0].set_axis_off()
    figure.suptitle(
        f"Quality against speed-up, {_budget_text(comparison)}, seeds {comparison['seeds']}\n"
        f"{_tradeoff_caption(picture)}",
        fontsize=9,
    )
    figure.savefig(path, dpi=120)


def write_comparison(comparison: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(comparison, indent=2, default=str) + "\n")
    (out_dir / "comparison.md").write_text(render_comparison(comparison))
    plot_comparison(comparison, out_dir / "comparison.png")
    plot_tradeoff(comparison, out_dir / "tradeoff.png")


__all__ = [
    "BUDGET_FIELDS",
    "METHODS",
    "TRADEOFF_METRICS",
    "compare",
    "link_or_copy",
    "pareto_front",
    "parse_budgets",
    "plot_comparison",
    "plot_tradeoff",
    "render_comparison",
    "render_tradeoff",
    "tradeoff",
    "write_comparison",
    "write_split_view",
]
