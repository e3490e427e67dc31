"""A fine-tuned teacher's task head: what it is, its weights, and the same computation as transformers'.

A teacher saved as `HubertForCTC`, `WavLMForSequenceClassification`, `Wav2Vec2ForAudioFrameClassification`
(any of the three architectures) carries a head on top of its encoder. The engine keeps it: the student is
trained to predict what the teacher's head predicts (core.distill.targets), and the student exports as the
same kind of task model (core.export). The head reads the encoder's hidden size, which pruning never changes
(it removes conv channels, attention heads and FFN units), so the teacher's head fits the student as it is.

    task        transformers class suffix          weights (transformers' names)
    ctc         ForCTC                             lm_head.{weight,bias}
    sequence    ForSequenceClassification          [layer_weights], projector.*, classifier.*
    frame       ForAudioFrameClassification        [layer_weights], classifier.*
    xvector     ForXVector                         [layer_weights], projector.*, tdnn.N.kernel.*,
                                                   feature_extractor.*, classifier.*, objective.weight

The head reads transformers' `last_hidden_state` (our last representation, after the final LayerNorm in the
Large layout), or with `use_weighted_layer_sum` (then `layer_weights` exist) a softmax-weighted sum of the
L+1 `hidden_states` (transformers' indexing, `SpeechEncoder.hf_hidden_states`; in the Large layout the last
of them is taken before the final LayerNorm, as transformers does). The task output of an x-vector head is its
speaker embedding (transformers' `embeddings`: TDNN layers, mean and standard deviation over the valid frames,
a linear layer); its `classifier` and AM-softmax `objective` weights are kept for fine-tuning and for scoring
the training speakers. `Model` and `ForPreTraining` classes have no task head.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import TeacherError
from core.models.import_huggingface import check_weights

TASKS = {
    "ForCTC": "ctc",
    "ForSequenceClassification": "sequence",
    "ForAudioFrameClassification": "frame",
    "ForXVector": "xvector",
}
UNSUPPORTED: dict[str, str] = {}  # class suffix -> what its head is, for heads recognised but not kept
HEADLESS = ("Model", "ForPreTraining")
# The config keys a head needs, copied from the teacher's config.json into the student's exports.
CONFIG_KEYS = (
    "vocab_size",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "ctc_loss_reduction",
    "ctc_zero_infinity",
    "final_dropout",
    "id2label",
    "label2id",
    "num_labels",
    "classifier_proj_size",
    "use_weighted_layer_sum",
    "problem_type",
    "tdnn_dim",
    "tdnn_kernel",
    "tdnn_dilation",
    "xvector_output_dim",
)
# Files of the teacher's processor (tokenizer) that go with a CTC student, so that its exports decode text.
PROCESSOR_FILES = (
    "vocab.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "processor_config.json",
    "tokenizer.json",
)


@dataclass
class HeadSpec:
    """What a teacher's head is: its task, the teacher's transformers class and the head's config keys."""

    task: str  # "ctc" | "sequence" | "frame" | "xvector"
    teacher_class: str  # e.g. "HubertForCTC"
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def weighted(self) -> bool:
        return bool(self.config.get("use_weighted_layer_sum")) and self.task != "ctc"

    @property
    def num_outputs(self) -> int:
        """Tokens (CTC), labels (classifiers), or the embedding's size (x-vector)."""
        if self.task == "ctc":
            return int(self.config["vocab_size"])
        if self.task == "xvector":
            return int(self.config.get("xvector_output_dim", 512))
        return len(self.config["id2label"])

    def describe(self) -> str:
        """One line for the dry run, the CLI and the report."""
        if self.task == "ctc":
            return f"{self.teacher_class}: a CTC head over {self.num_outputs} tokens"
        if self.task == "xvector":
            weighted = ", weighted sum of all layers" if self.weighted else ""
            return (
                f"{self.teacher_class}: an x-vector head ({self.num_outputs}-dim speaker embeddings, trained "
                f"on {len(self.config.get('id2label') or {})} speakers){weighted}"
            )
        kind = "a per-frame classifier" if self.task == "frame" else "an utterance classifier"
        weighted = ", weighted sum of all layers" if self.weighted else ""
        return f"{self.teacher_class}: {kind} over {self.num_outputs} labels{weighted}"

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "teacher_class": self.teacher_class, "config": dict(self.config)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadSpec:
        return cls(str(data["task"]), str(data["teacher_class"]), dict(data.get("config") or {}))


