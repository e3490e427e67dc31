"""bench/task_teachers.py on a tiny random-init HubertModel teacher and a tiny dataset: a few steps of each
task, and what a transformers user gets from the output directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForAudioClassification,
    AutoModelForCTC,
    HubertModel,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Processor,
    pipeline,
)

from bench import task_teachers
from tests.utils.evaluation import PHONES, tiny_hubert_config, write_dataset


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HubertModel directory with a feature extractor, like the shared mini teachers."""
    path = tmp_path_factory.mktemp("tiny-teacher")
    torch.manual_seed(0)
    HubertModel(tiny_hubert_config()).save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), per_speaker={"train": 3, "test": 1})


def test_ctc_teacher_is_a_transformers_phone_recogniser(teacher: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ctc"
    args = [str(teacher), str(dataset), "--task", "ctc", "--steps", "3", "--seed", "0", "--out", str(out)]
    result = task_teachers.main(args)

    assert json.loads((out / "task_teacher.json").read_text()) == result
    assert result["metric"] == "per" and result["value"] >= 0 and result["steps"] == 3
    assert result["phones"] == len(PHONES) and len(result["load_before"]) == 3 and result["train_seconds"] > 0
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "vocab.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["architectures"] == ["HubertForCTC"]

    model = AutoModelForCTC.from_pretrained(out)
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["<pad>"] == 0 == model.config.pad_token_id and model.config.vocab_size == len(vocab)
    processor = Wav2Vec2Processor.from_pretrained(out)
    ids = processor.tokenizer("AA B K IY").input_ids
    assert ids == [vocab[p] for p in ("AA", "B", "K", "IY")]
    assert processor.tokenizer.decode(ids) == "AA B K IY"
    assert processor.tokenizer.decode([vocab["S"], vocab["S"], 0, vocab["S"], vocab["T"]]) == "S S T"

    recogniser = pipeline("automatic-speech-recognition", model=str(out))
    waveform = 0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    output = recogniser(waveform)
    assert isinstance(output, dict) and isinstance(output["text"], str)
    assert set(output["text"].split()) <= {*PHONES, "<unk>"}  # 3 steps: any path; CTC decoding keeps <unk>


def test_speaker_teacher_is_a_transformers_audio_classifier(
    teacher: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "speaker"
    args = [str(teacher), str(dataset), "--task", "speaker", "--steps", "3", "--out", str(out)]
    result = task_teachers.main(args)

    assert result["metric"] == "accuracy" and 0 <= result["value"] <= 1
    assert result["num_labels"] == 3 and result["scored_test_utterances"] == 3 and result["skipped"] == 0
    model = AutoModelForAudioClassification.from_pretrained(out)
    assert type(model).__name__ == "HubertForSequenceClassification"
    assert sorted(model.config.id2label.values()) == ["spk0", "spk1", "spk2"]
    classifier = pipeline("audio-classification", model=str(out))
    scores = classifier(0.1 * np.random.default_rng(0).standard_normal(8000).astype(np.float32))
    assert {row["label"] for row in scores} <= {"spk0", "spk1", "spk2"}


def test_speakers_absent_from_training_are_skipped_and_counted(teacher: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", per_speaker={"train": 2, "test": 1}, test_only_speakers=1)
    result = task_teachers.main(
        [str(teacher), str(data), "--task", "speaker", "--steps", "1", "--out", str(tmp_path / "out")]
    )
    assert result["skipped"] == 1 and result["scored_test_utterances"] == 3 and result["test_utterances"] == 4


def test_ctc_without_phone_labels_is_a_clear_error(teacher: Path, tmp_path: Path) -> None:
    def drop_phones(row: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in row.items() if k != "arpabet"}

    data = write_dataset(tmp_path / "data", per_speaker={"train": 2, "test": 1}, fields=drop_phones)
    with pytest.raises(SystemExit, match="--task ctc needs the manifest field 'arpabet'"):
        task_teachers.main(
            [str(teacher), str(data), "--task", "ctc", "--steps", "1", "--out", str(tmp_path / "o")]
        )
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit, match="not a transformers model directory"):
        task_teachers.main([str(data), str(data), "--task", "ctc", "--out", str(tmp_path / "o")])


def test_a_students_transformers_export_fine_tunes_into_a_ctc_model(
    teacher: Path, dataset: Path, tmp_path: Path
) -> None:
    """Issue 23's two-step route: a skillkd student's `hf` export fine-tuned by the same recipe as a teacher
    (through AutoModelForCTC with trust_remote_code), loadable as a CTC model afterwards."""
    from core.export.hf import save_hf_export
    from core.models import load_huggingface
    from tests.utils.models import pruned_student

    student = pruned_student(load_huggingface(teacher), seed=0)
    hf_dir = tmp_path / "student-hf"
    save_hf_export(student, hf_dir)
    out = tmp_path / "ctc"
    result = task_teachers.main(
        [str(hf_dir), str(dataset), "--task", "ctc", "--steps", "2", "--seed", "0", "--out", str(out)]
    )
    assert result["metric"] == "per" and result["value"] >= 0 and result["steps"] == 2
    model = AutoModelForCTC.from_pretrained(out, trust_remote_code=True)
    assert type(model).__name__ == "SkillkdForCTC"
    assert model.config.vocab_size == len(json.loads((out / "vocab.json").read_text()))
