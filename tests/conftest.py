"""Shared fixtures: tiny random-init Hugging Face teachers (milliseconds to build) and paths to assets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKILLKD_SHARED", REPO.parent / "shared"))
DEMO_TEACHER = REPO / "core" / "assets" / "demo-teacher"
DEMO_AUDIO = REPO / "core" / "assets" / "demo-audio"

# One thread: the tests' models are tiny, and with two OpenMP threads on a 2-core machine that is also running
# worker subprocesses, threads spin-wait on each other and small steps get 10-100x slower (bench/README.md).
torch.set_num_threads(1)
# Every run's report times teacher and student (core.evaluation.speed); on the shared CPU the all-cores passes alone take
# half a minute per run. Tests of the timing itself set this back.
os.environ.setdefault("SKILLKD_SPEED_RUNS", "0")


def tiny_hf_config(arch: str = "hubert", large: bool = False, **overrides):
    """A 2-layer, 32-wide config of the given architecture (Base or Large layout)."""
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    cls = {"hubert": HubertConfig, "wav2vec2": Wav2Vec2Config, "wavlm": WavLMConfig}[arch]
    kwargs = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        conv_dim=(16, 16, 16), conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer" if large else "group", do_stable_layer_norm=large,
        conv_bias=large, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, layerdrop=0.0, apply_spec_augment=False,
    )
    if arch == "wavlm":
        kwargs.update(num_buckets=32, max_bucket_distance=64)
    kwargs.update(overrides)
    return cls(**kwargs)


def save_tiny_teacher(directory: Path, arch: str = "hubert", large: bool = False, seed: int = 0,
                      **overrides) -> Path:
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


def randomise_masks(student, seed: int = 0, scale: float = 3.0) -> None:
    """Spread the student's Hard Concrete scores (N(0, scale²), seeded) so eval gates keep and drop units."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for hc in student.hard_concretes():
            hc.log_alpha.copy_(torch.randn(hc.n, generator=g) * scale)


def pruned_student(teacher, seed: int = 0):
    """A physically pruned copy of `teacher` with randomly spread masks (eval gates)."""
    from core.models import make_student

    student = make_student(teacher)
    randomise_masks(student, seed)
    student.eval()
    student.prune()
    return student


@pytest.fixture
def tiny_teacher_dir(tmp_path: Path) -> Path:
    return save_tiny_teacher(tmp_path / "teacher", "hubert")


@pytest.fixture
def tiny_wavlm_dir(tmp_path: Path) -> Path:
    return save_tiny_teacher(tmp_path / "teacher-wavlm", "wavlm")
