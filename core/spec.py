"""The job spec: one type from the request body to the database, the worker, the engine and the CLI.

`CompressionSpec` is what a user asks for. `TrainRecipe` is the fully resolved schedule of one training
stage, derived from the spec's preset plus its explicit overrides (`CompressionSpec.recipe(stage)`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_SPARSITY = 0.75
# Bounds that a worker would otherwise find out (issue 22): torch.manual_seed takes at most 2^64 - 1 and
# stage 2 seeds with seed + 1 (a signed 64-bit bound keeps clear of that, and any int64 reader holds it);
# torch keeps a device index in 8 bits (cuda:128 wraps) and no host has more GPUs than `gpus` allows; a MACs
# reference shorter than one frame of the teacher's front end cannot be counted (1 s: the shortest utterance
# the presets train on, so any teacher that can be trained at all gives it frames).
MAX_SEED = 2**63 - 1
MAX_DEVICE_INDEX = 63
MIN_MACS_REFERENCE_SECONDS = 1.0
# Where a latency budget's cost model can be fitted (`speed_target`): PyTorch fp32 on this machine's CPU, the
# fp32 or int8 (static_conv) ONNX export in onnxruntime on it, or PyTorch fp32 on its CUDA GPU (batch 1).
SPEED_TARGETS = ("cpu", "onnx-fp32", "onnx-int8", "cuda")


def target_words(target: str, threads: int) -> str:
    """A speed target as messages name it: "cpu (1 thread)", "onnx-int8 (4 threads)", "cuda" (the host's
    threads are not what a GPU's time depends on)."""
    if target == "cuda":
        return "cuda"
    return f"{target} ({threads} thread{'s' if threads != 1 else ''})"


Method = Literal["skill", "dphubert"]
Preset = Literal["quick", "paper"]


@dataclass(frozen=True)
class Budget:
    """One size constraint: remove `sparsity` of the teacher's `kind` ("params", "macs" per audio second, or
    "latency": the cost model's predicted seconds of one forward pass over the reference utterance)."""

    kind: Literal["params", "macs", "latency"]
    teacher: float
    sparsity: float

    @property
    def target(self) -> float:
        return self.teacher * (1.0 - self.sparsity)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "teacher": self.teacher, "sparsity": self.sparsity, "target": self.target}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Budget:
        return cls(data["kind"], float(data["teacher"]), float(data["sparsity"]))


