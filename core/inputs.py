"""What a run checks and loads before its first stage, and what every stage then reads.

`prepare_inputs` is the one validation of a job's inputs: `core.pipeline.run` and the dry run
(`core.estimate`) both call it, so a dry run refuses exactly what a real run would refuse, with the same
errors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core import timing
from core.data import AudioCatalog, scan_audio
from core.errors import AudioError, SpecError, TeacherError
from core.events import Event, OnEvent, ShouldStop, ignore_event, never_stop
from core.models import SpeechEncoder, load_model, make_student
from core.models.heads import (
    LABEL_FIELDS,
    TRANSCRIPT_FIELDS,
    TaskHead,
    head_spec_from_config,
    item_label,
    label_field_for,
    load_task_head,
    read_vocabulary,
    transcript_ids,
)
from core.models.latency import CostModel
from core.rules import check_against_teacher
from core.spec import DEFAULT_TASK_SUPERVISED_WEIGHT, Budget, CompressionSpec


def select_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; a CUDA device asked for on a machine without one is a
    SpecError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            f"device {name!r} was asked for but CUDA is not available on this machine", field="device"
        )
    return device


def check_speed_target(spec: CompressionSpec) -> None:
    """A latency budget on the `cuda` target needs a CUDA GPU where the job runs (its cost model is fitted and
    its student landed by timing there): a SpecError on a machine without one."""
    if spec.target_speedup is not None and spec.speed_target == "cuda" and timing.gpu_name() is None:
        raise SpecError(
            "speed_target 'cuda' times the teacher and the student on a CUDA GPU, and this machine has none: "
            "run the job where one is, or choose cpu, onnx-fp32 or onnx-int8",
            field="speed_target",
        )


@dataclass
class JobInputs:
    """Everything a run checks and loads before its first stage (`prepare_inputs`)."""

    device: torch.device
    teacher: SpeechEncoder
    teacher_params: int
    target_sparsity: float | None  # of parameters; None when only a MACs target is given
    teacher_macs: float  # per audio second, for an utterance of spec.macs_reference_seconds
    budgets: list[Budget]  # stage 1's size constraints, resolved against the teacher
    catalog: AudioCatalog
    cal_catalog: AudioCatalog
    head: TaskHead | None = None  # the teacher's task head the student keeps (`task_head`)
    # utterance id -> label index (a classifier) or token ids (a CTC head), for the supervised term
    labels: dict[str, Any] | None = None
    head_dropped: str | None = None  # the teacher's head the spec dropped (`drop_head`), described
    cost_model: CostModel | None = None  # target_speedup: fitted in the calibrate stage (`use_cost_model`)

    def use_cost_model(self, spec: CompressionSpec, cost_model: CostModel) -> None:
        """Resolve the latency budget (target_speedup) with the teacher's latency predicted by `cost_model`,
        fitted by the calibrate stage; a target below the smallest student's predicted latency (the cost
        model's fixed part, which no pruning removes) is a SpecError."""
        teacher_latency = cost_model.predict_seconds(self.teacher)
        self.cost_model = cost_model
        self.budgets = spec.budgets(self.teacher_params, self.teacher_macs, teacher_latency)
        check_latency_reachable(spec, cost_model, self.teacher, teacher_latency)

    def head_facts(self, spec: CompressionSpec) -> dict[str, Any] | None:
        """What becomes of the teacher's task head (the report, the dry run): kept (and distilled with which
        weight and temperature), dropped (`drop_head`, described), or None when the teacher has none."""
        return _head_facts(
            self.head, self.head_dropped, spec, supervised_weight(spec, self.head, bool(self.labels))
        )

    def teacher_facts(self, teacher_dir: Path) -> dict[str, Any]:
        """What the report and the dry run say of the teacher: named by its folder's name and the sha256 of
        its files, never by its path (a report is published with the student; on the service the path is
        the server's storage)."""
        config = self.teacher.config
        return {
            "name": Path(teacher_dir).resolve().name,
            "sha256": teacher_sha256(teacher_dir),
            "architecture": config.architecture,
            "layout": "large" if config.layer_norm_first else "base",
            "num_layers": config.num_layers,
            "num_params": self.teacher_params,
            "macs_per_second": self.teacher_macs,
        }


