"""Audio input: find the usable utterances in a user's data, decode them, and serve them as batches.

Three layers, each usable alone:

    scan_audio(source)        -> AudioCatalog      headers (and, optionally, one decode pass) of every file;
                                                   bad files are recorded as SkippedFile, never raised
    load_waveform(item, sr)   -> (time,) float32   mono, resampled with soxr
    TrainBatches(catalog)     -> Batch, Batch, ... infinite, duration-bucketed, cropped (no padding), resumable
    iter_padded_batches(...)  -> Batch, ...        one deterministic pass, zero-padded (calibration, evaluation)

A source is a directory of audio files (searched recursively), a dataset directory holding `manifest.jsonl`
(one JSON object per line with at least `path`, relative to the dataset directory), or a `.jsonl` manifest file.
Datasets come from users of a service, so a manifest may not point outside its dataset directory.

Shapes use the project's words: `waveforms (batch, time)`, `lengths (batch,)` in samples.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch

from core.errors import AudioError, CheckpointError

MANIFEST_NAME = "manifest.jsonl"
SILENCE_PEAK = 1e-4
"""A file whose peak absolute sample stays below this (full scale = 1.0) carries nothing to distil."""

_BASE_EXTENSIONS = (".wav", ".flac", ".ogg")
# libsndfile decodes MP3 only from 1.1.0 on; offering .mp3 where it cannot would turn every mp3 into "unreadable".
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    _BASE_EXTENSIONS + ((".mp3",) if "MP3" in sf.available_formats() else ())
)

# Reasons a file is left out; stable strings, shown to users and counted in summaries.
SKIP_REASONS = (
    "unreadable",  # looks like audio but the decoder fails (corrupt, truncated, unsupported codec, permissions)
    "not_audio",  # content or extension is not an audio format we decode
    "empty",  # zero bytes or zero frames
    "too_short",  # shorter than min_seconds
    "too_long",  # longer than max_seconds
    "silent",  # peak below SILENCE_PEAK
    "non_finite",  # NaN or inf samples (float files): would poison the loss
    "missing",  # manifest row pointing at a file that does not exist
    "outside_dataset",  # manifest path absolute, with '..', or a symlink leaving the dataset directory
    "bad_manifest_row",  # not a JSON object, or no string `path`
    "duplicate_id",  # a second item with an id already taken (ids key batches and reports)
)

_MAX_SKIPPED_EXAMPLES = 20
_SCAN_BLOCK_FRAMES = 65536


# --------------------------------------------------------------------------------------------------------------
# Catalog


@dataclass
class AudioItem:
    """One usable utterance, as its file header (and the scan's decode pass) described it."""

    id: str
    path: Path
    duration_s: float
    sample_rate: int
    channels: int
    speaker: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SkippedFile:
    """A file or manifest row left out, kept so the user is told what was dropped and why."""

    path: str
    reason: str


@dataclass
class AudioCatalog:
    """The usable items of a source plus everything that was dropped from it."""

    items: list[AudioItem]
    skipped: list[SkippedFile]
    root: Path

    @property
    def total_seconds(self) -> float:
        return float(sum(item.duration_s for item in self.items))

    @property
    def sample_rates(self) -> list[int]:
        return sorted({item.sample_rate for item in self.items})

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest for progress events and reports: enough to spot a badly prepared dataset."""
        reasons = Counter(skip.reason for skip in self.skipped)
        return {
            "files": len(self.items),
            "hours": self.total_seconds / 3600.0,
            "sample_rates": self.sample_rates,
            "skipped": dict(sorted(reasons.items())),
            "skipped_examples": [
                {"path": skip.path, "reason": skip.reason} for skip in self.skipped[:_MAX_SKIPPED_EXAMPLES]
            ],
        }

    def filter(self, *, split: str | None = None, speaker: str | None = None) -> AudioCatalog:
        """Items matching every given field; the skipped list is kept since it describes the same source."""
        items = [
            item
            for item in self.items
            if (split is None or item.split == split) and (speaker is None or item.speaker == speaker)
        ]
        return replace(self, items=items)

    def subset(
        self, max_items: int | None = None, max_seconds: float | None = None, *, seed: int = 0
    ) -> AudioCatalog:
        """A seed-determined random subset within both limits (e.g. calibration: 200 utterances or 30 min).

        Items are drawn in a random order fixed by `seed` and the item ids (not by the catalog's order, so a
        re-scan that lists files differently still picks the same utterances); an item that would overflow
        `max_seconds` is passed over so that shorter ones can still fill the budget. If no single item fits
        `max_seconds`, the first drawn item is returned alone: callers need something to compute on.
        The kept items stay in catalog order.
        """
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        if not self.items:
            return replace(self, items=[])
        by_id = sorted(range(len(self.items)), key=lambda i: (self.items[i].id, str(self.items[i].path)))
        order = [by_id[j] for j in np.random.default_rng(_seed_words(seed)).permutation(len(by_id))]
        chosen: list[int] = []
        seconds = 0.0
        for index in order:
            if max_items is not None and len(chosen) >= max_items:
                break
            duration = self.items[index].duration_s
            if max_seconds is not None and seconds + duration > max_seconds:
                continue
            chosen.append(index)
            seconds += duration
        if not chosen:
            chosen = [order[0]]
        return replace(self, items=[self.items[i] for i in sorted(chosen)])


# --------------------------------------------------------------------------------------------------------------
# Scanning


def scan_audio(
    source: Path | str,
    *,
    min_seconds: float = 0.5,
    max_seconds: float | None = None,
    check_silence: bool = True,
) -> AudioCatalog:
    """Catalogue the usable audio of `source`, recording every file left out and why.

    A bad file never raises: users' datasets routinely hold a few broken or stray files and one of them must not
    sink a job. With `check_silence` each file is decoded once, in blocks (bounded memory), which also catches
    corrupt or truncated bodies now rather than mid-training; without it only headers are read.

    Raises AudioError when `source` does not exist or is not a directory / `.jsonl` manifest, when the manifest
    itself cannot be read, or when no usable audio remains (the message counts the skipped files by reason).
    """
    source = Path(source)
    if not source.exists():
        raise AudioError(f"audio source {source} does not exist")
    if source.is_dir():
        manifest = source / MANIFEST_NAME
        if manifest.is_file():
            root, candidates, skipped = source, *_manifest_candidates(manifest, source)
        else:
            root, candidates, skipped = source, *_directory_candidates(source)
    elif source.is_file() and source.suffix.lower() == ".jsonl":
        root = source.parent
        candidates, skipped = _manifest_candidates(source, root)
    else:
        raise AudioError(f"audio source {source} is neither a directory nor a .jsonl manifest")

    items: list[AudioItem] = []
    seen_ids: set[str] = set()
    for candidate in candidates:
        shown = _display_path(candidate.path, root)
        probe = _probe(candidate.path, check_silence=check_silence)
        if isinstance(probe, str):
            skipped.append(SkippedFile(shown, probe))
            continue
        frames, sample_rate, channels = probe
        duration = frames / sample_rate
        if duration < min_seconds:
            skipped.append(SkippedFile(shown, "too_short"))
            continue
        if max_seconds is not None and duration > max_seconds:
            skipped.append(SkippedFile(shown, "too_long"))
            continue
        if candidate.id in seen_ids:
            skipped.append(SkippedFile(shown, "duplicate_id"))
            continue
        seen_ids.add(candidate.id)
        items.append(
            AudioItem(
                id=candidate.id,
                path=candidate.path,
                duration_s=duration,
                sample_rate=sample_rate,
                channels=channels,
                speaker=candidate.speaker,
                split=candidate.split,
                extra=candidate.extra,
            )
        )

    catalog = AudioCatalog(items=items, skipped=skipped, root=root)
    if not items:
        counts = ", ".join(f"{reason}: {n}" for reason, n in catalog.summary()["skipped"].items())
        detail = f"{len(skipped)} skipped ({counts})" if skipped else "no audio files found"
        raise AudioError(f"no usable audio in {source}: {detail}")
    return catalog


@dataclass
class _Candidate:
    """A file the source claims is audio, with the labels a manifest row gave it."""

    id: str
    path: Path
    speaker: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _directory_candidates(root: Path) -> tuple[list[_Candidate], list[SkippedFile]]:
    """Every audio-extension file under `root`, in sorted order so catalogues are reproducible.

    Other files are reported as "not_audio" (the user sees that e.g. their .m4a files were ignored); hidden
    files and directories are not (editor and OS droppings). Directory symlinks are not followed (no loops);
    a file symlink leading outside `root` is refused like an escaping manifest path.
    """
    candidates: list[_Candidate] = []
    skipped: list[SkippedFile] = []
    resolved_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            shown = _display_path(path, root)
            if path.suffix.lower() not in AUDIO_EXTENSIONS:
                skipped.append(SkippedFile(shown, "not_audio"))
                continue
            if not _is_within(path.resolve(), resolved_root):
                skipped.append(SkippedFile(shown, "outside_dataset"))
                continue
            relative = path.relative_to(root)
            candidates.append(_Candidate(id=relative.with_suffix("").as_posix(), path=path))
    return candidates, skipped


_MANIFEST_KNOWN = ("path", "id", "split", "speaker", "duration_s")


def _manifest_candidates(manifest: Path, root: Path) -> tuple[list[_Candidate], list[SkippedFile]]:
    """Rows of a JSON-lines manifest, with paths confined to `root`.

    The header's duration wins over a row's `duration_s` (manifests are often written by hand or by another
    tool), so that field is dropped; fields we do not know go to `extra` (text, phonemes, ...) for later stages.
    """
    try:
        raw_lines = manifest.read_bytes().splitlines()
    except OSError as exc:
        raise AudioError(f"cannot read manifest {manifest}: {exc}") from exc
    candidates: list[_Candidate] = []
    skipped: list[SkippedFile] = []
    resolved_root = root.resolve()
    for number, raw in enumerate(raw_lines, start=1):
        where = f"{manifest.name}:{number}"
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            skipped.append(SkippedFile(where, "bad_manifest_row"))
            continue
        if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"].strip():
            skipped.append(SkippedFile(where, "bad_manifest_row"))
            continue
        relative = Path(row["path"])
        shown = row["path"]
        if relative.is_absolute() or relative.anchor or ".." in relative.parts:
            skipped.append(SkippedFile(shown, "outside_dataset"))
            continue
        path = root / relative
        if not path.exists():
            # A dangling symlink also lands here: there is nothing to read either way.
            skipped.append(SkippedFile(shown, "missing"))
            continue
        if not _is_within(path.resolve(), resolved_root):
            skipped.append(SkippedFile(shown, "outside_dataset"))
            continue
        if not path.is_file():
            skipped.append(SkippedFile(shown, "not_audio"))
            continue
        row_id = row.get("id")
        candidates.append(
            _Candidate(
                id=str(row_id) if row_id is not None else relative.with_suffix("").as_posix(),
                path=path,
                speaker=_optional_str(row.get("speaker")),
                split=_optional_str(row.get("split")),
                extra={k: v for k, v in row.items() if k not in _MANIFEST_KNOWN},
            )
        )
    return candidates, skipped


def _probe(path: Path, *, check_silence: bool) -> tuple[int, int, int] | str:
    """(frames, sample_rate, channels) of a usable file, or the reason it is not usable."""
    try:
        if path.stat().st_size == 0:
            return "empty"
    except OSError:
        return "unreadable"
    try:
        info = sf.info(str(path))
    except Exception:  # any decoder or OS failure is a property of the user's file, not a bug of ours
        return "unreadable" if _looks_like_audio(path) else "not_audio"
    sample_rate, channels, frames = int(info.samplerate), int(info.channels), int(info.frames)
    if sample_rate <= 0 or channels <= 0:
        return "unreadable"
    if frames <= 0 and not check_silence:
        return "empty"
    if not check_silence:
        return frames, sample_rate, channels
    decoded = 0
    peak = 0.0
    try:
        with sf.SoundFile(str(path)) as handle:
            for block in handle.blocks(blocksize=_SCAN_BLOCK_FRAMES, dtype="float32", always_2d=True):
                if block.size == 0:
                    continue
                if not np.isfinite(block).all():
                    return "non_finite"
                decoded += block.shape[0]
                peak = max(peak, float(np.abs(block).max()))
    except Exception:  # a body that fails to decode part-way: corrupt or truncated
        return "unreadable"
    if decoded == 0:
        return "empty"
    if peak < SILENCE_PEAK:
        return "silent"
    # The decoded count is the truth when a header over- or under-states the length (truncated files, mp3).
    return decoded, sample_rate, channels


# Leading bytes of the containers libsndfile decodes; used only to word the skip reason for a failed file.
_AUDIO_MAGIC = (
    b"RIFF",
    b"RIFX",
    b"RF64",
    b"FORM",
    b"fLaC",
    b"OggS",
    b"ID3",
    b"caff",
    b".snd",
    b"wvpk",
    b"BW64",
)


def _looks_like_audio(path: Path) -> bool:
    """Whether a file that failed to decode at least starts like audio (corrupt) rather than, say, text."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return True
    if head.startswith(_AUDIO_MAGIC):
        return True
    # An MPEG audio frame header starts with an 11-bit sync word.
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _display_path(path: Path, root: Path) -> str:
    """Paths relative to the dataset, so reports neither leak server paths nor drown in prefixes."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _seed_words(*values: int) -> list[int]:
    """Seed material for numpy's SeedSequence, which accepts only non-negative integers."""
    for value in values:
        if value < 0:
            raise ValueError(f"seeds must be non-negative, got {value}")
    return [int(v) for v in values]


# --------------------------------------------------------------------------------------------------------------
# Decoding


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


# --------------------------------------------------------------------------------------------------------------
# Batches


@dataclass
class Batch:
    """Waveforms `(batch, time)` float32 with true `lengths (batch,)` int64 in samples, and the item ids."""

    waveforms: torch.Tensor
    lengths: torch.Tensor
    ids: list[str]

    def pin_memory(self) -> Batch:
        """Page-locked copy (what `DataLoader(pin_memory=True)` calls), so the copy to the GPU is asynchronous."""
        return Batch(self.waveforms.pin_memory(), self.lengths.pin_memory(), self.ids)


def _planned_samples(item: AudioItem, sample_rate: int) -> int:
    """The item's length at `sample_rate` as soxr will produce it; serving re-checks against the decoded array."""
    return max(1, round(item.duration_s * sample_rate))


class TrainBatches:
    """Infinite, exactly resumable stream of unpadded training batches of similar-duration utterances.

    Why this shape: SSL distillation runs the whole batch through the conv front end, so padding is wasted
    compute; DPHuBERT instead crops every utterance of a batch to the shortest one. Grouping similar durations
    keeps that crop small. Plan of one epoch (a pure function of seed, epoch and the catalog, which is what makes
    resuming exact without saving any generator state):

    1. Utterances shorter than `min_utterance_s` are excluded once; longer than `max_utterance_s` count as
       `max_utterance_s` (they are randomly cropped when served).
    2. Items fall into geometric duration buckets (`bucket_ratio` wide: cropping to the shortest of a batch
       discards under 1 - 1/bucket_ratio of any utterance). Each bucket has a fixed batch size
       max(1, floor(batch_seconds / longest in bucket)), so a batch cropped to its shortest never exceeds the
       budget.
    3. Per epoch, each bucket is shuffled and cut into batches; the few items left over join the front of the
       next (longer) bucket instead of forming a small batch of their own, so only the last batch of the epoch
       can be short; at most one batch per bucket mixes durations from neighbouring buckets. How many items flow
       into each bucket does not depend on the shuffle, so the number of batches per epoch is constant.
    4. The epoch's batch list is shuffled; rank r of `world_size` takes batches r, r + world_size, ...
       (equal counts per rank, the remainder dropped).
    5. Serving a batch draws crop offsets from a generator seeded by (seed, epoch, batch index), so a batch is
       the same whenever it is served.
    """

    def __init__(
        self,
        catalog: AudioCatalog,
        *,
        sample_rate: int = 16000,
        batch_seconds: float = 160.0,
        min_utterance_s: float = 2.0,
        max_utterance_s: float = 15.6,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        bucket_ratio: float = 1.1,
        cache_bytes: int = 2 * 1024**3,
        speed_perturbation: float = 0.0,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be > 0, got {batch_seconds}")
        if not 0 <= min_utterance_s <= max_utterance_s or max_utterance_s <= 0:
            raise ValueError(
                f"need 0 <= min_utterance_s <= max_utterance_s and max_utterance_s > 0, "
                f"got {min_utterance_s} and {max_utterance_s}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        if bucket_ratio <= 1.0:
            raise ValueError(f"bucket_ratio must be > 1, got {bucket_ratio}")
        if not 0.0 <= speed_perturbation < 0.5:
            raise ValueError(f"speed_perturbation must be in [0, 0.5), got {speed_perturbation}")
        _seed_words(seed)
        self.speed_perturbation = float(speed_perturbation)
        self.sample_rate = sample_rate
        self.batch_seconds = float(batch_seconds)
        self.min_utterance_s = float(min_utterance_s)
        self.max_utterance_s = float(max_utterance_s)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.bucket_ratio = float(bucket_ratio)
        self.cache = WaveformCache(cache_bytes)

        self.items = [item for item in catalog.items if item.duration_s >= min_utterance_s]
        if not self.items:
            raise AudioError(
                f"no utterance of at least {min_utterance_s} s among {len(catalog.items)} "
                f"(longest {max((i.duration_s for i in catalog.items), default=0.0):.2f} s)"
            )
        self._max_samples = max(1, round(max_utterance_s * sample_rate))
        self._budget_samples = max(1, math.floor(batch_seconds * sample_rate))
        self._cropped = [min(_planned_samples(item, sample_rate), self._max_samples) for item in self.items]
        self._buckets = self._make_buckets()
        total, carried = 0, 0
        for members, size in self._buckets:
            total, carried = total + (carried + len(members)) // size, (carried + len(members)) % size
        total += carried > 0
        self.batches_per_epoch = total // world_size
        if self.batches_per_epoch == 0:
            raise AudioError(f"{total} batches per epoch cannot be shared by {world_size} ranks")
        self.fingerprint = self._fingerprint()

        self.epoch = 0
        self.position = 0
        self._plan_epoch: int | None = None
        self._plan: list[tuple[int, list[int]]] = []

    def _make_buckets(self) -> list[tuple[list[int], int]]:
        """(member indices, batch size) per non-empty geometric duration bucket, shortest bucket first."""
        shortest = min(self._cropped)
        members: dict[int, list[int]] = {}
        for index, samples in enumerate(self._cropped):
            # The tiny epsilon keeps an item exactly on a bucket edge from drifting across it with rounding.
            key = math.floor(math.log(samples / shortest) / math.log(self.bucket_ratio) + 1e-9)
            members.setdefault(key, []).append(index)
        buckets = []
        for key in sorted(members):
            longest = max(self._cropped[i] for i in members[key])
            buckets.append((members[key], max(1, self._budget_samples // longest)))
        return buckets

    def _fingerprint(self) -> str:
        """Identifies everything the plan depends on, so a state from another dataset or setting is refused."""
        fields: list[Any] = [
            self.sample_rate,
            self.batch_seconds,
            self.min_utterance_s,
            self.max_utterance_s,
            self.bucket_ratio,
            [[item.id, samples] for item, samples in zip(self.items, self._cropped, strict=True)],
        ]
        if self.speed_perturbation:  # absent when off: states saved before the option existed still match
            fields.append(["speed_perturbation", self.speed_perturbation])
        material = json.dumps(fields)
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    def _epoch_plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        """This rank's batches of `epoch`: (index in the epoch's full batch list, item indices)."""
        if self._plan_epoch == epoch:
            return self._plan
        rng = np.random.default_rng(_seed_words(self.seed, epoch))
        batches: list[list[int]] = []
        carried: list[int] = []
        for members, size in self._buckets:
            pool = carried + [members[j] for j in rng.permutation(len(members))]
            full = len(pool) // size * size
            batches.extend(pool[start : start + size] for start in range(0, full, size))
            carried = pool[full:]
        if carried:
            batches.append(carried)
        order = rng.permutation(len(batches))
        used = self.batches_per_epoch * self.world_size
        self._plan = [(int(j), batches[order[j]]) for j in range(self.rank, used, self.world_size)]
        self._plan_epoch = epoch
        return self._plan

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> Batch:
        batch = self.serve(self.consumed)
        self.seek(self.consumed + 1)
        return batch

    @property
    def consumed(self) -> int:
        """Batches served since epoch 0 began: the stream's position as one number."""
        return self.epoch * self.batches_per_epoch + self.position

    def seek(self, consumed: int) -> None:
        """Make `consumed` batches count as served (the next one is `serve(consumed)`)."""
        self.epoch, self.position = divmod(consumed, self.batches_per_epoch)

    def serve(self, index: int) -> Batch:
        """Batch number `index` of the stream (0-based over all epochs), without moving the stream. A pure
        function of the plan, so a worker process holding a copy of this object serves the same batch."""
        epoch, position = divmod(index, self.batches_per_epoch)
        batch_index, members = self._epoch_plan(epoch)[position]
        return self._serve(epoch, batch_index, members)

    def __getstate__(self) -> dict[str, Any]:
        """Copies sent to loader worker processes start with an empty cache of the same budget."""
        state = self.__dict__.copy()
        state["cache"] = WaveformCache(self.cache.max_bytes)
        return state

    def _serve(self, epoch: int, batch_index: int, members: Sequence[int]) -> Batch:
        waveforms = [self.cache.get(self.items[i], self.sample_rate) for i in members]
        planned = min(self._cropped[i] for i in members)
        crop = min(planned, *(w.shape[0] for w in waveforms))
        if crop <= 0:
            raise AudioError(f"decoded an empty waveform for {[self.items[i].id for i in members]}")
        rng = np.random.default_rng(_seed_words(self.seed, epoch, batch_index))
        rows = []
        for waveform in waveforms:
            offset = int(rng.integers(0, waveform.shape[0] - crop + 1))
            rows.append(waveform[offset : offset + crop])
        if self.speed_perturbation:
            rows = self._speed_perturbed(rows, crop, rng)
        stacked = np.stack(rows)  # (batch, time): a fresh array, the cache's stay untouched
        return Batch(
            waveforms=torch.from_numpy(stacked),
            lengths=torch.full((len(rows),), crop, dtype=torch.int64),
            ids=[self.items[i].id for i in members],
        )

    def _speed_perturbed(self, rows: list[np.ndarray], crop: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Each row played at a speed drawn uniformly from 1 ± speed_perturbation (tempo and pitch together, as
        Kaldi's speed perturbation: resampled from rate * f to rate), then all cut to the shortest and to at most
        `crop` samples, so the batch keeps its audio budget. Teacher and student see the same perturbed audio."""
        factors = rng.uniform(1.0 - self.speed_perturbation, 1.0 + self.speed_perturbation, size=len(rows))
        out = [soxr.resample(row, self.sample_rate * float(f), self.sample_rate, quality="HQ").astype(np.float32)
               for row, f in zip(rows, factors)]
        length = min(crop, *(r.shape[0] for r in out))
        return [r[:length] for r in out]

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands; epoch and position recompute everything else.

        Ranks advance in lockstep, so rank 0's state resumes every rank (rank itself is not checked).
        """
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "batches_per_epoch": self.batches_per_epoch,
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` left off; CheckpointError if it came from a different stream."""
        for key in ("seed", "world_size", "batches_per_epoch", "fingerprint"):
            if state.get(key) != getattr(self, key):
                raise CheckpointError(
                    f"batch state does not match this dataset and settings: {key} is {state.get(key)!r} "
                    f"in the checkpoint, {getattr(self, key)!r} here"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise CheckpointError(f"batch state out of range: epoch {epoch}, position {position}")
        self.epoch, self.position = epoch, position


def iter_padded_batches(
    catalog: AudioCatalog,
    *,
    sample_rate: int = 16000,
    batch_seconds: float = 160.0,
    max_utterance_s: float | None = None,
    cache: WaveformCache | None = None,
) -> Iterator[Batch]:
    """One pass over every item, longest first, zero-padded to the longest of each batch.

    For calibration and evaluation, where every frame counts and nothing may be cropped at random. Sorting by
    duration keeps padding small; longest first makes an out-of-memory batch show up at once rather than at the
    end. A batch holds as many items as fit `count * longest <= batch_seconds` (at least one). Items longer than
    `max_utterance_s` keep their first `max_utterance_s`. The order is deterministic (duration, then id).
    """
    if batch_seconds <= 0:
        raise ValueError(f"batch_seconds must be > 0, got {batch_seconds}")
    budget = max(1, math.floor(batch_seconds * sample_rate))
    limit = None if max_utterance_s is None else max(1, round(max_utterance_s * sample_rate))
    cache = cache if cache is not None else WaveformCache(0)

    def planned(item: AudioItem) -> int:
        samples = _planned_samples(item, sample_rate)
        return samples if limit is None else min(samples, limit)

    ordered = sorted(catalog.items, key=lambda item: (-planned(item), item.id))
    group: list[AudioItem] = []
    for item in ordered:
        if group and (len(group) + 1) * planned(group[0]) > budget:
            yield _padded(group, sample_rate, limit, cache)
            group = []
        group.append(item)
    if group:
        yield _padded(group, sample_rate, limit, cache)


def _padded(items: list[AudioItem], sample_rate: int, limit: int | None, cache: WaveformCache) -> Batch:
    waveforms = [cache.get(item, sample_rate) for item in items]
    if limit is not None:
        waveforms = [w[:limit] for w in waveforms]
    lengths = [w.shape[0] for w in waveforms]
    stacked = np.zeros((len(waveforms), max(lengths)), dtype=np.float32)  # (batch, time)
    for row, waveform in enumerate(waveforms):
        stacked[row, : waveform.shape[0]] = waveform
    return Batch(
        waveforms=torch.from_numpy(stacked),
        lengths=torch.tensor(lengths, dtype=torch.int64),
        ids=[item.id for item in items],
    )


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
    "iter_padded_batches",
    "load_waveform",
    "scan_audio",
]
