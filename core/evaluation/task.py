"""The task itself, for a model with a task head (a fine-tuned teacher, or a student that kept its head):
the phone error rate of its own CTC head by greedy decoding, or the accuracy of its own classifier, on the
test split. No probe is trained: this is what the model does as it will be used.

    load_task_model(path)   a teacher (Hugging Face *ForCTC, ...), our student export or its Hugging Face
                            export -> TaskModel (encoder, head, the head's token or label names), or None
                            when the model has no task head
    task_scores(model, data, ...)
        ctc        PER % of the decoded tokens against the manifest's phones (`arpabet`): the tokens of the
                   head's vocabulary that are not phones of the references (<pad>, <unk>, "|", ...) are
                   left out of the hypothesis
        sequence   accuracy over test utterances whose label (the manifest field that names the head's
                   labels: `label_field`, else the first of label / emotion / speaker whose values the head
                   knows) is one of the head's labels; the others are counted, not scored
        frame      not scored (no frame-label format in the manifest): said in the result
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from core.data import load_waveform
from core.errors import AudioError, CheckpointError, TeacherError
from core.evaluation.dataset import ProbeData
from core.evaluation.per import ctc_collapse, equal_error_rate, error_rate
from core.models import SpeechEncoder, is_student_dir, load_model
from core.models.heads import (
    LABEL_FIELDS,
    HeadSpec,
    TaskHead,
    head_keys,
    head_spec_from_config,
    item_label,
    label_field_for,
    load_task_head,
)

STUDENT_HEAD_FILE = "task_head.safetensors"  # core.export.student.TASK_HEAD_FILE


@dataclass
class TaskModel:
    encoder: SpeechEncoder
    head: TaskHead
    names: dict[int, str]  # output id -> token (CTC, from vocab.json) or label (classifiers, id2label)


def _vocabulary(path: Path) -> dict[int, str]:
    try:
        vocab = json.loads((path / "vocab.json").read_text())
    except (OSError, ValueError):
        return {}
    if isinstance(vocab, dict) and vocab and all(isinstance(v, dict) for v in vocab.values()):
        vocab = next(iter(vocab.values()))
    return {int(i): str(token) for token, i in vocab.items() if isinstance(i, int)}


def _student_head(path: Path, config: dict[str, Any]) -> TaskHead | None:
    """The head of our student export (config.json "task_head" + task_head.safetensors) or of its Hugging
    Face export (config.json "skillkd"."task_head" + the head's keys in model.safetensors)."""
    if "task_head" in config:  # our format
        data, weights, layers = config["task_head"], path / STUDENT_HEAD_FILE, len(config["model"]["layers"])
        hidden = int(config["model"]["hidden_size"])
        spec = HeadSpec.from_dict(data)
    elif "model" in config:  # our format, a student without a head
        return None
    else:
        weights, hidden = path / "model.safetensors", config["hidden_size"]
        layers = len(config["layer_num_heads"])
        data = (config.get("skillkd") or {}).get("task_head")
        if data is not None:
            spec = HeadSpec.from_dict(data)
        else:  # a task model fine-tuned from the export (SkillkdForCTC, ...): its config names the head
            try:
                found = head_spec_from_config(config)
            except TeacherError:
                return None  # a head the engine cannot score: the probes still measure the encoder
            if found is None:
                return None
            spec = found
    head = TaskHead(spec, int(hidden), layers)
    try:
        state = load_file(str(weights))
        head.load_state_dict({key: state[key] for key in head_keys(spec)}, strict=True)
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"the task head of {path.name} cannot be read: {exc}") from None
    return head.eval()


def load_task_model(path: Path | str) -> TaskModel | None:
    """The model at `path` with its task head, or None when it has none."""
    path = Path(path)
    if is_student_dir(path):
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name}/config.json cannot be read: {exc}") from None
        head = _student_head(path, config)
    else:
        head = load_task_head(path)
    if head is None:
        return None
    if head.spec.task == "ctc":
        names = _vocabulary(path)
    else:
        names = {int(i): str(label) for i, label in head.spec.config.get("id2label", {}).items()}
    return TaskModel(load_model(path), head, names)


