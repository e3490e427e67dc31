"""core.evaluation.task: a model with a task head is scored on its task with its own head. The reference is
transformers itself: the teacher's HubertForCTC run on each test utterance, greedy-decoded, its tokens mapped
through the tokenizer's vocabulary, scored with the same edit distance; and HubertForSequenceClassification's
argmax label against the manifest's speakers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

from core.errors import AudioError
from core.evaluation.dataset import load_probe_data
from core.evaluation.per import ctc_collapse, error_rate
from core.evaluation.run import evaluate
from core.evaluation.task import load_task_model, task_scores
from tests.utils.evaluation import PHONES, write_dataset
from tests.utils.models import save_tiny_task_teacher


def ctc_teacher(tmp_path: Path) -> Path:
    """A tiny HubertForCTC whose vocabulary is <pad>, <unk> and the test dataset's phones."""
    vocab = {"<pad>": 0, "<unk>": 1, **{p: 2 + i for i, p in enumerate(PHONES)}}
    teacher = save_tiny_task_teacher(tmp_path / "teacher", "ctc", vocab_size=len(vocab))
    (teacher / "vocab.json").write_text(json.dumps(vocab))
    return teacher


def test_ctc_per_is_what_transformers_decodes(tmp_path: Path) -> None:
    from transformers import HubertForCTC

    teacher = ctc_teacher(tmp_path)
    data = load_probe_data(write_dataset(tmp_path / "data"), tasks=("pr",))
    model = load_task_model(teacher)
    assert model is not None
    got = task_scores(model, data)

    reference = HubertForCTC.from_pretrained(teacher).eval()
    names = {i: t for t, i in json.loads((teacher / "vocab.json").read_text()).items()}
    refs, hyps = [], []
    for item in data.test:
        wave, _ = sf.read(item.path, dtype="float32")
        with torch.no_grad():
            ids = ctc_collapse(reference(torch.from_numpy(wave)[None]).logits.argmax(-1)[0].tolist(), 0)
        hyps.append([names[i] for i in ids if names[i] in PHONES])
        refs.append(data.phones[item.id])
    assert got["task"] == "ctc" and got["utterances"] == len(data.test)
    assert got["per"] == pytest.approx(error_rate(refs, hyps))


def test_a_classifier_is_scored_against_the_manifest_field_that_names_its_labels(tmp_path: Path) -> None:
    from transformers import HubertForSequenceClassification

    labels = {0: "spk0", 1: "spk1", 2: "spk2"}
    teacher = save_tiny_task_teacher(
        tmp_path / "teacher", "sequence", id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    data = load_probe_data(write_dataset(tmp_path / "data", test_only_speakers=1), tasks=("sid",))
    model = load_task_model(teacher)
    assert model is not None
    got = task_scores(model, data)
    reference = HubertForSequenceClassification.from_pretrained(teacher).eval()
    right = scored = 0
    for item in data.test:
        if item.speaker not in labels.values():
            continue
        wave, _ = sf.read(item.path, dtype="float32")
        with torch.no_grad():
            predicted = labels[int(reference(torch.from_numpy(wave)[None]).logits.argmax(-1)[0])]
        right, scored = right + int(predicted == item.speaker), scored + 1
    assert got["label_field"] == "speaker" and got["utterances"] == scored and got["unscored_utterances"] == 2
    assert got["accuracy"] == pytest.approx(right / scored)
    with pytest.raises(AudioError, match="no test utterance has a 'emotion'"):
        task_scores(model, data, label_field="emotion")


def test_evaluate_reports_the_task_beside_the_probes_and_a_headless_model_has_none(tmp_path: Path) -> None:
    teacher = ctc_teacher(tmp_path)
    data = write_dataset(tmp_path / "data")
    result = evaluate(teacher, data, tasks=("pr",), measure_speed=False, out_dir=tmp_path / "out")
    (entry,) = result["models"]
    assert entry["task"]["task"] == "ctc" and entry["task"]["per"] >= 0.0
    assert "its own head (HubertForCTC: a CTC head over" in (tmp_path / "out" / "evaluation.md").read_text()
    plain = save_tiny_task_teacher(tmp_path / "plain", "ctc")
    config = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({**config, "architectures": ["HubertModel"]}))
    assert load_task_model(plain) is None
