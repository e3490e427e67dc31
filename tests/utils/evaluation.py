"""Evaluation helpers: a representation model around transformers, and tiny labelled datasets.

`HFRepresentations` gives the evaluation code a model with the project's interface that does not depend on
`core.models` (so the evaluation tests exercise evaluation alone); it returns HF's `hidden_states` as the
representation list (HF's index, not the project's r[0], which does not matter for wiring tests).
`write_dataset` writes a dataset directory (manifest.jsonl + FLAC) of tones per phone at a pitch per speaker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import nn
from transformers import HubertConfig, HubertModel

SAMPLE_RATE = 16000
PHONES = ("AA", "B", "K", "IY", "S", "T")


class HFRepresentations(nn.Module):
    """A transformers wav2vec 2.0-family model with the project's representation-model interface."""

    def __init__(self, model: HubertModel, *, normalize: bool = False) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.normalize = normalize

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        valid = (
            torch.arange(waveforms.shape[1], device=waveforms.device)[None, :] < lengths[:, None]
        )  # (batch, time)
        if self.normalize:
            count = lengths[:, None].clamp(min=1).to(waveforms.dtype)
            mean = (waveforms * valid).sum(dim=1, keepdim=True) / count
            var = (((waveforms - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
            waveforms = (waveforms - mean) / torch.sqrt(var + 1e-7) * valid  # (batch, time)
        out = self.model(waveforms, attention_mask=valid.long(), output_hidden_states=True)
        frame_lengths = self.model._get_feat_extract_output_lengths(lengths).to(torch.int64)
        return list(out.hidden_states), frame_lengths


def tiny_hubert_config(**overrides: Any) -> HubertConfig:
    """2 layers, 32 wide, conv stride 320 (20 ms frames like the real models)."""
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32),
        conv_kernel=(10, 8, 4),
        conv_stride=(5, 8, 8),
        conv_bias=False,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="group",
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        apply_spec_augment=False,
    )
    settings.update(overrides)
    return HubertConfig(**settings)


def make_tiny_model(seed: int = 0, **overrides: Any) -> HFRepresentations:
    torch.manual_seed(seed)
    return HFRepresentations(HubertModel(tiny_hubert_config(**overrides)).eval())


def synth_utterance(rng: np.random.Generator, phones: list[str], speaker_index: int) -> np.ndarray:
    """Tones per phone at a speaker-specific pitch offset, plus a little noise: labelled, non-silent audio."""
    pieces = []
    for phone in phones:
        n = int(rng.integers(int(0.08 * SAMPLE_RATE), int(0.14 * SAMPLE_RATE)))
        t = np.arange(n) / SAMPLE_RATE
        pitch = 110.0 + 25.0 * speaker_index
        tone = 300.0 + 250.0 * PHONES.index(phone)
        pieces.append(0.2 * np.sin(2 * np.pi * tone * t) + 0.15 * np.sin(2 * np.pi * pitch * t))
    audio = np.concatenate(pieces)
    return (audio + 0.01 * rng.standard_normal(audio.shape[0])).astype(np.float32)


def write_dataset(
    root: Path,
    *,
    speakers: int = 3,
    per_speaker: dict[str, int] | None = None,
    seed: int = 0,
    fields: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    test_only_speakers: int = 0,
) -> Path:
    """A dataset dir with manifest.jsonl + FLAC: `per_speaker` utterances per split for each speaker.

    `fields` may rewrite each row (e.g. drop a field); `test_only_speakers` adds speakers found only in test.
    """
    per_speaker = per_speaker or {"train": 4, "test": 2}
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    plan = [(s, split, n) for s in range(speakers) for split, n in per_speaker.items()]
    plan += [(speakers + s, "test", per_speaker.get("test", 2)) for s in range(test_only_speakers)]
    for speaker, split, count in plan:
        for _ in range(count):
            uid = f"u{len(rows):04d}"
            phones = [str(p) for p in rng.choice(PHONES, size=int(rng.integers(6, 10)))]
            audio = synth_utterance(rng, phones, speaker)
            sf.write(root / "audio" / f"{uid}.flac", audio, SAMPLE_RATE)
            row: dict[str, Any] = {
                "id": uid,
                "path": f"audio/{uid}.flac",
                "split": split,
                "speaker": f"spk{speaker}",
                "duration_s": round(len(audio) / SAMPLE_RATE, 4),
                "text": " ".join(phones).lower(),
                "arpabet": " ".join(phones),
            }
            rows.append(fields(row) if fields else row)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