def task_head(teacher_dir: Path | str, spec: CompressionSpec) -> TaskHead | None:
    """The teacher's task head that the student keeps: None without one, or when the spec drops it
    (`drop_head`); a head the engine cannot keep is a TeacherError, a weighted head with layer pruning a
    SpecError, and so is the supervised term without an utterance classifier to train."""
    head = None if spec.drop_head else load_task_head(teacher_dir)
    if head is not None and head.spec.weighted and spec.prune_layers:
        raise SpecError(
            f"prune_layers: the teacher's head ({head.spec.describe()}) weighs every layer's output; layer "
            "pruning would change what it reads. Run without prune_layers, or with drop_head",
            field="prune_layers",
        )
    if spec.task_supervised_weight:  # asked for; by default (None) the term is on when the audio allows it
        field_name = "task_supervised_weight"
        if head is None:
            raise SpecError(
                "task_supervised_weight: the student keeps no task head (the teacher has none, or drop_head)",
                field=field_name,
            )
        if head.spec.task not in SUPERVISED_TASKS:
            raise SpecError(
                "task_supervised_weight: only an utterance classifier's labels or a CTC head's transcripts "
                f"can train the student here, not a {head.spec.describe()}'s",
                field=field_name,
            )
    return head


# A CTC head's supervised term trains on whole utterances, one per step: longer ones are left out of it.
MAX_TRANSCRIBED_SECONDS = 16.0
# The heads a supervised term can train: an utterance classifier on labels, a CTC head on transcripts.
SUPERVISED_TASKS = ("sequence", "ctc")
# The heads whose supervised term is on by default when the audio has labels for it: measured for CTC heads
# (bench/results/task_students.md); a classifier's term is asked for (its gain was not measured apart).
SUPERVISED_BY_DEFAULT = ("ctc",)


def supervised_weight(spec: CompressionSpec, head: TaskHead | None, labelled: bool) -> float:
    """The weight of the supervised term a run uses: the spec's `task_supervised_weight`; left to the audio
    (None), DEFAULT_TASK_SUPERVISED_WEIGHT for a CTC head (SUPERVISED_BY_DEFAULT) whose training audio has
    transcripts it can use (`labelled`), else 0."""
    if head is None:
        return 0.0
    if spec.task_supervised_weight is not None:
        return spec.task_supervised_weight
    return DEFAULT_TASK_SUPERVISED_WEIGHT if labelled and head.spec.task in SUPERVISED_BY_DEFAULT else 0.0


def task_labels(
    head: TaskHead | None, catalog: AudioCatalog, spec: CompressionSpec, teacher_dir: Path | str
) -> dict[str, Any] | None:
    """The labels of the supervised term (`task_supervised_weight` > 0), None when the term is off: for an
    utterance classifier, training utterance id -> the index of its label among the head's, from the manifest
    field that names them; for a CTC head, utterance id -> its transcript as the head's token ids
    (`transcript_ids` through the teacher's vocab.json), for the utterances of at most
    MAX_TRANSCRIBED_SECONDS whose transcript the vocabulary spells. Left to the audio (None), the term is
    on for a CTC head with transcripts it can use, else off (None), where a weight asked for is an error."""
    if spec.task_supervised_weight == 0:
        return None
    if spec.task_supervised_weight is None:
        if head is None or head.spec.task not in SUPERVISED_BY_DEFAULT:
            return None
        try:
            return _labels(head, catalog, spec, teacher_dir)
        except (AudioError, SpecError):
            return None
    assert head is not None  # task_head refused the supervised term without a head it can train
    return _labels(head, catalog, spec, teacher_dir)


