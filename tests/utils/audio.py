"""Synthetic audio for tiny compression runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def write_audio(directory: Path, n: int = 8, seed: int = 0) -> Path:
    """`n` WAV files of 1-1.6 s (a few seeded sines plus noise, 16 kHz) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        length = int(16000 * rng.uniform(1.0, 1.6))
        t = np.arange(length) / 16000
        x = sum(
            np.sin(2 * np.pi * f * t) * a for f, a in zip(rng.uniform(100, 3000, 4), rng.uniform(0.1, 0.4, 4))
        )
        sf.write(directory / f"u{i}.wav", (x + 0.02 * rng.standard_normal(length)).astype(np.float32), 16000)
    return directory


def write_noise(directory: Path, n: int = 8) -> Path:
    """`n` WAV files of 1 s of seeded white noise (16 kHz) in a new `directory`."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        sf.write(directory / f"u{i}.wav", (0.3 * rng.standard_normal(16000)).astype(np.float32), 16000)
    return directory
