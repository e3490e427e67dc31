"""The Hugging Face export as a model to fine-tune (issue 21): task models against transformers' own, the
fine-tuning contract on a pruned student (SpecAugment, frozen feature encoder, dropouts, LayerDrop, gradient
checkpointing, attentions), and a fine-tuning run with transformers' Trainer in an environment without
skillkd."""

from __future__ import annotations

import json
import stat
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.hf_task_parity import pairs, parity
from core.export.hf import save_hf_export
from core.models import load_huggingface, load_student
from tests.utils.models import pruned_student, save_tiny_teacher
from tests.utils.venv import fresh_python, run_fresh

TOL = 1e-4
OFF = dict(
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    final_dropout=0.0,
    layerdrop=0.0,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize(("arch", "task"), pairs())
def test_task_models_match_transformers(tmp_path: Path, arch: str, task: str) -> None:
    """An unpruned teacher through skillkd's export, given transformers' head weights: the same logits and
    loss as transformers' own task class, in eval mode and in train mode with the same SpecAugment mask."""
    row = parity(arch, task, tmp_path)
    assert row is not None
    for mode in ("eval", "train"):
        figures = row[mode]
        assert figures["max_abs_diff"] < TOL, (mode, figures)
        assert figures["loss_skillkd"] == pytest.approx(figures["loss_transformers"], rel=1e-5), (
            mode,
            figures,
        )
    assert row["eval"]["loss_skillkd"] != row["train"]["loss_skillkd"]  # the mask changed something


@pytest.fixture(scope="module")
def student_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pruned WavLM student (layers differ in heads and FFN units) as a Hugging Face export."""
    tmp = tmp_path_factory.mktemp("student")
    student = pruned_student(load_huggingface(save_tiny_teacher(tmp / "teacher", "wavlm")))
    assert len({lc.num_heads for lc in student.config.layers}) > 1 or student.config.layers[0].num_heads < 4
    return save_hf_export(student, tmp / "hf")


def _load(directory: Path, auto: str = "AutoModel", **kwargs):
    import transformers

    return getattr(transformers, auto).from_pretrained(directory, trust_remote_code=True, **kwargs)


def _waves() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    waves = torch.randn(2, 4000, generator=generator)
    mask = torch.ones_like(waves, dtype=torch.long)
    waves[1, 2600:] = 0.0
    mask[1, 2600:] = 0
    return waves, mask


def test_export_files_are_world_readable_and_name_no_mask_vector_in_the_encoder(student_export: Path) -> None:
    for path in student_export.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    load_student(student_export)  # our loader leaves SpecAugment's vector out of the encoder


def test_eval_outputs_do_not_depend_on_the_fine_tuning_settings(student_export: Path) -> None:
    """Dropouts, LayerDrop and SpecAugment act in training only: in eval the defaults (transformers') give
    exactly what the settings all off give, and what our own encoder gives."""
    waves, mask = _waves()
    default = _load(student_export).eval()
    off = _load(student_export, apply_spec_augment=False, **OFF).eval()
    with torch.no_grad():
        a = default(waves, attention_mask=mask, output_hidden_states=True)
        b = off(waves, attention_mask=mask, output_hidden_states=True)
    assert default.config.mask_time_prob > 0 and default.config.layerdrop > 0
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert torch.equal(x, y)
    default.train()
    with torch.no_grad():
        c = default(waves, attention_mask=mask)
    assert (c.last_hidden_state - a.last_hidden_state).abs().max() > 1e-3  # training mode is not eval mode


def test_mask_time_indices_are_honoured_and_refused_when_spec_augment_is_off(student_export: Path) -> None:
    waves, mask = _waves()
    model = _load(student_export).eval()
    frames = int(model.frame_lengths(torch.tensor(4000)))
    time_mask = torch.zeros(2, frames, dtype=torch.bool)
    time_mask[:, 3:7] = True
    with torch.no_grad():
        plain = model(waves, attention_mask=mask, output_hidden_states=True)
        masked = model(waves, attention_mask=mask, mask_time_indices=time_mask, output_hidden_states=True)
    # the masked frames enter the encoder as masked_spec_embed (before the positional conv)
    assert (plain.hidden_states[0] - masked.hidden_states[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="mask_time_indices"):
        model(waves, mask_time_indices=time_mask[:, :-1])
    off = _load(student_export, apply_spec_augment=False).eval()
    with pytest.raises(ValueError, match="apply_spec_augment"):
        off(waves, mask_time_indices=time_mask)
    with pytest.raises(TypeError, match="unexpected"):
        model(waves, not_an_argument=True)


def test_random_spec_augment_in_training_masks_spans(student_export: Path) -> None:
    waves, _ = _waves()
    model = _load(student_export, mask_time_prob=0.5, mask_time_length=2, mask_feature_prob=0.3, **OFF)
    model.train()
    np.random.seed(0)
    with torch.no_grad():
        out = model(waves, output_hidden_states=True).hidden_states[0]
        model.eval()
        ref = model(waves, output_hidden_states=True).hidden_states[0]
    assert (out - ref).abs().max() > 1e-3


def test_output_attentions_are_the_kept_heads_probabilities(student_export: Path) -> None:
    waves, mask = _waves()
    model = _load(student_export).eval()
    heads = model.config.layer_num_heads
    with torch.no_grad():
        out = model(waves, attention_mask=mask, output_attentions=True)
        plain = model(waves, attention_mask=mask)
    frames = out.last_hidden_state.shape[1]
    assert [tuple(a.shape) for a in out.attentions] == [(2, h, frames, frames) for h in heads]
    for a in out.attentions:
        if a.shape[1]:
            assert torch.allclose(a.sum(-1), torch.ones(()), atol=1e-5)
            valid = int(model.frame_lengths(torch.tensor(2600)))
            assert a[1, :, :, valid:].abs().max() < 1e-6  # padded keys get no attention
    assert (out.last_hidden_state - plain.last_hidden_state).abs().max() < 1e-5


def test_output_attentions_match_transformers_eager_attention(tmp_path: Path) -> None:
    from transformers import AutoModel

    teacher_dir = save_tiny_teacher(tmp_path / "teacher", "hubert")
    directory = save_hf_export(load_huggingface(teacher_dir), tmp_path / "hf")
    ref = AutoModel.from_pretrained(teacher_dir, attn_implementation="eager").eval()
    ours = _load(directory).eval()
    waves, mask = _waves()
    with torch.no_grad():
        a = ref(waves, attention_mask=mask, output_attentions=True).attentions
        b = ours(waves, attention_mask=mask, output_attentions=True).attentions
    valid = int(ours.frame_lengths(torch.tensor(2600)))
    for x, y in zip(a, b, strict=True):
        assert (x[0] - y[0]).abs().max() < 1e-5
        assert (x[1, :, :valid] - y[1, :, :valid]).abs().max() < 1e-5


def test_layerdrop_skips_layers_in_training_and_keeps_every_hidden_state(student_export: Path) -> None:
    waves, _ = _waves()
    model = _load(student_export, apply_spec_augment=False, **{**OFF, "layerdrop": 1.0}).train()
    with torch.no_grad():
        hidden = model(waves, output_hidden_states=True).hidden_states
    assert len(hidden) == model.config.num_hidden_layers + 1
    assert all(torch.equal(h, hidden[0]) for h in hidden)


def test_frozen_feature_encoder_and_gradient_checkpointing(student_export: Path) -> None:
    """Checkpointing changes memory, not gradients; a frozen feature encoder gets none."""
    waves, mask = _waves()
    labels = torch.tensor([[1, 2, 3], [4, 5, -100]])

    def grads(checkpointing: bool, frozen: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = _load(student_export, "AutoModelForCTC", vocab_size=8, apply_spec_augment=False, **OFF)
        model.train()
        if frozen:
            model.freeze_feature_encoder()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.skillkd.encoder.gradient_checkpointing
        model(waves, attention_mask=mask, labels=labels).loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, checkpointed = grads(False, False), grads(True, False)
    for name, grad in plain.items():
        if grad is not None:
            assert torch.allclose(grad, checkpointed[name], atol=1e-6), name
    assert plain["skillkd.feature_extractor.conv_layers.0.conv.weight"] is not None
    frozen = grads(True, True)
    assert all(g is None for n, g in frozen.items() if n.startswith("skillkd.feature_extractor."))
    assert (
        frozen["lm_head.weight"] is not None
        and frozen["skillkd.encoder.layers.0.final_layer_norm.weight"] is not None
    )


def test_a_fine_tuned_task_model_reads_back_as_an_encoder(student_export: Path, tmp_path: Path) -> None:
    model = _load(student_export, "AutoModelForAudioClassification", num_labels=3)
    model.save_pretrained(tmp_path / "ft")
    encoder = load_student(tmp_path / "ft")
    original = load_student(student_export)
    for (name, a), b in zip(encoder.state_dict().items(), original.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["architectures"] == [
        "SkillkdForSequenceClassification"
    ]


FINE_TUNE_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import numpy as np
    import torch
    from transformers import (
        AutoModelForAudioClassification, AutoModelForCTC, Trainer, TrainingArguments, Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor, Wav2Vec2Processor, pipeline,
    )

    directory, work = sys.argv[1], Path(sys.argv[2])
    letters = "abcdefgh"
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(letters)}}
    (work / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(work / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(directory)
    processor = Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)
    torch.manual_seed(0)  # the new CTC head's initialisation: unseeded, the 20-step loss drop varied by run
    model = AutoModelForCTC.from_pretrained(
        directory, trust_remote_code=True, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        ctc_loss_reduction="mean", mask_time_prob=0.2, mask_time_length=2, layerdrop=0.0,
    )
    assert model.config.apply_spec_augment and model.config.mask_time_prob > 0
    model.freeze_feature_encoder()
    model.gradient_checkpointing_enable()
    conv_before = model.skillkd.feature_extractor.conv_layers[0].conv.weight.detach().clone()

    rng = np.random.default_rng(0)
    texts = ["abc", "hgf", "dead", "bead", "face", "cafe", "bad", "had"]
    examples = [{"audio": rng.standard_normal(6000).astype(np.float32), "text": t} for t in texts]

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(examples)

        def __getitem__(self, i):
            ex = examples[i]
            values = processor(audio=ex["audio"], sampling_rate=16000).input_values[0]
            return {"input_values": values, "labels": tokenizer(ex["text"]).input_ids}

    def collate(features):
        batch = processor.pad({"input_values": [f["input_values"] for f in features]}, padding=True,
                              return_tensors="pt", return_attention_mask=True)
        labels = tokenizer.pad({"input_ids": [f["labels"] for f in features]}, padding=True,
                               return_tensors="pt")
        batch["labels"] = labels["input_ids"].masked_fill(labels["attention_mask"].ne(1), -100)
        return batch

    args = TrainingArguments(
        output_dir=str(work / "trainer"), per_device_train_batch_size=4, max_steps=20, learning_rate=2e-3,
        warmup_steps=0, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Data(), data_collator=collate)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert torch.equal(conv_before, model.skillkd.feature_extractor.conv_layers[0].conv.weight)

    model.save_pretrained(work / "ctc")
    processor.save_pretrained(work / "ctc")
    asr = pipeline("automatic-speech-recognition", model=str(work / "ctc"), trust_remote_code=True)
    text = asr(examples[0]["audio"])["text"]

    labels = ["calm", "happy", "sad"]
    classifier = AutoModelForAudioClassification.from_pretrained(
        directory, trust_remote_code=True, num_labels=3, id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)},
    )
    classifier.save_pretrained(work / "cls")
    extractor.save_pretrained(work / "cls")
    classify = pipeline("audio-classification", model=str(work / "cls"), trust_remote_code=True)
    scores = classify(examples[1]["audio"])
    print(json.dumps({"losses": losses, "text": text, "scores": scores, "class": type(model).__name__}))
""")


def test_fine_tune_with_trainer_in_a_fresh_environment(student_export: Path, tmp_path: Path) -> None:
    """What a user does with the export in an environment without skillkd: 20 Trainer steps of CTC with
    SpecAugment on, the feature encoder frozen and gradient checkpointing on; the loss goes down; then the
    ASR and audio-classification pipelines run on what was saved."""
    python = fresh_python(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    res = run_fresh(python, FINE_TUNE_SCRIPT, [str(student_export), str(work)], tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    losses = summary["losses"]
    assert summary["class"] == "SkillkdForCTC" and len(losses) == 20
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    print("CTC losses over 20 Trainer steps:", " ".join(f"{x:.3f}" for x in losses))
    assert isinstance(summary["text"], str)
    assert sorted(s["label"] for s in summary["scores"]) == ["calm", "happy", "sad"]


def test_a_fine_tuned_ctc_export_is_scored_by_its_own_head(student_export: Path, tmp_path: Path) -> None:
    """A user fine-tunes the export with AutoModelForCTC and saves it: `skillkd evaluate` reads its CTC head
    from the saved config and weights (the logits of transformers' forward) and its vocabulary."""
    from core.evaluation.task import load_task_model

    torch.manual_seed(0)
    model = _load(student_export, "AutoModelForCTC", vocab_size=6, **OFF).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_()  # a trained head, not the fresh one: the test must see its weights
    model.save_pretrained(tmp_path / "ft")
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4, "c": 5}
    (tmp_path / "ft" / "vocab.json").write_text(json.dumps(vocab))
    task = load_task_model(tmp_path / "ft")
    assert task is not None and task.head.spec.task == "ctc"
    assert task.names == {i: token for token, i in vocab.items()}
    waves, _ = _waves()
    with torch.no_grad():
        expected = model(waves[:1]).logits
        reps, _ = task.encoder(waves[:1])
        got = task.head.on_encoder(task.encoder, reps)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)
