"""Frozen feature extraction: every representation, trimmed, float16, identical to unbatched passes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.data import load_waveform, scan_audio
from core.evaluation.fbank import Fbank
from core.evaluation.features import extract_features
from tests.utils.evaluation import HFRepresentations


def test_every_representation_of_every_utterance_trimmed(
    tiny_model: HFRepresentations, tiny_dataset: Path
) -> None:
    catalog = scan_audio(tiny_dataset)
    calls: list[tuple[int, int]] = []
    tiny_model.train()
    features = extract_features(
        tiny_model,
        catalog,
        name="tiny",
        batch_seconds=3.0,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert tiny_model.training  # mode restored after the pass
    assert len(features) == len(catalog) and features.num_reps == 3 and features.dim == 32
    assert calls[-1] == (len(catalog), len(catalog)) and len(calls) > 1  # several batches
    for item in catalog.items:
        samples = round(item.duration_s * 16000)
        frames = int(tiny_model.model._get_feat_extract_output_lengths(torch.tensor(samples)))
        stack = features[item.id]
        assert stack.shape == (3, frames, 32) and stack.dtype == torch.float16
    assert features.nbytes == sum(s.numel() * 2 for s in features.reps.values())


def test_batched_features_equal_one_utterance_at_a_time(tiny_dataset: Path) -> None:
    """With a padding-independent model (FBANK), batching must not change a single value."""
    catalog = scan_audio(tiny_dataset)
    batched = extract_features(Fbank(), catalog, batch_seconds=10.0)
    for item in catalog.items[:4]:
        waveform = torch.from_numpy(load_waveform(item, 16000))[None, :]  # (batch, time)
        reps, frames = Fbank()(waveform, torch.tensor([waveform.shape[1]]))
        alone = reps[0][0, : int(frames[0])].half()  # (frame, feature)
        assert torch.equal(batched[item.id][0], alone)


class _Broken(torch.nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.config = {"sample_rate": 16000}

    def num_params(self) -> int:
        return 0

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        batch = waveforms.shape[0]
        frames = torch.full((batch,), 5, dtype=torch.int64)
        if self.mode == "ragged":
            return [torch.zeros(batch, 5, 4), torch.zeros(batch, 5, 3)], frames
        if self.mode == "long":
            return [torch.zeros(batch, 5, 4)], frames + 1
        return [torch.zeros(batch, 5, 4)], frames * 0


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("ragged", "representation 1"),
        ("long", "frame_lengths reach"),
        ("empty", "gives no frame"),
    ],
)
def test_malformed_model_outputs_are_refused(tiny_dataset: Path, mode: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        extract_features(_Broken(mode), scan_audio(tiny_dataset))
