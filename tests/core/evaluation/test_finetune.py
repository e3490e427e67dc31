"""core.evaluation.finetune and `skillkd evaluate --finetune`: brief fine-tuning of the whole model with
transformers' Trainer on tiny random-init teachers and tiny labelled datasets (seconds), and once on a mini
teacher (slow)."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import HubertModel

from cli.evaluate import evaluate_command
from core.data import load_waveform
from core.errors import AudioError
from core.evaluation.dataset import load_probe_data
from core.evaluation.finetune import DEFAULT_STEPS, FinetuneConfig, LengthBatches, finetune
from core.evaluation.per import ctc_greedy_decode, edit_distance
from core.evaluation.probes import PhoneProbeConfig, PhoneVocabulary, SpeakerProbeConfig
from core.evaluation.run import evaluate
from core.models import SpeechEncoder, load_model
from core.models.encoder import normalize_waveforms
from tests.utils.evaluation import make_tiny_model, tiny_hubert_config, write_dataset
from tests.utils.paths import SHARED

# A few steps with a high rate, so a tiny model visibly learns; short SpecAugment spans for ~1 s utterances.
QUICK = FinetuneConfig(
    steps=12, batch_size=4, learning_rate=1e-3, head_learning_rate=1e-2, mask_time_length=2, log_every=3
)
FAST_PROBES = dict(
    phone_config=PhoneProbeConfig(epochs=2), speaker_config=SpeakerProbeConfig(epochs=5), measure_speed=False
)


def save_teacher(directory: Path, **overrides: object) -> Path:
    """A tiny random-init HuBERT (2 layers, 32 wide, 20 ms frames) saved as a transformers directory."""
    torch.manual_seed(0)
    HubertModel(tiny_hubert_config(**overrides)).save_pretrained(directory)
    return directory


@pytest.fixture
def teacher(tmp_path: Path) -> SpeechEncoder:
    return load_model(save_teacher(tmp_path / "teacher"))


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def test_ctc_fine_tuning_learns_and_scores_with_the_probes_edit_distance(
    teacher: SpeechEncoder, tiny_dataset: Path
) -> None:
    data = load_probe_data(tiny_dataset)
    before = state(teacher)
    result = finetune(teacher, data, "ctc", config=QUICK, seed=0)

    assert result.task == "ctc" and result.metric == "per" and result.accuracy is None
    assert result.steps == 12 and [step for step, _ in result.losses] == [3, 6, 9, 12]
    assert result.final_train_loss < result.first_train_loss, result.losses
    assert all(np.isfinite(loss) for _, loss in result.losses)
    assert result.per is not None and 0.0 <= result.per < float("inf")
    assert result.train_utterances == 12 and result.test_utterances == 6 and result.num_labels == 6
    # The caller's model is untouched; in the task model the frozen conv feature encoder kept its weights
    # while the transformer moved.
    assert all(torch.equal(before[name], tensor) for name, tensor in teacher.state_dict().items())
    module = result.module
    conv = state(module.skillkd.feature_extractor)
    assert conv and all(
        torch.equal(tensor, before[f"feature_extractor.{name}"]) for name, tensor in conv.items()
    )
    moved = state(module.skillkd.encoder)
    assert any(not torch.equal(tensor, before[f"encoder.{name}"]) for name, tensor in moved.items())

    # The PER is the corpus edit distance of greedy CTC paths, recomputed here from the trained module.
    vocabulary = PhoneVocabulary.from_sequences([data.phones[item.id] for item in data.train])
    edits = total = 0
    module.eval()
    for item in data.test:
        waveform = torch.from_numpy(load_waveform(item, 16000))[None]  # (1, time)
        if teacher.config.normalize_waveform:
            waveform = normalize_waveforms(waveform, None)
        with torch.no_grad():
            logits = module(waveform).logits  # (1, frame, vocab)
        hypothesis = vocabulary.decode(ctc_greedy_decode(logits)[0])
        edits += edit_distance(data.phones[item.id], hypothesis)
        total += len(data.phones[item.id])
    assert result.per == pytest.approx(edits / total)


def test_speaker_fine_tuning_reports_accuracy(teacher: SpeechEncoder, tiny_dataset: Path) -> None:
    data = load_probe_data(tiny_dataset)
    result = finetune(teacher, data, "speaker", config=QUICK, seed=0)
    assert result.metric == "accuracy" and result.per is None and result.num_labels == 3
    assert result.accuracy is not None and 0.0 <= result.accuracy <= 1.0
    assert result.unseen_test_utterances == 0 and result.test_utterances == 6
    assert np.isfinite(result.final_train_loss) and len(result.losses) == 4


def test_same_seed_same_run_and_the_callers_rng_is_left_alone(
    teacher: SpeechEncoder, tiny_dataset: Path
) -> None:
    data = load_probe_data(tiny_dataset)
    config = replace(QUICK, steps=4, log_every=2)
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    first = finetune(teacher, data, "ctc", config=config, seed=3)
    after = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    assert after == (random.random(), float(np.random.rand()), float(torch.rand(())))
    second = finetune(teacher, data, "ctc", config=config, seed=3)
    assert first.losses == second.losses and first.per == second.per
    other = finetune(teacher, data, "ctc", config=config, seed=4)
    assert other.losses != first.losses


def test_length_batches_cover_every_row_once_per_epoch_in_similar_lengths() -> None:
    seconds = [float(s) for s in np.random.default_rng(0).uniform(1, 10, size=37)]
    sampler = LengthBatches(seconds, 4, pool=3, seed=0)
    epochs = [list(sampler), list(sampler)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 10  # 3 pools of 12 rows (3 batches each), then 1 row
        assert sorted(row for batch in batches for row in batch) == list(range(37))
        assert all(len(batch) <= 4 for batch in batches)
    assert epochs[0] != epochs[1]  # a new order each epoch
    assert [list(LengthBatches(seconds, 4, pool=3, seed=0)) for _ in range(2)] == [epochs[0], epochs[0]]
    # within a batch, rows are neighbours in duration within their pool: the spread is small on average
    spread = np.mean(
        [max(seconds[r] for r in b) - min(seconds[r] for r in b) for b in epochs[0] if len(b) > 1]
    )
    assert spread < 4.0


def test_evaluate_adds_a_finetune_section_beside_the_probes(tmp_path: Path, tiny_dataset: Path) -> None:
    model = load_model(save_teacher(tmp_path / "teacher"))
    out = tmp_path / "out"
    result = evaluate(
        model,
        tiny_dataset,
        tasks=("pr",),
        finetune=["ctc", "speaker"],
        finetune_config=QUICK,
        out_dir=out,
        **FAST_PROBES,
    )
    entry = result["models"][0]
    assert result["tasks"] == ["pr"] and "sid" not in entry  # the probes run what was asked
    assert set(entry["finetune"]) == {"ctc", "speaker"} and result["finetune"]["steps"] == 12
    assert entry["finetune"]["ctc"]["per"] >= 0.0 and 0.0 <= entry["finetune"]["speaker"]["accuracy"] <= 1.0
    assert "module" not in entry["finetune"]["ctc"]
    assert json.loads((out / "evaluation.json").read_text()) == result
    summary = (out / "evaluation.md").read_text()
    assert (
        "Fine-tuned" in summary
        and "| ctc: PER % ↓ |" in summary
        and "| speaker: speaker acc % ↑ | — |" in summary
    )


def test_missing_labels_are_clear_errors_before_any_work(tmp_path: Path, tiny_dataset: Path) -> None:
    no_phones = write_dataset(
        tmp_path / "no-phones", fields=lambda row: {k: v for k, v in row.items() if k != "arpabet"}
    )
    no_speakers = write_dataset(
        tmp_path / "no-speakers", fields=lambda row: {k: v for k, v in row.items() if k != "speaker"}
    )
    with pytest.raises(AudioError, match="--finetune"):
        evaluate(make_tiny_model(), no_phones, tasks=("sid",), finetune=["ctc"], **FAST_PROBES)
    with pytest.raises(AudioError, match=r"--finetune speaker.*`speaker`"):
        evaluate(make_tiny_model(), no_speakers, tasks=("pr",), finetune=["speaker"], **FAST_PROBES)
    with pytest.raises(ValueError, match="SpeechEncoder"):  # a model the task classes cannot be built on
        evaluate(make_tiny_model(), tiny_dataset, finetune=["ctc"], **FAST_PROBES)


def test_cli_finetune_json_and_errors(tmp_path: Path, tiny_dataset: Path) -> None:
    teacher = save_teacher(tmp_path / "teacher")
    runner = CliRunner()
    ok = runner.invoke(
        evaluate_command,
        [
            str(teacher),
            str(tiny_dataset),
            "--tasks",
            "pr",
            "--finetune",
            "ctc",
            "--finetune-steps",
            "3",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert ok.exit_code == 0, ok.output
    payload = json.loads(ok.stdout)  # the Trainer printed nothing on stdout
    run = payload["models"][0]["finetune"]["ctc"]
    assert (
        run["steps"] == 3
        and run["seed"] == 1
        and run["per"] >= 0.0
        and payload["models"][0]["pr"]["per"] >= 0
    )
    assert "finetune ctc teacher seed 1: PER" in ok.stderr  # the progress lines

    no_speakers = write_dataset(
        tmp_path / "no-speakers", fields=lambda row: {k: v for k, v in row.items() if k != "speaker"}
    )
    bad = runner.invoke(
        evaluate_command,
        [str(teacher), str(no_speakers), "--finetune", "speaker", "--out", str(tmp_path / "bad")],
    )
    assert bad.exit_code == 2 and "error [audio_invalid]" in bad.stderr and "--finetune speaker" in bad.stderr
    assert "Traceback" not in bad.output
    wrong = runner.invoke(
        evaluate_command, [str(teacher), str(tiny_dataset), "--finetune", "asr", "--out", str(tmp_path)]
    )
    assert wrong.exit_code == 2 and "--finetune" in wrong.output
    assert f"[default: {DEFAULT_STEPS}]" in runner.invoke(evaluate_command, ["--help"]).output


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED / "teachers" / "wavlm-mini").is_dir(), reason="needs the shared mini teachers"
)
def test_mini_teacher_fine_tunes_on_tts_dev() -> None:
    """wavlm-mini with the default recipe for a few steps on a few tts-dev utterances: a real model's shapes
    (12 layers, relative position buckets, normalisation from its config) through the Trainer."""
    model = load_model(SHARED / "teachers" / "wavlm-mini")
    data = load_probe_data(SHARED / "data" / "tts-dev")
    data = replace(data, train=data.train[:8], test=data.test[:4])
    result = finetune(model, data, "ctc", config=FinetuneConfig(steps=4, batch_size=2, log_every=2), seed=0)
    assert result.per is not None and result.per >= 0.0 and len(result.losses) == 2
    assert result.params > model.num_params()  # the encoder plus a head over the phone inventory
