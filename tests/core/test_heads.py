"""core.models.heads: a fine-tuned teacher's head is recognised, loaded and computes what transformers'
task class computes (the reference), for CTC, utterance and frame classification, Base and Large layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.errors import TeacherError
from core.models import load_huggingface
from core.models.heads import HeadSpec, head_spec_from_config, load_task_head, task_distill_loss
from tests.utils.models import save_tiny_task_teacher, save_tiny_teacher


@pytest.mark.parametrize(
    "task, arch, large, weighted",
    [
        ("ctc", "hubert", False, False),
        ("ctc", "wav2vec2", True, False),
        ("sequence", "wavlm", False, True),
        ("sequence", "hubert", True, False),
        ("frame", "wav2vec2", False, True),
        ("frame", "wavlm", True, False),
        ("xvector", "wav2vec2", False, False),
        ("xvector", "wavlm", True, True),
    ],
)
def test_the_head_on_our_encoder_computes_what_transformers_computes(
    tmp_path: Path, task: str, arch: str, large: bool, weighted: bool
) -> None:
    import transformers

    directory = save_tiny_task_teacher(tmp_path / "t", task, arch, large, weighted=weighted)
    cls = getattr(transformers, json.loads((directory / "config.json").read_text())["architectures"][0])
    reference = cls.from_pretrained(directory).eval()
    encoder, head = load_huggingface(directory), load_task_head(directory)
    assert head is not None and head.spec.task == task and head.spec.weighted == weighted
    torch.manual_seed(1)
    waves = torch.randn(2, 4000)
    with torch.no_grad():
        out = reference(waves)
        want = out.embeddings if task == "xvector" else out.logits  # an x-vector head's output: embeddings
        reps, _ = encoder(waves)
        got = head.on_encoder(encoder, reps)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    if task == "xvector":  # and the training speakers' scores: the AM-softmax's cosines, without the margin
        weight = torch.nn.functional.normalize(reference.objective.weight, dim=0)
        cosines = torch.nn.functional.normalize(out.logits, dim=-1) @ weight
        assert torch.allclose(head.speaker_scores(got), cosines, atol=1e-5)


@pytest.mark.parametrize("task, arch", [("sequence", "hubert"), ("xvector", "wavlm")])
def test_padded_utterances_pool_over_valid_frames_as_transformers_does(
    tmp_path: Path, task: str, arch: str
) -> None:
    import transformers

    directory = save_tiny_task_teacher(tmp_path / "t", task, arch)
    cls = getattr(transformers, json.loads((directory / "config.json").read_text())["architectures"][0])
    reference = cls.from_pretrained(directory).eval()
    encoder, head = load_huggingface(directory), load_task_head(directory)
    assert head is not None
    waves, lengths = torch.randn(2, 4000), torch.tensor([4000, 2500])
    waves[1, 2500:] = 0.0
    mask = (torch.arange(4000)[None] < lengths[:, None]).long()
    with torch.no_grad():
        out = reference(waves, attention_mask=mask)
        want = out.embeddings if task == "xvector" else out.logits
        reps, frames = encoder(waves, lengths)
        assert frames is not None
        valid = torch.arange(reps[-1].shape[1])[None] < frames[:, None]
        got = head.on_encoder(encoder, reps, valid)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_heads_are_recognised_by_class_and_unknown_ones_refused() -> None:
    assert head_spec_from_config({"architectures": ["HubertModel"]}) is None
    assert head_spec_from_config({"architectures": ["Wav2Vec2ForPreTraining"]}) is None
    assert head_spec_from_config({}) is None
    spec = head_spec_from_config({"architectures": ["WavLMForCTC"], "vocab_size": 32, "pad_token_id": 0})
    assert spec == HeadSpec("ctc", "WavLMForCTC", {"vocab_size": 32, "pad_token_id": 0})
    assert spec.describe() == "WavLMForCTC: a CTC head over 32 tokens"
    xvector = head_spec_from_config({"architectures": ["WavLMForXVector"], "id2label": {"0": "a", "1": "b"}})
    assert xvector is not None and xvector.task == "xvector"
    assert (
        xvector.describe()
        == "WavLMForXVector: an x-vector head (512-dim speaker embeddings, trained on 2 speakers)"
    )
    with pytest.raises(TeacherError, match="a head skillkd does not know"):
        head_spec_from_config({"architectures": ["HubertForSpeechTranslation"]})
    with pytest.raises(TeacherError, match="no id2label"):
        head_spec_from_config({"architectures": ["HubertForSequenceClassification"]})
    with pytest.raises(TeacherError, match="no integer vocab_size"):
        head_spec_from_config({"architectures": ["HubertForCTC"]})


def test_a_teacher_without_its_head_weights_is_refused(tmp_path: Path) -> None:
    directory = save_tiny_teacher(tmp_path / "t")
    assert load_task_head(directory) is None
    config = json.loads((directory / "config.json").read_text())
    config.update(architectures=["HubertForCTC"], vocab_size=12)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherError, match="weights lack lm_head.bias, lm_head.weight"):
        load_task_head(directory)


def test_the_distillation_term_is_the_softened_kl_and_zero_at_the_teacher() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    assert task_distill_loss(teacher, teacher, 2.0).abs() < 1e-6
    t = 2.0
    p = torch.softmax(teacher / t, -1)
    want = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean() * t**2
    assert torch.allclose(task_distill_loss(student, teacher, t), want)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    kl = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1)
    assert torch.allclose(task_distill_loss(student, teacher, t, mask), kl[mask].mean() * t**2)


def test_a_tokenizer_that_does_not_match_the_ctc_head_is_refused(tmp_path: Path) -> None:
    directory = save_tiny_task_teacher(tmp_path / "t", "ctc", "hubert")  # 12 outputs
    (directory / "vocab.json").write_text(json.dumps({"<pad>": 0, **{f"p{i}": i for i in range(1, 12)}}))
    assert load_task_head(directory) is not None
    (directory / "vocab.json").write_text(json.dumps({"<pad>": 0, **{f"p{i}": i for i in range(1, 40)}}))
    with pytest.raises(TeacherError, match="does not match the CTC head: it has token id 39, the head 12"):
        load_task_head(directory)
