"""The FBANK baseline: log-mel filterbank energies dressed as a representation model with one representation.

SUPERB reports FBANK next to every SSL upstream so a reader can tell how much the encoder adds over the raw
spectrum; a compressed student that falls to FBANK level has lost what made the teacher worth distilling.
The hop is 20 ms (not the usual 10 ms) and the window 25 ms, so frames fall on the same 50 Hz grid as the
wav2vec 2.0 family (receptive field 400 samples, stride 320) and the probes see the same frame counts.

The filterbank is computed here (HTK mel scale, triangular filters on the power spectrum) so that evaluation
needs nothing beyond torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def hz_to_mel(hz: float | torch.Tensor) -> float | torch.Tensor:
    """HTK mel scale: 2595·log10(1 + f/700)."""
    if isinstance(hz, torch.Tensor):
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 20.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular filters, equally spaced on the mel scale, as a matrix for `power @ filters`.

    Each filter rises linearly (in Hz) from its left edge to its centre and falls to its right edge;
    neighbours share edges, so the filters tile the band. No area normalisation: the log that follows turns a
    per-filter gain into a constant offset, which the probe's per-frame layer norm removes anyway.

    Returns:
        (freq, mel) float32, freq = n_freqs bins from 0 to sample_rate / 2.
    """
    f_max = sample_rate / 2.0 if f_max is None else f_max
    if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
        raise ValueError(
            f"expected 0 <= f_min < f_max <= {sample_rate / 2}, found f_min={f_min}, f_max={f_max}"
        )
    freqs = torch.linspace(0.0, sample_rate / 2.0, n_freqs, dtype=torch.float64)  # (freq,)
    mel_edges = torch.linspace(
        float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64
    )
    hz_edges = mel_to_hz(mel_edges)  # (mel + 2,)
    left, centre, right = hz_edges[:-2], hz_edges[1:-1], hz_edges[2:]  # (mel,) each
    rising = (freqs[:, None] - left[None, :]) / (centre - left)[None, :]  # (freq, mel)
    falling = (right[None, :] - freqs[:, None]) / (right - centre)[None, :]  # (freq, mel)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


class Fbank(nn.Module):
    """Log-mel energies with the representation-model interface: one representation, no parameters."""

    window: torch.Tensor  # (window,) Hann
    filters: torch.Tensor  # (freq, mel)

    def __init__(
        self,
        *,
        n_mels: int = 80,
        sample_rate: int = 16000,
        window_ms: float = 25.0,
        hop_ms: float = 20.0,
        f_min: float = 20.0,
        floor: float = 1e-6,
    ) -> None:
        super().__init__()
        self.window_samples = int(round(sample_rate * window_ms / 1000.0))
        self.hop_samples = int(round(sample_rate * hop_ms / 1000.0))
        self.n_fft = 1 << (self.window_samples - 1).bit_length()  # next power of two
        self.floor = floor
        self.config: dict[str, Any] = {
            "model_type": "fbank",
            "n_mels": n_mels,
            "sample_rate": sample_rate,
            "window_ms": window_ms,
            "hop_ms": hop_ms,
            "n_fft": self.n_fft,
            "f_min": f_min,
            "hidden_size": n_mels,
            "num_hidden_layers": 0,
        }
        self.register_buffer(
            "window", torch.hann_window(self.window_samples, periodic=True), persistent=False
        )
        self.register_buffer(
            "filters", mel_filterbank(self.n_fft // 2 + 1, n_mels, sample_rate, f_min), persistent=False
        )

    def num_params(self) -> int:
        return 0

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Whole windows that fit in each waveform: (length - window) // hop + 1, at least 0."""
        frames = torch.div(lengths - self.window_samples, self.hop_samples, rounding_mode="floor") + 1
        return torch.clamp(frames, min=0)

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Args: waveforms (batch, time) float32, lengths (batch,) int64 in samples.

        Returns: ([features (batch, frame, n_mels)], frame_lengths (batch,)). Frames past a row's frame length
        cover padding and are meaningless.
        """
        if waveforms.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, time), found {tuple(waveforms.shape)}")
        if lengths.shape != (waveforms.shape[0],):
            raise ValueError(
                f"expected lengths of shape ({waveforms.shape[0]},), found {tuple(lengths.shape)}"
            )
        if (
            waveforms.shape[1] < self.window_samples
        ):  # too short for one window: pad so the batch has a frame shape
            waveforms = nn.functional.pad(waveforms, (0, self.window_samples - waveforms.shape[1]))
        frames = waveforms.float().unfold(1, self.window_samples, self.hop_samples)  # (batch, frame, window)
        spectrum = torch.fft.rfft(frames * self.window, n=self.n_fft)  # (batch, frame, freq)
        power = spectrum.real.square() + spectrum.imag.square()  # (batch, frame, freq)
        mel = power @ self.filters  # (batch, frame, mel)
        features = torch.log(mel + self.floor)  # (batch, frame, mel)
        return [features], self.frame_lengths(lengths.to(features.device))


__all__ = ["Fbank", "hz_to_mel", "mel_filterbank", "mel_to_hz"]
