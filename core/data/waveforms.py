"""Decoding: `load_waveform(item, sr) -> (time,) float32`, mono, resampled with soxr, and an in-memory
cache."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from core.data.catalog import AudioItem
from core.errors import AudioError


def load_waveform(item_or_path: AudioItem | Path | str, target_sr: int) -> np.ndarray:
    """Decode one file to a mono float32 `(time,)` array at `target_sr`.

    Channels are averaged (SSL encoders take one channel, and the mean keeps both sides of a stereo field);
    a different rate is converted with soxr's HQ filter, whose output length is round(time * target / rate).
    Raises AudioError naming the file if it cannot be decoded (it may have changed since the scan).
    """
    if target_sr <= 0:
        raise ValueError(f"target_sr must be > 0, got {target_sr}")
    path = item_or_path.path if isinstance(item_or_path, AudioItem) else Path(item_or_path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (time, channel)
    except Exception as exc:
        raise AudioError(f"cannot decode {path}: {exc}") from exc
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]  # (time,)
    if rate != target_sr and mono.shape[0] > 0:
        mono = soxr.resample(mono, rate, target_sr, quality="HQ")  # (time,)
    return np.ascontiguousarray(mono, dtype=np.float32)


class WaveformCache:
    """Decoded, resampled waveforms kept in memory under a byte budget (least recently used evicted first).

    Training revisits every utterance each epoch, and decoding plus resampling would otherwise dominate a
    small model's step time; the datasets served here (~1 h, ~230 MB at 16 kHz float32) fit whole. Cached
    arrays are read-only, so a caller cropping a view cannot corrupt the cache. `max_bytes=0` disables it.
    """

    def __init__(self, max_bytes: int = 2 * 1024**3) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, item: AudioItem, sample_rate: int) -> np.ndarray:
        key = (str(item.path), sample_rate)
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            return cached
        waveform = load_waveform(item, sample_rate)
        waveform.setflags(write=False)
        if 0 < waveform.nbytes <= self.max_bytes:
            while self.bytes + waveform.nbytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.nbytes
            self._entries[key] = waveform
            self.bytes += waveform.nbytes
        return waveform


__all__ = ["WaveformCache", "load_waveform"]