def head_spec_from_config(hf: dict[str, Any]) -> HeadSpec | None:
    """The head a Hugging Face config describes (its `architectures`), or None for an encoder without a task
    head; a head the engine does not keep is a TeacherError."""
    architectures = hf.get("architectures") or []
    if not architectures:
        return None
    name = str(architectures[0])
    for suffix, what in UNSUPPORTED.items():
        if name.endswith(suffix):
            raise TeacherError(
                f"the teacher is a {name} ({what} head), whose head skillkd does not keep yet; compress its "
                "encoder alone with drop_head (CLI --drop-head): the student is then an encoder without the "
                "head"
            )
    for suffix, task in TASKS.items():
        if name.endswith(suffix):
            config = {key: hf[key] for key in CONFIG_KEYS if key in hf}
            if task == "ctc" and not isinstance(config.get("vocab_size"), int):
                raise TeacherError(f"the teacher is a {name} but its config.json has no integer vocab_size")
            if task != "ctc":
                labels = config.get("id2label")
                if not isinstance(labels, dict) or not labels:
                    raise TeacherError(f"the teacher is a {name} but its config.json has no id2label")
                config["id2label"] = {str(k): str(v) for k, v in labels.items()}
                config["num_labels"] = len(labels)
            return HeadSpec(task, name, config)
    if any(name.endswith(suffix) for suffix in HEADLESS):
        return None
    raise TeacherError(
        f"the teacher is a {name}, a head skillkd does not know; known: *ForCTC, *ForSequenceClassification, "
        "*ForAudioFrameClassification (kept), *Model and *ForPreTraining (no task head); pass drop_head "
        "(CLI --drop-head) to compress its encoder alone"
    )