def _labels(
    head: TaskHead, catalog: AudioCatalog, spec: CompressionSpec, teacher_dir: Path | str
) -> dict[str, Any]:
    if head.spec.task == "ctc":
        return _transcripts(catalog, spec, teacher_dir)
    index = {str(name): int(i) for i, name in head.spec.config["id2label"].items()}
    field = label_field_for(catalog.items, set(index), spec.task_label_field)
    labelled: dict[str, int] = {}
    for item in catalog.items:
        label = item_label(item, field) if field is not None else None
        if label is not None and label in index:
            labelled[item.id] = index[label]
    if not labelled:
        where = f"field {field!r}" if spec.task_label_field else "fields label, emotion and speaker"
        raise AudioError(
            "task_supervised_weight needs training utterances labelled with the classifier's labels "
            f"({', '.join(sorted(index)[:5])}{', ...' if len(index) > 5 else ''}) in the manifest; its "
            f"{where} hold none of them"
        )
    return labelled


def _transcripts(
    catalog: AudioCatalog, spec: CompressionSpec, teacher_dir: Path | str
) -> dict[str, list[int]]:
    vocab = read_vocabulary(teacher_dir)
    if vocab is None:
        raise SpecError(
            "task_supervised_weight: the CTC teacher has no tokenizer (vocab.json) to turn the manifest's "
            "transcripts into its tokens; add the processor's files to the teacher's folder",
            field="task_supervised_weight",
        )
    fields = [spec.task_label_field] if spec.task_label_field else list(TRANSCRIPT_FIELDS)
    best: dict[str, list[int]] = {}
    unspelled = 0
    for name in fields:
        found: dict[str, list[int]] = {}
        missed = 0
        for item in catalog.items:
            value = item.extra.get(name)
            if not isinstance(value, str) or item.duration_s > MAX_TRANSCRIBED_SECONDS:
                continue
            ids = transcript_ids(value, vocab)
            if ids is None:
                missed += 1
            else:
                found[item.id] = ids
        if len(found) > len(best):
            best = found
        unspelled = max(unspelled, missed)
    if not best:
        where = f"field {spec.task_label_field!r}" if spec.task_label_field else "fields " + ", ".join(fields)
        lacking = f" ({unspelled} transcripts use tokens the vocabulary lacks)" if unspelled else ""
        raise AudioError(
            f"task_supervised_weight needs training utterances of at most {MAX_TRANSCRIBED_SECONDS:g} s "
            f"whose transcript (manifest {where}) the CTC head's vocabulary ({len(vocab)} tokens) spells; "
            f"this audio has none{lacking}"
        )
    return best


def check_label_values(
    head: TaskHead, label_values: dict[str, list[str] | None], spec: CompressionSpec
) -> None:
    """A SpecError when no manifest field the supervised term would read (`task_label_field`, else label,
    emotion, speaker) holds any of the classifier's labels, by the dataset's listed values; a field too varied
    to be listed (None) may hold them, and passes (the run checks the utterances themselves). For a CTC head,
    a SpecError when the dataset has no transcript field (`task_label_field`, else arpabet, phones, text)."""
    if head.spec.task == "ctc":
        fields = [spec.task_label_field] if spec.task_label_field else list(TRANSCRIPT_FIELDS)
        if any(name in label_values for name in fields):
            return
        field = "task_label_field" if spec.task_label_field else "task_supervised_weight"
        raise SpecError(
            f"{field}: the supervised term trains the CTC head on transcripts, and the dataset's manifest "
            f"has no field {' / '.join(repr(f) for f in fields)}",
            field=field,
        )
    labels = {str(name) for name in head.spec.config["id2label"].values()}
    fields = [spec.task_label_field] if spec.task_label_field else list(LABEL_FIELDS)
    for name in fields:
        values = label_values.get(name, [])
        if values is None or labels.intersection(values):
            return
    shown = ", ".join(sorted(labels)[:5]) + (", ..." if len(labels) > 5 else "")
    if spec.task_label_field:
        field, where = "task_label_field", f"its field {spec.task_label_field!r} holds"
    else:
        field, where = "task_supervised_weight", "its fields label, emotion and speaker hold"
    raise SpecError(
        f"{field}: the supervised term needs training utterances labelled with the classifier's labels "
        f"({shown}); {where} none of them in the dataset's manifest",
        field=field,
    )


