"""Audio in: the usable utterances of a user's data, decoded and served as batches to the stages.

catalog.py    scan_audio(source) -> AudioCatalog   what is usable, what was skipped and why
waveforms.py  load_waveform(item, sr)              mono float32 at the model's rate (soxr), WaveformCache
batches.py    TrainBatches, iter_padded_batches    training stream (cropped, resumable) / one padded pass
              WholeUtterances                      one whole utterance per step (a supervised CTC term)
loader.py     BatchLoader                          batches prepared in worker processes, pinned for the GPU
"""

from core.data.batches import Batch, TrainBatches, WholeUtterances, iter_padded_batches
from core.data.catalog import (
    AUDIO_EXTENSIONS,
    MANIFEST_NAME,
    SILENCE_PEAK,
    SKIP_REASONS,
    AudioCatalog,
    AudioItem,
    SkippedFile,
    scan_audio,
)
from core.data.waveforms import WaveformCache, load_waveform

__all__ = [
    "AUDIO_EXTENSIONS",
    "MANIFEST_NAME",
    "SILENCE_PEAK",
    "SKIP_REASONS",
    "AudioCatalog",
    "AudioItem",
    "Batch",
    "SkippedFile",
    "TrainBatches",
    "WaveformCache",
    "WholeUtterances",
    "iter_padded_batches",
    "load_waveform",
    "scan_audio",
]
