"""`evaluate`: probe one model (and optionally the FBANK baseline) on a labelled dataset, write the report.

Phases, in order: 1. read and check the labels; 2. load the model; 3. extract its features once;
4. train and score the probes; 5. model facts (parameters, MACs/s, real-time factor; CKA to a teacher if one
is given); 6. optionally fine-tune the whole model per task (core.evaluation.finetune) on the same splits;
7. write `evaluation.json` and `evaluation.md`. `compare` reuses the same pieces with several seeds.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from core.evaluation.dataset import TASKS, ProbeData, load_probe_data
from core.evaluation.facts import (
    cluster_cka,
    count_macs,
    count_parameters,
    device_of,
    real_time_factor,
    sample_rate_of,
)
from core.evaluation.fbank import Fbank
from core.evaluation.features import FeatureSet, RepresentationModel, extract_features
from core.evaluation.finetune import (
    FINETUNE_TASKS,
    FinetuneConfig,
    require_labels,
    require_model,
)
from core.evaluation.finetune import finetune as run_finetune
from core.evaluation.probes import (
    PhoneProbeConfig,
    SpeakerProbeConfig,
    train_phone_probe,
    train_speaker_probe,
    train_speaker_probes_per_layer,
)
from core.events import Event, OnEvent, ignore_event
from core.inputs import select_device

STAGE = "evaluate"
FORMAT = "skillkd-evaluation"


def load_representation_model(
    model: Path | str | RepresentationModel, name: str | None = None
) -> tuple[RepresentationModel, str, str]:
    """(model, display name, source) from a module or a path (a teacher HF dir or an exported student dir)."""
    if isinstance(model, (str, Path)):
        from core.models import load_model

        path = Path(model)
        return load_model(path), name or default_name(path), str(path)
    return model, name or type(model).__name__, "module"


_METHOD_NAMES = {"skill": "SKILL", "dphubert": "DPHuBERT"}


def default_name(path: Path | str) -> str:
    """What a model is called in results: for an exported student, its teacher, method and size from its
    `report.json` ("hubert-mini SKILL 2.9M"); otherwise (a teacher, or no readable report) the folder name."""
    path = Path(path)
    try:
        report = json.loads((path / "report.json").read_text())
        facts = report["teacher"]
        teacher = facts.get("name") or Path(str(facts["path"]).rstrip("/")).name  # "path": older reports
        method = _METHOD_NAMES.get(report["method"], str(report["method"]))
        params = int(report["student"]["num_params"])
    except (OSError, ValueError, KeyError, TypeError):
        return path.resolve().name
    size = f"{params / 1e6:.1f}M" if params >= 1e6 else f"{params / 1e3:.0f}k"
    return f"{teacher} {method} {size}"


class _Progress:
    """Emits `progress` events for one phase of one model ("extract hubert-mini", "pr hubert-mini seed 0")."""

    def __init__(self, on_event: OnEvent, message: str) -> None:
        self.on_event = on_event
        self.message = message

    def items(self, done: int, total: int) -> None:
        self.on_event(Event("progress", STAGE, step=done, total=total, message=self.message))

    def epochs(self, epoch: int, epochs: int, loss: float) -> None:
        self.on_event(
            Event("progress", STAGE, step=epoch, total=epochs, message=self.message, metrics={"loss": loss})
        )


def extract(
    model: RepresentationModel,
    data: ProbeData,
    *,
    name: str,
    device: torch.device,
    on_event: OnEvent,
    batch_seconds: float | None = None,
) -> FeatureSet:
    """Features of every train and test utterance, the model temporarily on `device`.

    Batches hold up to 160 s of padded audio on a GPU and 32 s on a CPU (default), as in calibration.
    """
    if batch_seconds is None:
        batch_seconds = 160.0 if device.type == "cuda" else 32.0
    module = model if isinstance(model, torch.nn.Module) else None
    home = device_of(model)
    if module is not None:
        module.to(device)
    try:
        return extract_features(
            model,
            data.catalog,
            name=name,
            device=device,
            batch_seconds=batch_seconds,
            sample_rate=sample_rate_of(model),
            progress=_Progress(on_event, f"extract {name}").items,
        )
    finally:
        if module is not None:
            module.to(home)


def run_probes(
    features: FeatureSet,
    data: ProbeData,
    *,
    seed: int,
    phone_config: PhoneProbeConfig = PhoneProbeConfig(),
    speaker_config: SpeakerProbeConfig = SpeakerProbeConfig(),
    per_layer: bool = False,
    on_event: OnEvent = ignore_event,
) -> dict[str, Any]:
    """{"pr": PhoneProbeResult dict, "sid": SpeakerProbeResult dict} for the tasks `data` can run, and with
    `per_layer` (and SID) "sid_per_layer": a LayerSpeakerResult dict, the accuracy of each layer alone."""
    results: dict[str, Any] = {}
    if "pr" in data.tasks:
        results["pr"] = train_phone_probe(
            features,
            data.phone_pairs(data.train),
            data.phone_pairs(data.test),
            config=phone_config,
            seed=seed,
            progress=_Progress(on_event, f"pr {features.name} seed {seed}").epochs,
        ).to_dict()
    if "sid" in data.tasks:
        results["sid"] = train_speaker_probe(
            features,
            data.speaker_pairs(data.train),
            data.speaker_pairs(data.test),
            config=speaker_config,
            seed=seed,
            progress=_Progress(on_event, f"sid {features.name} seed {seed}").epochs,
        ).to_dict()
        if per_layer:
            results["sid_per_layer"] = train_speaker_probes_per_layer(
                features,
                data.speaker_pairs(data.train),
                data.speaker_pairs(data.test),
                config=speaker_config,
                seed=seed,
                progress=_Progress(on_event, f"sid per layer {features.name} seed {seed}").epochs,
            ).to_dict()
    return results


def describe_model(
    model: RepresentationModel,
    *,
    measure_speed: bool = True,
    rtf_seconds: float = 10.0,
    rtf_runs: int = 5,
) -> dict[str, Any]:
    """Parameters, MACs per second of audio, and CPU (and CUDA, when present) real-time factors."""
    macs = count_macs(model)
    facts: dict[str, Any] = {
        "params": count_parameters(model),
        "macs_per_second": macs.macs_per_second,
        "macs_by_kind": macs.by_kind,
        "speed": {},
    }
    if measure_speed:
        facts["speed"]["cpu"] = real_time_factor(
            model, device="cpu", seconds=rtf_seconds, runs=rtf_runs
        ).to_dict()
        if torch.cuda.is_available():
            facts["speed"]["cuda"] = real_time_factor(
                model, device="cuda", seconds=rtf_seconds, runs=rtf_runs
            ).to_dict()
    return facts


def clusters_from_export(path: Path | str) -> list[list[int]] | None:
    """The clusters a student was distilled with, from its `report.json` (None when absent or unreadable)."""
    report = Path(path) / "report.json"
    try:
        clusters = json.loads(report.read_text()).get("clusters")
    except (OSError, ValueError, AttributeError):
        return None
    if (
        isinstance(clusters, list)
        and clusters
        and all(isinstance(c, list) and c and all(isinstance(i, int) for i in c) for c in clusters)
    ):
        return clusters
    return None


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def evaluate(
    model_path_or_module: Path | str | RepresentationModel,
    dataset: Path | str,
    *,
    tasks: Sequence[str] = TASKS,
    phone_field: str = "arpabet",
    train_split: str = "train",
    test_split: str = "test",
    seed: int = 0,
    out_dir: Path | str | None = None,
    include_fbank: bool = False,
    name: str | None = None,
    teacher: Path | str | RepresentationModel | None = None,
    clusters: Sequence[Sequence[int]] | None = None,
    device: str = "auto",
    measure_speed: bool = True,
    phone_config: PhoneProbeConfig = PhoneProbeConfig(),
    speaker_config: SpeakerProbeConfig = SpeakerProbeConfig(),
    per_layer: bool = False,
    finetune: Sequence[str] = (),
    finetune_config: FinetuneConfig = FinetuneConfig(),
    label_field: str | None = None,
    on_event: OnEvent | None = None,
) -> dict[str, Any]:
    """Probe a model on `dataset` (manifest.jsonl with split, phones, speaker); returns the JSON-ready report.

    With `per_layer`, also the speaker accuracy of each representation alone (`sid_per_layer` of each model).
    With `teacher`, also reports linear CKA between the teacher's and the model's cluster-mean representations
    on the test split (`clusters` default: those in the model's `report.json`, else one per representation).
    With `finetune` ("ctc", "speaker"), also the model fine-tuned per task (core.evaluation.finetune) in its
    entry's `finetune`; the labels it needs are checked first. A model with a task head (a fine-tuned teacher,
    a student that kept its head) is also scored on its task as it is (core.evaluation.task: PER of its CTC
    head, accuracy of its classifier against `label_field`) in its entry's `task`. With `out_dir`, writes
    `evaluation.json` and `evaluation.md` there.
    """
    emit = on_event or ignore_event
    run_device = select_device(device)

    # 1. Labels
    data = _labels(Path(dataset), tasks, finetune, phone_field, train_split, test_split)
    # 2. Model
    model, model_name, source = load_representation_model(model_path_or_module, name)
    if finetune:
        require_model(model)

    # 3-5. Features, probes, facts
    entries = []
    features = extract(model, data, name=model_name, device=run_device, on_event=emit)
    probe_args = (data, seed, phone_config, speaker_config, emit, measure_speed, per_layer)
    entry = _entry(model, features, source, *probe_args)
    notes = list(data.notes)
    if teacher is not None:
        if clusters is None and isinstance(model_path_or_module, (str, Path)):
            clusters = clusters_from_export(model_path_or_module)
        entry["cka"] = _teacher_cka(teacher, features, clusters, data, run_device, emit, notes)
    entries.append(entry)
    del features
    if isinstance(model_path_or_module, (str, Path)):  # a model with a task head: the task itself
        from core.evaluation.task import load_task_model, task_scores

        task_model = load_task_model(model_path_or_module)
        if task_model is not None:
            entry["task"] = task_scores(task_model, data, device=run_device, label_field=label_field)
    if finetune:  # 6. Fine-tuning: the whole model, per task, on the same splits
        entry["finetune"] = _finetuned(
            model, data, finetune, finetune_config, seed, run_device, model_name, emit
        )
    if include_fbank:
        fbank = Fbank()
        fbank_features = extract(fbank, data, name="fbank", device=torch.device("cpu"), on_event=emit)
        entries.append(_entry(fbank, fbank_features, "fbank", *probe_args))

    result = {
        "format": FORMAT,
        "dataset": dict(path=str(dataset), train_split=train_split, test_split=test_split) | data.summary(),
        "tasks": list(data.tasks),
        "requested_tasks": list(tasks),
        "phone_field": phone_field if "pr" in data.tasks or "ctc" in finetune else None,
        "seed": seed,
        "probes": {"pr": asdict(phone_config), "sid": asdict(speaker_config)},
        "finetune": asdict(finetune_config) | {"tasks": list(finetune)} if finetune else None,
        "models": entries,
        "notes": notes,
        "environment": environment(),
    }
    # 7. Report
    if out_dir is not None:
        write_evaluation(result, Path(out_dir))
    return result


def _labels(
    dataset: Path,
    tasks: Sequence[str],
    finetune: Sequence[str],
    phone_field: str,
    train_split: str,
    test_split: str,
) -> ProbeData:
    """The labels of the probes' `tasks` and of the fine-tuning tasks (phones for ctc, speakers for speaker),
    checked; the returned data's `tasks` are the probes' only."""
    unknown = [task for task in finetune if task not in FINETUNE_TASKS]
    if unknown:
        raise ValueError(f"fine-tuning tasks must be among {FINETUNE_TASKS}, found {list(finetune)}")
    needed = {"ctc": "pr", "speaker": "sid"}
    data = load_probe_data(
        dataset,
        tasks=tuple(dict.fromkeys([*tasks, *(needed[task] for task in finetune)])),
        phone_field=phone_field,
        train_split=train_split,
        test_split=test_split,
    )
    for task in finetune:
        require_labels(data, task)
    return replace(data, tasks=tuple(task for task in data.tasks if task in tasks))


def _finetuned(
    model: RepresentationModel,
    data: ProbeData,
    tasks: Sequence[str],
    config: FinetuneConfig,
    seed: int,
    device: torch.device,
    name: str,
    emit: OnEvent,
) -> dict[str, Any]:
    """{task: FinetuneResult dict} of each fine-tuning task, in order."""
    return {
        task: run_finetune(
            model, data, task, config=config, seed=seed, device=device, name=name, on_event=emit
        ).to_dict()
        for task in tasks
    }


def _teacher_cka(
    teacher: Path | str | RepresentationModel,
    features: Any,
    clusters: Sequence[Sequence[int]] | None,
    data: Any,
    device: torch.device,
    emit: OnEvent,
    notes: list[str],
) -> dict[str, Any]:
    """Linear CKA between the teacher's and the model's cluster-mean representations on the test split (one
    cluster per representation when none are given; said in `notes`)."""
    teacher_model, teacher_name, _ = load_representation_model(teacher)
    teacher_features = extract(teacher_model, data, name=teacher_name, device=device, on_event=emit)
    if clusters is None:
        clusters = [[i] for i in range(min(features.num_reps, teacher_features.num_reps))]
        notes.append("no clusters given or found in the model's report.json: CKA per representation")
    return {
        "teacher": teacher_name,
        "clusters": [list(c) for c in clusters],
        "values": cluster_cka(teacher_features, features, clusters, [item.id for item in data.test]),
    }


def _entry(
    model: RepresentationModel,
    features: FeatureSet,
    source: str,
    data: ProbeData,
    seed: int,
    phone_config: PhoneProbeConfig,
    speaker_config: SpeakerProbeConfig,
    emit: OnEvent,
    measure_speed: bool,
    per_layer: bool = False,
) -> dict[str, Any]:
    return {
        "name": features.name,
        "source": source,
        "num_representations": features.num_reps,
        "dim": features.dim,
        **describe_model(model, measure_speed=measure_speed),
        **run_probes(
            features,
            data,
            seed=seed,
            phone_config=phone_config,
            speaker_config=speaker_config,
            per_layer=per_layer,
            on_event=emit,
        ),
    }


# ------------------------------------------------------------------------------------------------------------
# Report files


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.2f}"


def format_count(value: float | None) -> str:
    """12_345_678 -> '12.35M'; None -> '—'."""
    if value is None:
        return "—"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def format_rtf(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _rtf(entry: dict[str, Any], device: str) -> str:
    speed = entry.get("speed", {}).get(device)
    return format_rtf(speed["rtf"] if speed else None)


def _duration(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 1.0 else f"{60.0 * hours:.1f} min"


def _weights(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def render_markdown(result: dict[str, Any]) -> str:
    """The human summary of an `evaluate` result."""
    data = result["dataset"]
    lines = [
        f"# Evaluation on `{data['path']}`",
        "",
        f"Probes trained on split `{data['train_split']}` ({data['train_utterances']} utterances, "
        f"{_duration(data['train_hours'])}), scored on `{data['test_split']}` ({data['test_utterances']} "
        "utterances, "
        f"{_duration(data['test_hours'])}); seed {result['seed']}. PR: {result['probes']['pr']['head']} CTC "
        "probe on "
        f"`{result['phone_field']}`, greedy decoding, PER. SID: mean-pooled linear probe, accuracy. Both "
        "read a "
        "softmax-weighted sum of all layer-normalised representations (SUPERB).",
        "",
        "| model | params | PER % ↓ | SID acc % ↑ | MACs / s of audio | CPU RTF | GPU RTF |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in result["models"]:
        per = entry.get("pr", {}).get("per")
        acc = entry.get("sid", {}).get("accuracy")
        lines.append(
            f"| {entry['name']} | {format_count(entry['params'])} | {_percent(per)} | {_percent(acc)} | "
            f"{format_count(entry['macs_per_second'])} | {_rtf(entry, 'cpu')} | {_rtf(entry, 'cuda')} |"
        )
    lines += ["", "Learned layer weights (softmax over r[0..L]):", ""]
    for entry in result["models"]:
        for task in ("pr", "sid"):
            if task in entry:
                lines.append(f"- {entry['name']} {task.upper()}: {_weights(entry[task]['layer_weights'])}")
    layered = [entry for entry in result["models"] if "sid_per_layer" in entry]
    if layered:
        lines += [
            "",
            "SID accuracy % of each representation alone (its own linear probe on that layer's frame mean):",
            "",
            *layer_table([(entry["name"], entry["sid_per_layer"]["accuracy"]) for entry in layered]),
        ]
    lines += finetune_table(result) + task_lines(result)
    for entry in result["models"]:
        if "sid" in entry and entry["sid"]["unseen_test_speakers"]:
            sid = entry["sid"]
            lines.append(
                f"- {entry['name']} SID: {sid['unseen_test_speakers']} test speakers "
                f"({sid['unseen_test_utterances']} utterances) never seen in training, counted as errors"
            )
        if "cka" in entry:
            cka = entry["cka"]
            pairs = ", ".join(f"{c}: {v:.3f}" for c, v in zip(cka["clusters"], cka["values"], strict=True))
            lines.append(f"- {entry['name']} linear CKA to {cka['teacher']} per cluster: {pairs}")
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in result["notes"]]
    env = result["environment"]
    lines += [
        "",
        f"torch {env['torch']}, {env['threads']} CPU threads" + (f", {env['cuda']}" if env["cuda"] else ""),
    ]
    return "\n".join(lines) + "\n"


_FINETUNED = {"ctc": ("PER % ↓", "pr", "per"), "speaker": ("speaker acc % ↑", "sid", "accuracy")}


def task_lines(result: dict[str, Any]) -> list[str]:
    """The task of each model with a task head, scored with its own head (core.evaluation.task)."""
    lines = []
    for entry in result["models"]:
        task = entry.get("task")
        if not task:
            continue
        if "per" in task:
            figure = f"PER {_percent(task['per'])}% over {task['utterances']} test utterances (greedy CTC)"
        elif "accuracy" in task:
            figure = (
                f"accuracy {_percent(task['accuracy'])}% over {task['utterances']} test utterances "
                f"(labels: `{task['label_field']}`; {task['unscored_utterances']} with other labels unscored)"
            )
        elif "eer" in task:
            figure = (
                f"EER {_percent(task['eer'])}% over {task['trials']} trials of {task['utterances']} test "
                f"utterances, {task['speakers']} speakers (cosine of x-vectors)"
            )
        else:
            figure = task.get("note", "not scored")
        lines.append(f"- {entry['name']}, its own head ({task['head']}): {figure}")
    return ["", "The task, with the model's own head:", "", *lines] if lines else []


def finetune_table(result: dict[str, Any]) -> list[str]:
    """Markdown lines: each fine-tuning run of each model beside its frozen probe's figure (no run: none)."""
    runs = [(entry, run) for entry in result["models"] for run in entry.get("finetune", {}).values()]
    if not runs:
        return []
    settings = result["finetune"]
    lines = [
        "",
        f"Fine-tuned: the whole model with a new head (transformers Trainer, {settings['steps']} steps of "
        f"{settings['batch_size']} utterances, conv feature encoder frozen, SpecAugment "
        f"{settings['mask_time_prob']}; docs/evaluation.md), beside the frozen probe on the same splits:",
        "",
        "| model | task | frozen probe | fine-tuned | steps (epochs) | train time | train loss first → last "
        "|",
        "|---|---|---|---|---|---|---|",
    ]
    for entry, run in runs:
        label, probe, key = _FINETUNED[run["task"]]
        frozen = entry.get(probe, {}).get(key)
        lines.append(
            f"| {entry['name']} | {run['task']}: {label} | {_percent(frozen)} | "
            f"{_percent(run[run['metric']])} | "
            f"{run['steps']} ({run['epochs']:.1f}) | {run['train_seconds'] / 60:.1f} min | "
            f"{run['first_train_loss']:.3g} → {run['final_train_loss']:.3g} |"
        )
    return lines


def layer_table(rows: Sequence[tuple[str, Sequence[float]]]) -> list[str]:
    """Markdown lines: one row per (name, accuracy per representation), columns r0..rL (the widest row's
    count; a model with fewer representations leaves its last cells empty), the best cell of each row bold."""
    width = max(len(values) for _, values in rows)
    lines = ["| model | " + " | ".join(f"r{i}" for i in range(width)) + " |", "|---" * (width + 1) + "|"]
    for name, values in rows:
        best = max(range(len(values)), key=lambda i: values[i])
        cells = [(f"**{_percent(v)}**" if i == best else _percent(v)) for i, v in enumerate(values)]
        lines.append(f"| {name} | " + " | ".join(cells + [""] * (width - len(values))) + " |")
    return lines


def write_evaluation(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "evaluation.md").write_text(render_markdown(result))


__all__ = [
    "default_name",
    "describe_model",
    "evaluate",
    "extract",
    "format_count",
    "finetune_table",
    "format_rtf",
    "layer_table",
    "load_representation_model",
    "render_markdown",
    "run_probes",
    "write_evaluation",
]