class TaskHead(nn.Module):
    """The head of `spec` on encoder hidden states, computing what transformers' class computes in eval mode
    (dropout off): CTC logits (batch, frame, vocab), utterance logits (batch, labels) from the projector's
    mean over valid frames, or per-frame logits (batch, frame, labels)."""

    def __init__(self, spec: HeadSpec, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.spec = spec
        self.num_layers = num_layers
        n = spec.num_outputs
        if spec.weighted:
            self.layer_weights = nn.Parameter(torch.ones(num_layers + 1) / (num_layers + 1))
        if spec.task == "ctc":
            self.lm_head = nn.Linear(hidden_size, n)
        elif spec.task == "sequence":
            proj = int(spec.config.get("classifier_proj_size", 256))
            self.projector = nn.Linear(hidden_size, proj)
            self.classifier = nn.Linear(proj, n)
        elif spec.task == "xvector":
            dims, kernels, dilations = xvector_tdnn(spec)
            self.projector = nn.Linear(hidden_size, dims[0])
            self.tdnn = nn.ModuleList(
                _TDNNLayer(dims[max(i - 1, 0)], dims[i], kernels[i], dilations[i]) for i in range(len(dims))
            )
            self.feature_extractor = nn.Linear(2 * dims[-1], n)
            self.classifier = nn.Linear(n, n)
            self.objective = _AMSoftmaxWeight(n, max(1, len(spec.config.get("id2label") or {})))
        else:
            self.classifier = nn.Linear(hidden_size, n)

    @property
    def frame_level(self) -> bool:
        return self.spec.task in ("ctc", "frame")

    @property
    def output_name(self) -> str:
        """The transformers output this head's result is (and the ONNX output's name)."""
        return "embeddings" if self.spec.task == "xvector" else "logits"

    def on_encoder(self, encoder: Any, reps: list[Tensor], frame_mask: Tensor | None = None) -> Tensor:
        """The head on a SpeechEncoder's representations r0..rL (all L+1 of them)."""
        return self.on_input(self.input_of(encoder, reps), frame_mask)

    def input_of(self, encoder: Any, reps: list[Tensor]) -> Tensor:
        """What the head reads (batch, frame, hidden) from a SpeechEncoder's r0..rL: the encoder's last
        hidden state, or for a weighted head the softmax-weighted sum of its L+1 hidden states."""
        if self.spec.weighted:
            return self._weighted_sum(encoder.hf_hidden_states(reps))
        return encoder.encoder.final_norm(reps[-1])  # type: ignore[no-any-return]

    def _weighted_sum(self, hidden_states: Sequence[Tensor]) -> Tensor:
        if len(hidden_states) != self.num_layers + 1:
            raise ValueError(f"a weighted head reads {self.num_layers + 1} hidden states")
        weights = torch.softmax(self.layer_weights, dim=-1)
        return (torch.stack(list(hidden_states), dim=1) * weights.view(-1, 1, 1)).sum(dim=1)

    def forward(
        self, hidden_states: Sequence[Tensor] | None, last: Tensor | None, frame_mask: Tensor | None = None
    ) -> Tensor:
        """hidden_states: transformers' L+1 hidden states (read by a weighted head); last: its
        last_hidden_state (read otherwise); frame_mask: (batch, frame) bool of valid frames, or None when no
        frame is padding."""
        if self.spec.weighted:
            if hidden_states is None:
                raise ValueError(f"a weighted head reads {self.num_layers + 1} hidden states")
            return self.on_input(self._weighted_sum(hidden_states), frame_mask)
        if last is None:
            raise ValueError("the head reads the last hidden state")
        return self.on_input(last, frame_mask)

    def on_input(self, x: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """The head's output from what it reads (`input_of`)."""
        if self.spec.task == "ctc":
            return self.lm_head(x)
        if self.spec.task == "frame":
            return self.classifier(x)
        if self.spec.task == "xvector":
            return self._xvector(x, frame_mask)
        hidden = self.projector(x)
        if frame_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            valid = frame_mask[:, : hidden.shape[1]].to(hidden.dtype)
            pooled = (hidden * valid[..., None]).sum(dim=1) / valid.sum(dim=1, keepdim=True).clamp(min=1.0)
        return self.classifier(pooled)

    def _xvector(self, x: Tensor, frame_mask: Tensor | None) -> Tensor:
        """transformers' x-vector embeddings: projector, TDNN layers, mean and (unbiased) standard deviation
        over each utterance's valid TDNN frames, feature_extractor."""
        hidden = self.projector(x)
        for layer in self.tdnn:
            hidden = layer(hidden)
        if frame_mask is None:
            pooled = torch.cat([hidden.mean(dim=1), hidden.std(dim=1)], dim=-1)
        else:
            _, kernels, dilations = xvector_tdnn(self.spec)
            shrink = sum((k - 1) * d for k, d in zip(kernels, dilations, strict=True))
            lengths = (frame_mask.sum(dim=1) - shrink).clamp(min=1)
            valid = (torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]).to(
                hidden.dtype
            )
            count = lengths.to(hidden.dtype)[:, None]
            mean = (hidden * valid[..., None]).sum(dim=1) / count
            spread = ((hidden - mean[:, None]) * valid[..., None]) ** 2
            pooled = torch.cat([mean, (spread.sum(dim=1) / (count - 1).clamp(min=1)).sqrt()], dim=-1)
        return self.feature_extractor(pooled)

    def speaker_scores(self, embeddings: Tensor) -> Tensor:
        """Cosine of each embedding's classifier output with each training speaker's AM-softmax weight
        (batch, speakers): transformers' `objective` without its margin, what its loss ranks."""
        logits = F.normalize(self.classifier(embeddings), dim=-1)
        return logits @ F.normalize(self.objective.weight, dim=0)

    def hf_config(self) -> dict[str, Any]:
        """The keys a transformers task model of this head needs in its config."""
        return dict(self.spec.config)


def xvector_tdnn(spec: HeadSpec) -> tuple[list[int], list[int], list[int]]:
    """The TDNN layers of an x-vector head: (output sizes, kernel sizes, dilations), transformers' defaults
    where the config leaves them out."""
    dims = [int(v) for v in spec.config.get("tdnn_dim", (512, 512, 512, 512, 1500))]
    kernels = [int(v) for v in spec.config.get("tdnn_kernel", (5, 3, 3, 1, 1))]
    dilations = [int(v) for v in spec.config.get("tdnn_dilation", (1, 2, 3, 1, 1))]
    if not dims or len(kernels) != len(dims) or len(dilations) != len(dims):
        raise TeacherError("the x-vector head's tdnn_dim, tdnn_kernel and tdnn_dilation differ in length")
    return dims, kernels, dilations


class _TDNNLayer(nn.Module):
    """transformers' TDNNLayer: a dilated 1-d convolution over frames kept as a Linear (`kernel`), ReLU."""

    def __init__(self, in_dim: int, out_dim: int, size: int, dilation: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.size, self.dilation = in_dim, out_dim, size, dilation
        self.kernel = nn.Linear(in_dim * size, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.kernel.weight.view(self.out_dim, self.size, self.in_dim).transpose(1, 2)
        y = F.conv1d(x.transpose(1, 2), weight, self.kernel.bias, dilation=self.dilation)
        return F.relu(y.transpose(1, 2))


class _AMSoftmaxWeight(nn.Module):
    """The weight of transformers' AMSoftmaxLoss (`objective.weight`, embedding size x speakers)."""

    def __init__(self, dim: int, speakers: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, speakers))


def head_keys(spec: HeadSpec) -> list[str]:
    """The head's weight names (transformers' names, without the encoder's prefix)."""
    names = {"ctc": ["lm_head"], "sequence": ["projector", "classifier"], "frame": ["classifier"]}
    if spec.task == "xvector":
        layers = len(xvector_tdnn(spec)[0])
        names["xvector"] = ["projector", *(f"tdnn.{i}.kernel" for i in range(layers))]
        names["xvector"] += ["feature_extractor", "classifier"]
    keys = [f"{n}.{p}" for n in names[spec.task] for p in ("weight", "bias")]
    if spec.task == "xvector":
        keys.append("objective.weight")
    return keys + (["layer_weights"] if spec.weighted else [])


def load_task_head(directory: Path | str, state: dict[str, Tensor] | None = None) -> TaskHead | None:
    """The teacher's head with its weights (eval mode), or None when the teacher has none; TeacherError when
    the weights are missing, misshapen or not finite. `state`: the teacher's weights already read."""
    directory = Path(directory)
    try:
        hf = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise TeacherError(f"config.json cannot be read: {exc}") from None
    spec = head_spec_from_config(hf)
    if spec is None:
        return None
    try:
        head = TaskHead(spec, int(hf["hidden_size"]), int(hf["num_hidden_layers"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise TeacherError(f"config.json of the {spec.teacher_class} lacks a usable {exc}") from None
    if state is None:
        state = _read_head_weights(directory, head_keys(spec))
    wanted = head.state_dict()
    found = {key: state[key] for key in head_keys(spec) if key in state}
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise TeacherError(f"the teacher is a {spec.teacher_class} but its weights lack {', '.join(missing)}")
    check_weights(found, wanted, owner="the head's ")
    head.load_state_dict({k: v.float() for k, v in found.items()}, strict=True)
    if spec.task == "ctc":
        check_vocabulary(directory, spec.num_outputs)
    return head.eval()


def read_vocabulary(directory: Path | str) -> dict[str, int] | None:
    """A CTC teacher's tokenizer vocabulary (vocab.json: token -> id), or None when it has no vocab.json;
    TeacherError when the file cannot be read or holds no ids."""
    path = Path(directory) / "vocab.json"
    if not path.is_file():
        return None
    try:
        vocab = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TeacherError(f"vocab.json cannot be read: {exc}") from None
    if isinstance(vocab, dict) and vocab and all(isinstance(v, dict) for v in vocab.values()):
        vocab = next(iter(vocab.values()))  # a multilingual tokenizer's vocab.json: {language: {token: id}}
    tokens = {str(t): i for t, i in vocab.items() if isinstance(i, int)} if isinstance(vocab, dict) else {}
    if not tokens:
        raise TeacherError("vocab.json holds no token ids")
    return tokens


def check_vocabulary(directory: Path, vocab_size: int) -> None:
    """A CTC teacher's tokenizer (vocab.json, when it has one) must name tokens of its head: ids below
    `vocab_size`, or the student's transcripts would decode to other text."""
    vocab = read_vocabulary(directory)
    if vocab is None:
        return
    ids = list(vocab.values())
    if max(ids) >= vocab_size:
        raise TeacherError(
            f"the tokenizer (vocab.json) does not match the CTC head: it has token id {max(ids)}, the head "
            f"{vocab_size} outputs (ids 0..{vocab_size - 1})"
        )


def _read_head_weights(directory: Path, keys: list[str]) -> dict[str, Tensor]:
    """The head's weights alone: from model.safetensors without reading the encoder's, else the whole file."""
    path = directory / "model.safetensors"
    if path.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                stored = set(f.keys())
                return {key: f.get_tensor(key) for key in keys if key in stored}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise TeacherError(f"model.safetensors cannot be read (corrupt or truncated?): {exc}") from None
    from core.models.import_huggingface import read_weights

    return read_weights(directory)


LABEL_FIELDS = ("label", "emotion", "speaker")
# Manifest fields a CTC head's supervised term reads transcripts from, in this order of preference: phones
# (space-separated tokens of the vocabulary), then text (characters, words joined by the "|" delimiter).
TRANSCRIPT_FIELDS = ("arpabet", "phones", "text")
WORD_DELIMITER = "|"


def transcript_ids(value: str, vocab: dict[str, int]) -> list[int] | None:
    """A transcript as the CTC head's token ids, as transformers' Wav2Vec2CTCTokenizer reads it: tokens
    separated by spaces when every one is in the vocabulary (phones), else characters with the words joined by
    "|" (in the case the vocabulary uses; a run of spaces is one boundary); None when neither fits (a token
    or character the head lacks) or the transcript is empty."""
    tokens = value.split()
    if not tokens:
        return None
    if all(t in vocab for t in tokens):
        return [vocab[t] for t in tokens]
    if WORD_DELIMITER not in vocab:
        return None
    for text in (value, value.upper(), value.lower()):
        chars = list(WORD_DELIMITER.join(text.split()))
        if all(c in vocab for c in chars):
            return [vocab[c] for c in chars]
    return None


def ctc_loss(logits: Tensor, targets: Sequence[Sequence[int]], blank: int) -> Tensor:
    """The CTC loss of a CTC head's logits (batch, frame, vocab) against token ids, one list per utterance and
    every frame valid, as transformers' *ForCTC computes it with ctc_loss_reduction="mean": the negative log
    likelihood of each utterance divided by its target length, averaged over the batch (impossible
    alignments count 0, ctc_zero_infinity)."""
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (frame, batch, vocab)
    flat = torch.tensor([i for t in targets for i in t], dtype=torch.long, device=logits.device)
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long, device=logits.device)
    input_lengths = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
    with torch.backends.cudnn.flags(enabled=False):  # as transformers: cuDNN's CTC needs int32 on the CPU
        return F.ctc_loss(
            log_probs, flat, input_lengths, target_lengths, blank=blank, reduction="mean", zero_infinity=True
        )


def item_label(item: Any, field: str) -> str | None:
    """An utterance's value of a manifest field (`speaker` is the catalog's own)."""
    value = item.speaker if field == "speaker" else item.extra.get(field)
    return None if value is None else str(value)


def label_field_for(items: Sequence[Any], labels: set[str], wanted: str | None = None) -> str | None:
    """The manifest field that names a classifier's labels: `wanted`, else the first of LABEL_FIELDS with the
    most utterances whose value is one of `labels` (None when no field has any)."""
    if wanted is not None:
        return wanted
    best, hits = None, 0
    for name in LABEL_FIELDS:
        found = sum(1 for item in items if item_label(item, name) in labels)
        if found > hits:
            best, hits = name, found
    return best


def embedding_distill_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean |student - teacher| - mean cosine similarity of utterance embeddings (batch, dim), + 1 so that it
    is 0 at the teacher: the layer targets' loss (core.distill.targets.distill_loss) on x-vectors."""
    student, teacher = student.float(), teacher.float()
    return (student - teacher).abs().mean() - F.cosine_similarity(student, teacher, dim=-1).mean() + 1.0


def task_distill_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, frame_mask: Tensor | None = None
) -> Tensor:
    """KL(teacher || student) of the softened output distributions, times temperature² (Hinton et al.), per
    frame for frame-level heads (padded frames excluded), per utterance otherwise."""
    frames = min(student_logits.shape[1], teacher_logits.shape[1]) if student_logits.ndim == 3 else None
    if frames is not None:
        student_logits, teacher_logits = student_logits[:, :frames], teacher_logits[:, :frames]
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (batch[, frame])
    if frames is not None and frame_mask is not None:
        m = frame_mask[:, :frames].to(kl.dtype)
        return (kl * m).sum() / m.sum().clamp(min=1.0) * temperature**2
    return kl.mean() * temperature**2


__all__ = [
    "CONFIG_KEYS",
    "HeadSpec",
    "PROCESSOR_FILES",
    "TASKS",
    "TaskHead",
    "embedding_distill_loss",
    "head_keys",
    "head_spec_from_config",
    "item_label",
    "label_field_for",
    "load_task_head",
    "task_distill_loss",
]