class TrainRecipe(BaseModel):
    """Resolved hyper-parameters of one training stage (all step counts are optimiser steps)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(gt=0)
    warmup_steps: int = Field(ge=0)
    lr: float = Field(gt=0, description="weights and projections")
    lr_masks: float = Field(ge=0, description="Hard Concrete log_alpha (stage 1 only)")
    lr_lambda: float = Field(ge=0, description="Lagrange multipliers, gradient ascent (stage 1 only)")
    sparsity_warmup_steps: int = Field(ge=0, description="target sparsity ramps 0 -> final over these steps")
    batch_seconds: float = Field(gt=0, description="audio seconds per optimiser step (per GPU)")
    min_utterance_s: float = Field(gt=0)
    max_utterance_s: float = Field(gt=0)
    grad_clip: float = Field(gt=0)
    checkpoint_every: int = Field(gt=0)
    speed_perturbation: float = Field(
        default=0.0, ge=0.0, lt=0.5, description="training audio played at a random speed in 1 ± this"
    )
    mask_betas: tuple[float, float] = Field(
        default=(0.9, 0.999), description="Adam betas of log_alpha (quick runs need a short memory)"
    )
    lambda_constant_lr: bool = Field(
        default=False, description="keep the multipliers' lr constant instead of following the schedule"
    )
    lambda_betas: tuple[float, float] = Field(
        default=(0.9, 0.999),
        description="Adam betas of the multipliers' ascent (quick runs need a short memory)",
    )


# Paper recipe (DPHuBERT, algorithm.md §3 and §5): 50k + 25k steps, 160 s of audio per GPU per step.
_PAPER: dict[int, dict[str, Any]] = {
    1: dict(
        steps=50_000,
        warmup_steps=15_000,
        lr=2e-4,
        lr_masks=0.02,
        lr_lambda=0.02,
        sparsity_warmup_steps=5_000,
        batch_seconds=160.0,
        min_utterance_s=2.0,
        max_utterance_s=15.6,
        grad_clip=10.0,
        checkpoint_every=1_000,
    ),
    2: dict(
        steps=25_000,
        warmup_steps=5_000,
        lr=1e-4,
        lr_masks=0.0,
        lr_lambda=0.0,
        sparsity_warmup_steps=0,
        batch_seconds=160.0,
        min_utterance_s=2.0,
        max_utterance_s=15.6,
        grad_clip=10.0,
        checkpoint_every=1_000,
    ),
}
# Quick recipe: finishes on a 2-core CPU for an 11M-parameter teacher in minutes. Same shape of schedule,
# scaled down. In a few hundred steps the paper's Adam settings let the multipliers wind up and then drive
# masks deep into the Hard Concrete's flat tail, where they never come back (measured: 0.83 sparsity for a
# 0.75 target on a tiny teacher). Short Adam memories for log_alpha and the multipliers make both follow the
# sparsity ramp closely instead (0.744-0.757 over the last 90 of 200 steps in the same test), so the quick
# preset uses them. On hubert-mini the multipliers still wound up where the heads resist pruning, and with
# their lr decaying with the schedule they unwound too slowly (0.79 for 0.75): the quick preset keeps their
# lr constant so lambda1 can return to zero before the end.
_QUICK: dict[int, dict[str, Any]] = {
    1: dict(
        steps=200,
        warmup_steps=20,
        lr=5e-4,
        lr_masks=0.2,
        lr_lambda=0.5,
        sparsity_warmup_steps=100,
        batch_seconds=6.0,
        min_utterance_s=1.0,
        max_utterance_s=3.0,
        grad_clip=10.0,
        checkpoint_every=25,
        mask_betas=(0.5, 0.9),
        lambda_betas=(0.0, 0.9),
        lambda_constant_lr=True,
        speed_perturbation=0.2,
    ),
    2: dict(
        steps=960,
        warmup_steps=96,
        lr=3e-4,
        lr_masks=0.0,
        lr_lambda=0.0,
        sparsity_warmup_steps=0,
        batch_seconds=6.0,
        min_utterance_s=1.0,
        max_utterance_s=3.0,
        grad_clip=10.0,
        checkpoint_every=25,
        speed_perturbation=0.2,
    ),
}
# Stage 2 was 80 steps until 2026-12-02. On speakers no compression heard (issue 13, bench/results/
# heldout_speakers.md), 75% sparsity, 3 seeds paired: 240 steps lowered PER in all 12 pairs of both mini
# teachers and both methods (SKILL -0.82 / -0.51, DPHuBERT -0.82 / -0.65 points) and kept speaker ID (SKILL
# +1.22 / +0.00, DPHuBERT -0.95 / +1.49, within the seeds' spread), for 2-4 more minutes per run on a 2-core
# CPU. Since the same day both stages hear the training audio at a random speed in 1 +- 0.2 (new virtual
# voices) and stage 2 has 480 steps. Same evaluation, paired with the 240-step preset, SKILL: PER -0.44 /
# -0.15, speaker ID +1.90 / +2.71 (hubert-mini / wavlm-mini); DPHuBERT: PER -0.49 / -0.34, speaker ID +0.27 /
# +3.12. 0.3 gained more speaker ID but cost wavlm-mini's PER (+0.24). The paper preset keeps the published
# recipe (no perturbation). Stage 2 has 960 steps since 2026-12-07 (issue 25): on the 4x latency students
# of both mini teachers (`--target-speedup 4`, 3 seeds, one stage 1 and finalize per seed, probes on tts-dev),
# 960 steps against 480 lowered PER by 0.85 (hubert-mini: -1.58, -1.05, +0.09) and 0.75 (wavlm-mini: -0.69,
# -0.98, -0.57) paired by seed, speaker ID -1.20 / +1.68 (bench/results/budgets/README.md, "Stage 2 twice as
# long"; stage 2 took 539-575 s against 217-239 s, two jobs side by side with one thread each): the
# smallest students were still learning at 480.
# An int8-aware stage 2 runs twice the preset's steps (INT8_AWARE_STAGE2_FACTOR below): 1920 here.
PRESETS: dict[str, dict[int, dict[str, Any]]] = {"paper": _PAPER, "quick": _QUICK}

_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*$")


def parse_param_count(value: str | int | float, what: str = "a parameter count") -> int:
    """'24M' -> 24_000_000, '950k' -> 950_000, '2.5G' -> 2_500_000_000, 1234 -> 1234."""
    if isinstance(value, (int, float)):
        return int(value)
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"cannot read {what} from {value!r}; expected e.g. 24M, 950k, 2.5G or 23600000")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    return int(round(float(m.group(1)) * scale))


# The supervised term's weight when the spec leaves it to the audio (task_supervised_weight None) and the
# training audio holds labels the kept head can learn from (bench/results/task_students.md).
DEFAULT_TASK_SUPERVISED_WEIGHT = 1.0
# int8-aware stage 2's consistency term, left out: measured on hubert-mini's 4x latency students, 3 seeds
# (bench/results/int8_aware.md): static_conv's min CKA with fp32 0.976-0.979 (within the gate, 0.97) against
# 0.964-0.966 without it (rejected), for +1.02 ± 0.52 PER points of the fp32 student (paired by seed).
DEFAULT_INT8_AWARE_CONSISTENCY = 0.2
# An int8-aware run's stage 2 is this many times its preset's when the spec leaves stage2_steps out: the
# student learns features that survive the rounding besides the teacher's, and in the preset's steps the first
# cost it the second. Measured twice, each time on one stage 1 per seed (wavlm-mini's 4x latency students,
# quick, 3 seeds; bench/results/int8_aware.md): at the then 480-step preset, 960 steps cut the fp32 student's
# PER over the plain stage 2 from +3.09 to +0.48 paired; at the 960-step preset, 1920 steps against 960 on
# the same stage 1s moved it from +1.73 to +1.17 (fp32 PER -1.48, -0.08, -0.12 by seed; SID -1.2), every int8
# file within the gate either way, its probe-PER rise +2.26 to +2.42 against +2.35 to +2.83
# (bench/results/budgets/README.md, "int8-aware stage 2 at twice the preset's steps"); the int8-aware
# students then +1.86 over their teacher, against +2.42 at 960. Stage 2 then takes 3.7 times a plain one on a
# CPU (twice the steps, each 1.9 plain ones with its consistency pass: wavlm-mini's dry run on one thread,
# 0.559 against 0.299 s/step; the whole quick run 22 min against 9).
INT8_AWARE_STAGE2_FACTOR = 2
# A latency budget's stage 2 (target_speedup) runs this many times its preset's steps when the spec leaves
# stage2_steps out: its students are the smallest this product makes (4x on a mini teacher keeps 1.4-1.9M of
# 11M parameters) and still learn at the preset's steps. Measured on held-out speakers
# (bench/heldout_speakers.py's split, quick, 4x, 3 seeds, stage 2 resumed on the same stage 1 and finalize):
# hubert-mini's SKILL students, PER -1.49 ± 0.33 paired with 1920 against 960 (+1.81 against +3.30 over the
# teacher; SID 0.00 ± 2.11), wavlm-mini's -0.49 ± 0.47 (+0.90 against +1.39; SID +0.41), and DPHuBERT's on
# hubert-mini at 1920 +1.15 (bench/results/budgets/README.md: held-out).
# Only where measured: the paper preset (the published 25k-step stage 2, on GPUs) keeps its steps.
LATENCY_STAGE2_FACTORS = {"quick": 2}
# A latency budget's landing on the clock keeps a student that measured this much faster than asked: the same
# files timed again in later quiet tables read 0.84-1.08x of what finalize's timing read (39 readings of 4x
# students over five sessions' tables, bench/results/budgets/README.md: median 0.985, 11 of 39 under 1/1.05)
SPEED_MARGIN = 0.05


class CompressionSpec(BaseModel):
    """What to compress to, and how. Defaults reproduce SKILL at 75% sparsity with the quick preset."""

    model_config = ConfigDict(extra="forbid")

    method: Method = "skill"
    sparsity: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="fraction of the teacher's parameters to remove (default 0.75 unless target_params)",
    )
    target_params: int | None = Field(default=None, gt=0, description="parameter count to reach instead")
    target_macs: int | None = Field(
        default=None,
        gt=0,
        description="multiply-accumulates per second of audio to reach, e.g. 2.5G (alone or "
        "with a parameter target: then both hold)",
    )
    macs_sparsity: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="fraction of the teacher's MACs per audio second to remove"
    )
    macs_reference_seconds: float = Field(
        default=10.0,
        ge=MIN_MACS_REFERENCE_SECONDS,
        le=600.0,
        description="utterance length that MACs are counted for (attention "
        "grows with its square), in seconds (1 to 600)",
    )
    target_speedup: float | None = Field(
        default=None,
        gt=1.0,
        le=1000.0,
        description="make the student this many times faster than the teacher on speed_target, as predicted "
        "by a cost model fitted by timing pruned shapes of the teacher there (alone or with a parameter "
        "target: then both hold; not with a MACs target); with the quick preset its stage 2 runs twice the "
        "preset's steps unless stage2_steps says otherwise (students this small still learn at the preset's)",
    )
    speed_target: str = Field(
        default="cpu",
        description="where target_speedup is measured: cpu (PyTorch fp32 on this machine's CPU), "
        "onnx-fp32 / onnx-int8 (the fp32 ONNX export, or its static_conv int8 file, in onnxruntime on this "
        "CPU), with speed_threads threads; or cuda (PyTorch fp32 on the machine's CUDA GPU, batch 1: the "
        "worker that runs the job needs one)",
    )
    speed_threads: int = Field(
        default=1, ge=1, le=256, description="CPU threads of speed_target's timings (target_speedup)"
    )
    speed_margin: float = Field(
        default=SPEED_MARGIN,
        ge=0.0,
        le=0.5,
        description="finalize keeps the least pruned student that measured at least target_speedup x "
        "(1 + speed_margin) on the clock: a margin for the machine's drift between that timing and a later "
        "one (later quiet timings of the same students read 0.84-1.08x of it on this project's hosts); 0 "
        "keeps the least pruned one that measured the target itself",
    )
    clusters: int | Literal["auto"] | list[list[int]] = Field(
        default=4,
        description="k, 'auto', or explicit layer groups over r[0..L] e.g. [[0],[4],[8],[12]]",
    )
    linkage: Literal["average", "single", "complete", "ward"] = "average"
    contiguous: bool = Field(default=True, description="clusters are runs of adjacent layers")
    student_mapping: Literal["mean", "last"] = Field(
        default="mean",
        description="student side of a cluster target: mean of its layers, or its last layer",
    )
    target_weights: list[float] | None = Field(
        default=None,
        description="relative weight of each cluster target in the loss, in cluster order "
        "(default: equal; scaled to a mean of 1)",
    )
    prune_layers: bool = Field(default=False, description="also learn whole-attention / whole-FFN masks")
    drop_head: bool = Field(
        default=False,
        description="a fine-tuned teacher (*ForCTC, *ForSequenceClassification, ...): compress its encoder "
        "alone and give a student without the task head (the report says it was dropped); off: the student "
        "keeps the teacher's head",
    )
    task_weight: float = Field(
        default=1.0,
        ge=0.0,
        le=100.0,
        description="with a task head: weight of the task distillation term (KL between the teacher's and "
        "the student's softened task outputs) beside the cluster targets; 0 keeps the head as the teacher's",
    )
    task_temperature: float = Field(
        default=1.0, gt=0.0, le=100.0, description="temperature of the task distillation term"
    )
    task_input_weight: float = Field(
        default=1.0,
        ge=0.0,
        le=100.0,
        description="with a task head: weight of a term pulling what the student's head reads (its last "
        "hidden state, or a weighted head's layer sum) to what the teacher's head reads (L1 - cosine, as the "
        "cluster targets; 1 by measurement: a CTC task student's PER 0.6-1.1 points lower on every seed and "
        "teacher tried); 0 turns it off",
    )
    task_supervised_weight: float | None = Field(
        default=None,
        ge=0.0,
        le=100.0,
        description="with an utterance-classifier or CTC head: weight of the supervised term on the labelled "
        "training utterances: a classifier's cross-entropy against the manifest's labels (on the training "
        "crops), a CTC head's CTC loss against the manifest's transcripts tokenized by the teacher's "
        "vocab.json (one whole utterance of at most 16 s per step beside the crops); 0 turns it off "
        "[default: for a CTC head, 1 when the training audio holds transcripts its vocabulary spells, else "
        "off; by measurement (bench/results/task_students.md): CTC task students 4.3 and 6.3 PER points "
        "better (hubert-mini, wavlm-mini, 3 seeds), 2.2 of them the term itself (one seed on the same "
        "audio); for a classifier, off]",
    )
    task_label_field: str | None = Field(
        default=None,
        max_length=64,
        description="the manifest field holding the supervised term's labels [default: a classifier's, the "
        "first of label, emotion, speaker whose values the head knows; a CTC head's transcripts, the first "
        "of arpabet, phones, text that the vocabulary spells]",
    )
    preset: Preset = "quick"
    stage1_steps: int | None = Field(default=None, gt=0)
    stage2_steps: int | None = Field(
        default=None,
        ge=0,
        description="0 skips the final distillation [default: the preset's ("
        + ", ".join(f"{name} {recipe[2]['steps']:,}" for name, recipe in PRESETS.items())
        + f"), {INT8_AWARE_STAGE2_FACTOR}x that with int8_aware; with target_speedup "
        + ", ".join(f"{name} {factor}x" for name, factor in LATENCY_STAGE2_FACTORS.items())
        + "]",
    )
    batch_seconds: float | None = Field(default=None, gt=0)
    speed_perturbation: float | None = Field(
        default=None,
        ge=0.0,
        lt=0.5,
        description="play each training utterance at a random speed in 1 ± this "
        "(tempo and pitch; teacher and student hear the same audio), in both stages unless "
        "stage2_speed_perturbation says otherwise; 0 turns it off [default: the preset's: quick 0.2, paper "
        "0]",
    )
    stage2_speed_perturbation: float | None = Field(
        default=None,
        ge=0.0,
        lt=0.5,
        description="speed perturbation of stage 2 alone (0: the fixed student's "
        "final distillation hears the audio as it is) [default: speed_perturbation]",
    )
    checkpoint_every: int | None = Field(default=None, gt=0)
    calibration_utterances: int = Field(default=200, gt=0)
    calibration_seconds: float = Field(default=1800.0, gt=0)
    seed: int = Field(
        default=0,
        ge=0,
        le=MAX_SEED,
        description="random seed, 0 to 2^63 - 1 (torch's generator holds 64 bits and stage 2 uses seed + 1)",
    )
    device: str = Field(
        default="auto", description=f"auto, cpu, cuda, cuda:N (N from 0 to {MAX_DEVICE_INDEX}) or mps"
    )
    gpus: int = Field(default=1, ge=1, le=64)
    grad_accumulation: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="batches each process adds up before an optimiser step: the global batch is gpus x this "
        "x batch_seconds. A run keeps the global batch it started with: resumed on another number of "
        "processes, it accumulates to match [default: 1 for a new run]",
    )
    compile: bool = Field(
        default=False,
        description="torch.compile teacher and student in training (falls back to eager if compiling fails)",
    )
    data_workers: int | None = Field(
        default=None, ge=0, le=32, description="loader processes per GPU; default 0 on CPU, up to 4 on a GPU"
    )
    export_onnx: list[Literal["fp32", "fp16", "int8"]] = Field(
        default_factory=list,
        description="ONNX variants to export, each verified before it is offered: fp32, "
        "fp16, int8 (a list or 'fp16,int8'; true means fp32, false none)",
    )
    int8_aware: bool = Field(
        default=False,
        description="stage 2 trains the fixed student through the rounding of its int8 export (uint8 "
        "activations at every conv but the first and every linear layer, fake-quantised as onnxruntime "
        "quantises them), and its int8 ONNX export quantises the conv front end too (static_conv): the int8 "
        "file that is faster on a CPU; needs stage 2, which runs twice the preset's steps unless "
        "stage2_steps says otherwise (the fp32 student pays less for the rounding with more steps)",
    )
    int8_aware_consistency: float | None = Field(
        default=None,
        ge=0,
        description="int8-aware stage 2's consistency term: each step also runs the student with every "
        "quantised tensor rounded and pulls its representations to its own fp32 ones (what the int8 gate "
        "compares), with this weight; left out: 0.2 (the int8 file within the gate, for about 1 PER point "
        "of the fp32 student on the measured students); 0 turns it off; needs int8_aware",
    )
    evaluate: bool = False

    @field_validator("export_onnx", mode="before")
    @classmethod
    def _onnx_variants(cls, v: Any) -> Any:
        """Older specs said true/false; a comma-separated string is the CLI's spelling."""
        if v is None or v is False:
            return []
        if v is True:
            return ["fp32"]
        if isinstance(v, str):
            v = [part.strip().lower() for part in v.split(",") if part.strip()]
        if isinstance(v, (list, tuple)):
            v = [part.lower() if isinstance(part, str) else part for part in v]
            return [name for name in ("fp32", "fp16", "int8") if name in v] + [
                part for part in v if part not in ("fp32", "fp16", "int8")
            ]  # unknown ones fail validation
        return v

    @field_validator("target_weights")
    @classmethod
    def _check_target_weights(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(not w > 0 for w in v)):
            raise ValueError("target_weights must be positive numbers, one per cluster")
        return v

    @field_validator("clusters")
    @classmethod
    def _check_clusters(cls, v: int | str | list[list[int]]) -> int | str | list[list[int]]:
        if isinstance(v, int) and not 1 <= v <= 64:
            raise ValueError("clusters must be between 1 and 64")
        if isinstance(v, list):
            if not v or any(not group for group in v):
                raise ValueError("explicit clusters must be non-empty lists of layer indices")
            flat = [i for group in v for i in group]
            if any(i < 0 for i in flat):
                raise ValueError("layer indices are >= 0")
            repeated = sorted({i for i in flat if flat.count(i) > 1})
            if (
                repeated
            ):  # the same check as core.calibrate.clustering.validate_clusters, before any teacher is loaded
                raise ValueError(
                    f"explicit clusters must not overlap: representation(s) {repeated} appear in "
                    "more than one cluster (or twice in one)"
                )
        return v

    @field_validator("target_macs", "target_params", mode="before")
    @classmethod
    def _parse_count(cls, v: Any) -> Any:
        return parse_param_count(v, "a count") if isinstance(v, str) else v

    @field_validator("speed_target")
    @classmethod
    def _check_speed_target(cls, v: str) -> str:
        if v in SPEED_TARGETS:
            return v
        raise ValueError(
            f"unknown speed_target {v!r}; supported: {', '.join(SPEED_TARGETS)} (PyTorch fp32 on the CPU, "
            "onnxruntime fp32 and int8 on the CPU, PyTorch fp32 on a CUDA GPU)"
        )

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        m = re.fullmatch(r"auto|cpu|mps|cuda(?::([0-9]{1,20}))?", v)
        if not m or (m.group(1) is not None and int(m.group(1)) > MAX_DEVICE_INDEX):
            raise ValueError(
                f"device must be auto, cpu, cuda, cuda:N with N from 0 to {MAX_DEVICE_INDEX}, or mps"
            )
        return v

    @model_validator(mode="after")
    def _one_target(self) -> CompressionSpec:
        if self.sparsity is not None and self.target_params is not None:
            raise ValueError("give either sparsity or target_params, not both")
        if self.macs_sparsity is not None and self.target_macs is not None:
            raise ValueError("give either macs_sparsity or target_macs, not both")
        if self.target_speedup is not None and self.has_macs_target:
            # both constrain compute, one by a proxy (MACs) and one by the time it is meant to stand for: a
            # student cannot be steered by two compute figures that disagree on what is expensive
            raise ValueError(
                "target_speedup: give either a latency target (target_speedup) or a MACs target "
                "(target_macs, macs_sparsity), not both"
            )
        if self.int8_aware and self.stage2_steps == 0:
            raise ValueError(
                "int8_aware: the int8-aware training is stage 2's; it needs stage 2 (stage2_steps is 0)"
            )
        if self.int8_aware_consistency is not None and not self.int8_aware:
            raise ValueError(
                "int8_aware_consistency: the consistency term is int8-aware stage 2's; it needs int8_aware"
            )
        return self

    @property
    def int8_consistency(self) -> float:
        """The weight of int8-aware stage 2's consistency term (0 when the run is not int8-aware)."""
        if not self.int8_aware:
            return 0.0
        if self.int8_aware_consistency is None:
            return DEFAULT_INT8_AWARE_CONSISTENCY
        return self.int8_aware_consistency

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> CompressionSpec:
        """A spec read back from its full dump (a job's stored spec): the fields whose value is not the
        default count as given, as they did when the job was created (a rule that tells a given value from a
        default, e.g. `clusters` above the teacher's representations, then decides as it did at creation)."""
        spec = cls.model_validate(data)
        given = {
            name
            for name, field in cls.model_fields.items()
            if getattr(spec, name) != field.get_default(call_default_factory=True)
        }
        object.__setattr__(spec, "__pydantic_fields_set__", given)
        return spec

    @property
    def has_macs_target(self) -> bool:
        return self.macs_sparsity is not None or self.target_macs is not None

    @property
    def has_compute_target(self) -> bool:
        """A MACs or a latency target: without a parameter target, then, no parameter budget."""
        return self.has_macs_target or self.target_speedup is not None

    @property
    def latency_sparsity(self) -> float | None:
        """Fraction of the teacher's predicted latency to remove (1 - 1 / target_speedup), or None."""
        return None if self.target_speedup is None else 1.0 - 1.0 / self.target_speedup

    def target_sparsity(self, teacher_params: int) -> float | None:
        """Fraction of the teacher's parameters to remove, from `sparsity` or `target_params`; the default
        0.75 when no target at all is given; None when only a MACs or latency target is given."""
        if self.target_params is not None:
            if self.target_params >= teacher_params:
                raise ValueError(
                    f"target_params={self.target_params} is not smaller than the teacher ({teacher_params})"
                )
            return 1.0 - self.target_params / teacher_params
        if self.sparsity is None and self.has_compute_target:
            return None
        return DEFAULT_SPARSITY if self.sparsity is None else self.sparsity

    def target_macs_sparsity(self, teacher_macs: float) -> float | None:
        """Fraction of the teacher's MACs per audio second to remove, or None without a MACs target."""
        if self.target_macs is not None:
            if self.target_macs >= teacher_macs:
                raise ValueError(
                    f"target_macs={self.target_macs:.4g} is not smaller than the teacher's "
                    f"{teacher_macs:.4g} MACs per audio second"
                )
            return 1.0 - self.target_macs / teacher_macs
        return self.macs_sparsity

    def budgets(
        self, teacher_params: int, teacher_macs: float, teacher_latency: float | None = None
    ) -> list[Budget]:
        """The size constraints of stage 1, resolved against the teacher (one or two). The latency budget is
        there once the teacher's predicted latency is known (`teacher_latency`, seconds: the cost model is
        fitted in the calibrate stage)."""
        out = []
        params = self.target_sparsity(teacher_params)
        if params is not None:
            out.append(Budget("params", float(teacher_params), params))
        macs = self.target_macs_sparsity(teacher_macs)
        if macs is not None:
            out.append(Budget("macs", float(teacher_macs), macs))
        latency = self.latency_sparsity
        if latency is not None and teacher_latency is not None:
            out.append(Budget("latency", float(teacher_latency), latency))
        return out

    def recipe(self, stage: int) -> TrainRecipe:
        """The resolved schedule of stage 1 or 2: preset, then explicit overrides, scaled consistently."""
        base = dict(PRESETS[self.preset][stage])
        override = self.stage1_steps if stage == 1 else self.stage2_steps
        if stage == 2 and override is None:
            if self.int8_aware:
                override = base["steps"] * INT8_AWARE_STAGE2_FACTOR
            elif self.target_speedup is not None and self.preset in LATENCY_STAGE2_FACTORS:
                override = base["steps"] * LATENCY_STAGE2_FACTORS[self.preset]
        if override:
            scale = override / base["steps"]
            base["steps"] = override
            base["warmup_steps"] = int(round(base["warmup_steps"] * scale))
            base["sparsity_warmup_steps"] = int(round(base["sparsity_warmup_steps"] * scale))
            base["checkpoint_every"] = max(1, min(base["checkpoint_every"], override // 4 or 1))
        if self.batch_seconds is not None:
            base["batch_seconds"] = self.batch_seconds
        if self.speed_perturbation is not None:
            base["speed_perturbation"] = self.speed_perturbation
        if stage == 2 and self.stage2_speed_perturbation is not None:
            base["speed_perturbation"] = self.stage2_speed_perturbation
        if self.checkpoint_every is not None:
            base["checkpoint_every"] = self.checkpoint_every
        return TrainRecipe(**base)


__all__ = [
    "Budget",
    "CompressionSpec",
    "TrainRecipe",
    "PRESETS",
    "DEFAULT_SPARSITY",
    "MAX_SEED",
    "MAX_DEVICE_INDEX",
    "MIN_MACS_REFERENCE_SECONDS",
    "INT8_AWARE_STAGE2_FACTOR",
    "LATENCY_STAGE2_FACTORS",
    "SPEED_TARGETS",
    "target_words",
    "parse_param_count",
]
