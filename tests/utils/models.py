"""Tiny models: random-init Hugging Face teachers (milliseconds to build) saved to disk, students with spread
masks, physically pruned students, and a teacher/student pair."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from core.models import SpeechEncoder


def tiny_hf_config(arch: str = "hubert", large: bool = False, **overrides: Any) -> Any:
    """A 2-layer, 32-wide config of the given architecture (Base or Large layout)."""
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    cls = {"hubert": HubertConfig, "wav2vec2": Wav2Vec2Config, "wavlm": WavLMConfig}[arch]
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 3, 2),
        conv_stride=(5, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer" if large else "group",
        do_stable_layer_norm=large,
        conv_bias=large,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        apply_spec_augment=False,
    )
    if arch == "wavlm":
        kwargs.update(num_buckets=32, max_bucket_distance=64)
    kwargs.update(overrides)
    return cls(**kwargs)


def save_tiny_teacher(
    directory: Path, arch: str = "hubert", large: bool = False, seed: int = 0, **overrides: Any
) -> Path:
    """A tiny random-init transformers teacher saved with save_pretrained in `directory`."""
    from transformers import HubertModel, Wav2Vec2Model, WavLMModel

    torch.manual_seed(seed)
    cls = {"hubert": HubertModel, "wav2vec2": Wav2Vec2Model, "wavlm": WavLMModel}[arch]
    model = cls(tiny_hf_config(arch, large, **overrides)).eval()
    with torch.no_grad():  # random LayerNorm/GroupNorm affine so parity tests see non-trivial norms
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return directory


def randomise_masks(student: SpeechEncoder, seed: int = 0, scale: float = 3.0) -> None:
    """Spread the student's Hard Concrete scores (N(0, scale²), seeded) so eval gates keep and drop units."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for hc in student.hard_concretes():
            hc.log_alpha.copy_(torch.randn(hc.n, generator=g) * scale)


def pruned_student(teacher: SpeechEncoder, seed: int = 0) -> SpeechEncoder:
    """A physically pruned copy of `teacher` with randomly spread masks (eval gates)."""
    from core.models import make_student

    student = make_student(teacher)
    randomise_masks(student, seed)
    student.eval()
    student.prune()
    return student


def tiny_pair(directory: Path, keep: float = 0.3, seed: int = 0) -> tuple[SpeechEncoder, SpeechEncoder]:
    """A tiny teacher and a student pruned to roughly `keep` of its conv channels, heads and FFN units."""
    from core.models import load_huggingface, make_student

    teacher = load_huggingface(save_tiny_teacher(directory, "hubert"))
    student = make_student(teacher)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for hc in student.hard_concretes():
            kept = torch.randperm(hc.n, generator=g)[: max(1, round(keep * hc.n))]
            log_alpha = torch.full((hc.n,), -20.0)
            log_alpha[kept] = 6.0
            hc.log_alpha.copy_(log_alpha)
    student.prune()
    return teacher.eval(), student.eval()


TASK_CLASSES = {
    "ctc": "ForCTC",
    "sequence": "ForSequenceClassification",
    "frame": "ForAudioFrameClassification",
    "xvector": "ForXVector",
}


def save_tiny_task_teacher(
    directory: Path,
    task: str = "ctc",
    arch: str = "hubert",
    large: bool = False,
    seed: int = 0,
    weighted: bool = False,
    **overrides: Any,
) -> Path:
    """A tiny random-init transformers task teacher (`HubertForCTC`, `WavLMForSequenceClassification`, ...):
    a CTC head over 12 tokens or a classifier over 3 labels, its head weights random (not zero)."""
    import transformers

    torch.manual_seed(seed)
    prefix = {"hubert": "Hubert", "wav2vec2": "Wav2Vec2", "wavlm": "WavLM"}[arch]
    cls = getattr(transformers, prefix + TASK_CLASSES[task])
    extra: dict[str, Any] = (
        {"vocab_size": 12, "pad_token_id": 0, "ctc_loss_reduction": "mean"}
        if task == "ctc"
        else {
            "num_labels": 3,
            "id2label": {0: "calm", 1: "happy", 2: "sad"},
            "label2id": {"calm": 0, "happy": 1, "sad": 2},
            "classifier_proj_size": 24,
            "use_weighted_layer_sum": weighted,
        }
    )
    if task == "xvector":  # a small TDNN: 3 layers, 10-dim embeddings
        extra.update(
            tdnn_dim=[16, 16, 12], tdnn_kernel=[3, 3, 1], tdnn_dilation=[1, 2, 1], xvector_output_dim=10
        )
    model = cls(tiny_hf_config(arch, large, **{**extra, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name == "layer_weights":
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return directory


def write_phone_tokenizer(directory: Path) -> dict[str, int]:
    """A phone tokenizer (vocab.json) over the test dataset's phones (tests.utils.evaluation.PHONES) beside a
    tiny CTC teacher of 8 tokens, as `bench/task_teachers.py` writes one: <pad> (the blank), <unk>, the
    phones."""
    import json

    from tests.utils.evaluation import PHONES

    vocab = {"<pad>": 0, "<unk>": 1, **{p: 2 + i for i, p in enumerate(PHONES)}}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    return vocab