@torch.no_grad()
def task_scores(
    model: TaskModel,
    data: ProbeData,
    *,
    device: torch.device | str = "cpu",
    label_field: str | None = None,
) -> dict[str, Any]:
    """Score the model's own head on `data.test` (one utterance at a time: no padding)."""
    encoder, head = model.encoder.to(device).eval(), model.head.to(device).eval()
    spec = head.spec
    out: dict[str, Any] = {"task": spec.task, "head": spec.describe()}
    if spec.task == "frame":
        return out | {"note": "frame classification is not scored: the manifest has no frame-label format"}
    if spec.task == "xvector":
        return out | _verification(model, data, device, label_field or "speaker")
    rate = encoder.config.sample_rate
    if spec.task == "ctc":
        if not data.phones:
            raise AudioError("scoring a CTC head needs phone labels (the manifest's phone field)")
        blank = int(spec.config.get("pad_token_id") or 0)
        phones = {p for item in data.test for p in data.phones[item.id]}
        references, hypotheses, unknown = [], [], 0
        for item in data.test:
            wave = torch.from_numpy(load_waveform(item, rate)).to(device)[None]
            reps, _ = encoder(wave)
            ids = ctc_collapse(head.on_encoder(encoder, reps).argmax(-1)[0].tolist(), blank)
            tokens = [model.names.get(i, f"<{i}>") for i in ids]
            unknown += sum(1 for t in tokens if t not in phones)
            hypotheses.append([t for t in tokens if t in phones])
            references.append(data.phones[item.id])
        per = error_rate(references, hypotheses)
        return out | {"per": per, "utterances": len(references), "non_phone_tokens": unknown}
    labels = set(model.names.values())
    field = label_field_for(data.test, labels, label_field)
    if field is None:
        raise AudioError(
            f"no manifest field names the classifier's labels ({', '.join(sorted(labels)[:5])}, ...): "
            "give it with --label-field"
        )
    correct = scored = 0
    for item in data.test:
        label = item_label(item, field)
        if label not in labels:
            continue
        wave = torch.from_numpy(load_waveform(item, rate)).to(device)[None]
        reps, _ = encoder(wave)
        predicted = model.names.get(int(head.on_encoder(encoder, reps).argmax(-1)[0]))
        correct += int(predicted == label)
        scored += 1
    if not scored:
        raise AudioError(f"no test utterance has a {field!r} among the classifier's labels")
    return out | {
        "accuracy": correct / scored,
        "label_field": field,
        "utterances": scored,
        "unscored_utterances": len(data.test) - scored,
    }


def _verification(
    model: TaskModel, data: ProbeData, device: torch.device | str, field: str
) -> dict[str, Any]:
    """Speaker verification with the x-vector head's embeddings: every pair of test utterances is a trial
    scored by the cosine of their embeddings; the equal error rate over same- vs different-speaker trials."""
    encoder, head = model.encoder, model.head
    rate = encoder.config.sample_rate
    embeddings, speakers = [], []
    for item in data.test:
        speaker = item_label(item, field)
        if speaker is None:
            continue
        wave = torch.from_numpy(load_waveform(item, rate)).to(device)[None]
        reps, _ = encoder(wave)
        embeddings.append(F.normalize(head.on_encoder(encoder, reps)[0].float(), dim=-1))
        speakers.append(speaker)
    if len(set(speakers)) < 2:
        raise AudioError(
            "scoring an x-vector head needs test utterances of at least 2 speakers (manifest field "
            f"{field!r})"
        )
    cosines = (torch.stack(embeddings) @ torch.stack(embeddings).T).cpu()
    scores, same = [], []
    for i in range(len(speakers)):
        for j in range(i + 1, len(speakers)):
            scores.append(float(cosines[i, j]))
            same.append(speakers[i] == speakers[j])
    if all(same):
        raise AudioError("no trial pairs two speakers: the test utterances name one speaker")
    if not any(same):
        raise AudioError("no trial pairs two utterances of one speaker: each test speaker has one utterance")
    return {
        "eer": equal_error_rate(scores, same),
        "label_field": field,
        "utterances": len(speakers),
        "speakers": len(set(speakers)),
        "trials": len(scores),
        "target_trials": sum(same),
    }


__all__ = ["LABEL_FIELDS", "TaskModel", "load_task_model", "task_scores"]
