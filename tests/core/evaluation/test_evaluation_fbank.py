"""The FBANK baseline: filterbank shape, frame grid aligned with the SSL models, and spectral sanity."""

from __future__ import annotations

import math

import pytest
import torch

from core.evaluation.fbank import Fbank, hz_to_mel, mel_filterbank


def test_filterbank_tiles_the_band() -> None:
    filters = mel_filterbank(257, 80, 16000, f_min=20.0)
    assert filters.shape == (257, 80)
    assert float(filters.min()) >= 0.0 and float(filters.max()) <= 1.0
    assert bool((filters.sum(dim=0) > 0).all())  # no empty filter at 512-point resolution
    centres = filters.argmax(dim=0)
    assert bool((centres[1:] >= centres[:-1]).all())  # centres rise with the filter index


def test_frames_fall_on_the_20_ms_grid_of_the_ssl_models() -> None:
    fbank = Fbank()
    lengths = torch.tensor([16000, 8000, 400, 399])
    waveforms = 0.1 * torch.randn(4, 16000)
    reps, frame_lengths = fbank(waveforms, lengths)
    assert len(reps) == 1 and reps[0].shape == (4, 49, 80)
    assert frame_lengths.tolist() == [49, 24, 1, 0]
    # The wav2vec 2.0 conv stack (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2) gives the same counts.
    for length, frames in zip(lengths.tolist(), frame_lengths.tolist(), strict=True):
        n = length
        for kernel, stride in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2), strict=True):
            n = max(0, (n - kernel) // stride + 1)
        assert n == frames
    assert fbank.num_params() == 0


def test_a_tone_lights_the_filter_at_its_frequency() -> None:
    fbank = Fbank()
    t = torch.arange(16000) / 16000
    tone = 0.5 * torch.sin(2 * math.pi * 1000.0 * t)[None, :]  # (batch, time)
    reps, _ = fbank(tone, torch.tensor([16000]))
    loudest = int(reps[0][0].mean(dim=0).argmax())
    edges = torch.linspace(float(hz_to_mel(20.0)), float(hz_to_mel(8000.0)), 82)
    expected = int((edges[1:-1] - hz_to_mel(1000.0)).abs().argmin())
    assert abs(loudest - expected) <= 1


def test_short_batch_and_shape_errors() -> None:
    fbank = Fbank()
    reps, frame_lengths = fbank(torch.zeros(2, 100), torch.tensor([100, 50]))
    assert reps[0].shape == (2, 1, 80) and frame_lengths.tolist() == [0, 0]
    assert bool(torch.isfinite(reps[0]).all())  # silence is floored, not -inf
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        fbank(torch.zeros(100), torch.tensor([100]))
