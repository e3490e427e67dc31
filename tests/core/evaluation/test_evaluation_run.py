"""evaluate() and `skillkd evaluate` end to end on tiny synthetic datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import HubertModel

from cli.evaluate import evaluate_command
from core.errors import AudioError
from core.evaluation.probes import PhoneProbeConfig, SpeakerProbeConfig
from core.evaluation.run import evaluate
from tests.utils.evaluation import make_tiny_model, tiny_hubert_config, write_dataset

FAST = dict(
    phone_config=PhoneProbeConfig(epochs=2), speaker_config=SpeakerProbeConfig(epochs=5), measure_speed=False
)


def test_evaluate_writes_the_report(tmp_path: Path, tiny_dataset: Path) -> None:
    out = tmp_path / "out"
    result = evaluate(
        make_tiny_model(),
        tiny_dataset,
        out_dir=out,
        include_fbank=True,
        name="tiny",
        teacher=make_tiny_model(seed=1),
        seed=3,
        **FAST,
    )
    assert json.loads((out / "evaluation.json").read_text()) == result
    summary = (out / "evaluation.md").read_text()
    assert "| tiny |" in summary and "| fbank |" in summary
    assert result["tasks"] == ["pr", "sid"] and result["seed"] == 3
    assert result["dataset"]["train_utterances"] == 12 and result["dataset"]["test_utterances"] == 6
    model, fbank = result["models"]
    assert model["name"] == "tiny" and model["num_representations"] == 3 and model["dim"] == 32
    assert model["params"] == sum(p.numel() for p in make_tiny_model().parameters())
    assert model["macs_per_second"] > 0 and model["macs_by_kind"]["conv"] > 0
    assert model["pr"]["per"] >= 0.0 and 0.0 <= model["sid"]["accuracy"] <= 1.0
    assert len(model["pr"]["layer_weights"]) == 3 and len(model["sid"]["layer_weights"]) == 3
    assert model["cka"]["clusters"] == [[0], [1], [2]] and len(model["cka"]["values"]) == 3
    assert (
        fbank["params"] == 0 and fbank["num_representations"] == 1 and fbank["pr"]["layer_weights"] == [1.0]
    )
    assert "speed" in model and model["speed"] == {}


def test_evaluate_is_deterministic(tiny_dataset: Path) -> None:
    first = evaluate(make_tiny_model(), tiny_dataset, **FAST)
    second = evaluate(make_tiny_model(), tiny_dataset, **FAST)
    assert first["models"][0]["pr"] == second["models"][0]["pr"]
    assert first["models"][0]["sid"] == second["models"][0]["sid"]


def test_evaluate_per_layer_reports_each_representation(tmp_path: Path, tiny_dataset: Path) -> None:
    out = tmp_path / "out"
    result = evaluate(
        make_tiny_model(),
        tiny_dataset,
        out_dir=out,
        include_fbank=True,
        name="tiny",
        tasks=("sid",),
        per_layer=True,
        **FAST,
    )
    model, fbank = result["models"]
    layers = model["sid_per_layer"]
    assert len(layers["accuracy"]) == 3 and all(0.0 <= a <= 1.0 for a in layers["accuracy"])
    assert layers["accuracy"][layers["best_layer"]] == max(layers["accuracy"])
    assert layers["train_speakers"] == 3 and layers["test_utterances"] == 6
    assert len(fbank["sid_per_layer"]["accuracy"]) == 1
    summary = (out / "evaluation.md").read_text()
    assert (
        "| model | r0 | r1 | r2 |" in summary and "| fbank |" in summary.split("each representation alone")[1]
    )
    plain = evaluate(make_tiny_model(), tiny_dataset, tasks=("sid",), **FAST)["models"][0]
    assert "sid_per_layer" not in plain and plain["sid"] == model["sid"]  # the flag adds, changes nothing


def test_missing_phone_field_names_the_field(tmp_path: Path) -> None:
    dataset = write_dataset(
        tmp_path / "data", fields=lambda row: {k: v for k, v in row.items() if k != "arpabet"}
    )
    with pytest.raises(AudioError, match="'arpabet'"):
        evaluate(make_tiny_model(), dataset, **FAST)
    result = evaluate(make_tiny_model(), dataset, tasks=("sid",), **FAST)  # SID alone needs no phones
    assert result["tasks"] == ["sid"] and "pr" not in result["models"][0]


def test_other_phone_fields_and_list_values(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data", fields=lambda row: {**row, "phones": row["arpabet"].split()})
    result = evaluate(make_tiny_model(), dataset, tasks=("pr",), phone_field="phones", **FAST)
    assert result["phone_field"] == "phones" and result["models"][0]["pr"]["vocabulary_size"] > 1


def test_missing_speakers_skip_sid_with_a_note(tmp_path: Path) -> None:
    dataset = write_dataset(
        tmp_path / "data", fields=lambda row: {k: v for k, v in row.items() if k != "speaker"}
    )
    result = evaluate(make_tiny_model(), dataset, **FAST)
    assert result["tasks"] == ["pr"] and "sid" not in result["models"][0]
    assert any("speaker identification skipped" in note for note in result["notes"])


def test_test_only_speakers_are_reported(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data", test_only_speakers=1)
    sid = evaluate(make_tiny_model(), dataset, tasks=("sid",), **FAST)["models"][0]["sid"]
    assert sid["unseen_test_speakers"] == 1 and sid["unseen_test_utterances"] == 2
    assert sid["test_utterances"] == 8 and sid["accuracy"] <= 6 / 8


def test_empty_split_is_an_audio_error(tiny_dataset: Path) -> None:
    with pytest.raises(AudioError, match="'dev'"):
        evaluate(make_tiny_model(), tiny_dataset, test_split="dev", **FAST)


def test_cli_evaluates_a_saved_teacher(tmp_path: Path, tiny_dataset: Path) -> None:
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    HubertModel(tiny_hubert_config()).save_pretrained(teacher)
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(
        evaluate_command,
        [
            str(teacher),
            str(tiny_dataset),
            "--tasks",
            "pr,sid",
            "--seed",
            "1",
            "--out",
            str(out),
            "--json",
            "--fbank",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [m["name"] for m in payload["models"]] == ["teacher", "fbank"]
    assert payload["models"][0]["speed"]["cpu"]["rtf"] > 0
    assert (out / "evaluation.md").exists()

    layered = runner.invoke(
        evaluate_command,
        [
            str(teacher),
            str(tiny_dataset),
            "--tasks",
            "sid",
            "--per-layer",
            "--out",
            str(tmp_path / "layers"),
            "--json",
        ],
    )
    assert layered.exit_code == 0, layered.output
    assert len(json.loads(layered.stdout)["models"][0]["sid_per_layer"]["accuracy"]) == 3

    bad = runner.invoke(
        evaluate_command, [str(teacher), str(tiny_dataset), "--phone-field", "nope", "--out", str(out)]
    )
    assert bad.exit_code == 2 and "error [audio_invalid]" in bad.stderr and "'nope'" in bad.stderr
    wrong = runner.invoke(
        evaluate_command, [str(teacher), str(tiny_dataset), "--tasks", "asr", "--out", str(out)]
    )
    assert wrong.exit_code == 2 and "--tasks" in wrong.output