def dropped_head(teacher_dir: Path | str) -> str | None:
    """What `drop_head` drops: the teacher's head described, or None when it has none."""
    try:
        config = json.loads((Path(teacher_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # the teacher's own check says what is wrong with it
    architectures = config.get("architectures") or []
    try:
        spec = head_spec_from_config(config)
    except TeacherError:  # a head the engine cannot keep: dropping it is what the user asked for
        return f"{architectures[0]} (its head)"
    return spec.describe() if spec is not None else None


def head_facts(
    teacher_dir: Path | str, spec: CompressionSpec, label_values: dict[str, list[str] | None] | None = None
) -> dict[str, Any] | None:
    """`JobInputs.head_facts` from the teacher's directory alone (the service's check at job creation): the
    same refusals as a run's (`task_head`), the head's weights read without the encoder's; with the dataset's
    `label_values` (AudioCatalog.label_values), also the refusal of a supervised term whose labels the dataset
    does not hold (`task_labels`'s, before any audio is read)."""
    head = task_head(teacher_dir, spec)
    labelled = False
    if head is not None and label_values is not None and spec.task_supervised_weight != 0:
        try:
            check_label_values(head, label_values, spec)
            labelled = True
        except SpecError:
            if spec.task_supervised_weight is not None:  # asked for, and the dataset cannot serve it
                raise
    dropped = dropped_head(teacher_dir) if spec.drop_head else None
    return _head_facts(head, dropped, spec, supervised_weight(spec, head, labelled))


def _head_facts(
    head: TaskHead | None, dropped: str | None, spec: CompressionSpec, supervised: float
) -> dict[str, Any] | None:
    if head is not None:
        return {
            "kept": True,
            "task": head.spec.task,
            "teacher_class": head.spec.teacher_class,
            "description": head.spec.describe(),
            "weight": spec.task_weight,
            "temperature": spec.task_temperature,
            "input_weight": spec.task_input_weight,
            "supervised_weight": supervised,
            "supervised_by_default": spec.task_supervised_weight is None and supervised > 0,
        }
    if dropped is not None:
        return {"kept": False, "dropped": dropped}
    return None


TEACHER_FILES = ("config.json", "preprocessor_config.json", "*.safetensors", "*.bin")


def teacher_sha256(directory: Path | str) -> str:
    """sha256 over a teacher's config and weight files (each file's name and bytes, in name order): the same
    teacher gives the same digest wherever it lies."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in TEACHER_FILES for p in Path(directory).glob(pattern) if p.is_file()})
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def prepare_inputs(
    spec: CompressionSpec,
    teacher: Path,
    audio: Path,
    *,
    calibration_audio: Path | str | None = None,
    emit: OnEvent = ignore_event,
) -> JobInputs:
    """Check the device, load the teacher, resolve the target, scan the audio and check the spec against
    them."""
    device = select_device(spec.device)
    check_speed_target(spec)
    teacher_model = load_model(teacher).to(device)
    teacher_params = teacher_model.num_params()
    with torch.no_grad():
        teacher_macs = float(teacher_model.expected_macs(spec.macs_reference_seconds))
    check_against_teacher(
        spec, num_layers=teacher_model.num_layers, num_params=teacher_params, macs=teacher_macs
    )
    head = task_head(teacher, spec)
    target_sparsity = spec.target_sparsity(teacher_params)
    budgets = spec.budgets(teacher_params, teacher_macs)
    catalog = scan_audio(audio)
    if catalog.skipped:
        emit(
            Event(
                "skipped_audio",
                "calibrate",
                metrics=catalog.summary(),
                message=f"{len(catalog.skipped)} audio files skipped",
            )
        )
    cal_catalog = scan_audio(calibration_audio) if calibration_audio else catalog
    if spec.evaluate and not any(item.extra.get("arpabet") for item in catalog.items):
        raise SpecError(
            "evaluate=true needs a dataset manifest with an 'arpabet' phone field and 'split' rows "
            "(train/test); this audio has none. Run without evaluation, or `skillkd evaluate` later",
            field="evaluate",
        )
    labels = task_labels(head, catalog, spec, teacher)
    if labels is not None:
        what = "transcribed" if head is not None and head.spec.task == "ctc" else "labelled"
        emit(
            Event(
                "log",
                "calibrate",
                message=f"the supervised term trains on {len(labels)} {what} utterances of "
                f"{len(catalog.items)}"
                + (
                    " (on by default with labels in the manifest; task_supervised_weight 0 turns it off)"
                    if spec.task_supervised_weight is None
                    else ""
                ),
            )
        )
    return JobInputs(
        device,
        teacher_model,
        teacher_params,
        target_sparsity,
        teacher_macs,
        budgets,
        catalog,
        cal_catalog,
        head=head.to(device) if head is not None else None,
        labels=labels,
        head_dropped=dropped_head(teacher) if spec.drop_head else None,
    )


def check_latency_reachable(
    spec: CompressionSpec, cost_model: CostModel, teacher: SpeechEncoder, teacher_latency: float
) -> None:
    """A SpecError when `target_speedup` asks for less time than the smallest student of the teacher's layout
    (one channel per conv layer, no attention head or FFN unit) is predicted to take."""
    if spec.target_speedup is None:
        return
    smallest = make_student(teacher, layers=False)
    smallest.eval()
    for hc in smallest.hard_concretes():
        hc.keep_override = torch.zeros(hc.n, dtype=torch.bool, device=hc.log_alpha.device)
    floor = cost_model.predict_seconds(smallest)
    if teacher_latency / spec.target_speedup < floor:
        raise SpecError(
            f"target_speedup: {spec.target_speedup:g}x is beyond the smallest student of this teacher on "
            f"{cost_model.target} ({cost_model.threads} thread(s)): one channel per conv layer and no "
            f"attention head or FFN unit left is predicted to take {floor:.4g} s for a "
            f"{cost_model.seconds:g} s utterance, "
            f"only {teacher_latency / floor:.3g}x faster than the teacher's {teacher_latency:.4g} s",
            field="target_speedup",
        )


@dataclass
class Job:
    """One run as its stages see it: the spec, the paths it was given, the checked inputs, where to report
    progress (`emit`) and whether to stop (`should_stop`, polled between batches and stages)."""

    spec: CompressionSpec
    teacher_dir: Path
    audio: Path
    workdir: Path
    inputs: JobInputs
    emit: OnEvent = ignore_event
    should_stop: ShouldStop = never_stop
    batches_per_step: int = 1  # the run's global batch (`Workdir.claim`): spec.gpus x the accumulation

    @property
    def accumulation(self) -> int:
        """Batches each process adds up per optimiser step."""
        return self.batches_per_step // self.spec.gpus

    @property
    def teacher(self) -> SpeechEncoder:
        return self.inputs.teacher

    @property
    def device(self) -> torch.device:
        return self.inputs.device


__all__ = [
    "Job",
    "JobInputs",
    "TEACHER_FILES",
    "dropped_head",
    "head_facts",
    "prepare_inputs",
    "select_device",
    "task_head",
    "task_labels",
    "supervised_weight",
    "check_label_values",
    "check_latency_reachable",
    "teacher_sha256",
]
