"""The usable utterances of a user's data: `scan_audio(source) -> AudioCatalog`.

A source is a directory of audio files (searched recursively), a dataset directory holding `manifest.jsonl`
(one JSON object per line with at least `path`, relative to the dataset directory), or a `.jsonl` manifest
file. Datasets come from users of a service, so a manifest may not point outside its dataset directory.
Headers (and, optionally, one decode pass) of every file are read; bad files are recorded as `SkippedFile`,
never raised.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from core.errors import AudioError

MANIFEST_NAME = "manifest.jsonl"
SILENCE_PEAK = 1e-4
"""A file whose peak absolute sample stays below this (full scale = 1.0) carries nothing to distil."""

_BASE_EXTENSIONS = (".wav", ".flac", ".ogg")
# libsndfile decodes MP3 only from 1.1.0 on; offering .mp3 where it cannot would turn every mp3 into
# "unreadable".
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    _BASE_EXTENSIONS + ((".mp3",) if "MP3" in sf.available_formats() else ())
)

# Reasons a file is left out; stable strings, shown to users and counted in summaries.
SKIP_REASONS = (
    # looks like audio but the decoder fails (corrupt, truncated, unsupported codec, permissions)
    "unreadable",
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


# label_values: a field with more distinct values than this is not listed (a transcript, an id)
LABEL_VALUES_KEPT = 1000


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

    def label_values(self, limit: int = LABEL_VALUES_KEPT) -> dict[str, list[str] | None]:
        """The distinct values of each manifest field that can name an utterance's class (`speaker` and every
        other field holding strings or integers), sorted; None for a field with more than `limit` (a
        transcript, an id): what the service keeps of a dataset to check a classifier's labels against at job
        creation, without reading the dataset again."""
        values: dict[str, set[str] | None] = {}
        for item in self.items:
            fields = {"speaker": item.speaker, **item.extra}
            for name, value in fields.items():
                if value is None or isinstance(value, (float, bool, list, dict)):
                    continue
                seen = values.setdefault(name, set())
                if seen is None:
                    continue
                seen.add(str(value))
                if len(seen) > limit:
                    values[name] = None
        return {name: None if seen is None else sorted(seen) for name, seen in sorted(values.items())}

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
        order = [by_id[j] for j in np.random.default_rng(seed_words(seed)).permutation(len(by_id))]
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


# ------------------------------------------------------------------------------------------------------------
# Scanning


def scan_audio(
    source: Path | str,
    *,
    min_seconds: float = 0.5,
    max_seconds: float | None = None,
    check_silence: bool = True,
) -> AudioCatalog:
    """Catalogue the usable audio of `source`, recording every file left out and why.

    A bad file never raises: users' datasets routinely hold a few broken or stray files and one of them must
    not sink a job. With `check_silence` each file is decoded once, in blocks (bounded memory), which also
    catches corrupt or truncated bodies now rather than mid-training; without it only headers are read.

    Raises AudioError when `source` does not exist or is not a directory / `.jsonl` manifest, when the
    manifest itself cannot be read, or when no usable audio remains (the message counts the skipped files by
    reason).
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
    tool), so that field is dropped; fields we do not know go to `extra` (text, phonemes, ...) for later
    stages.
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


def seed_words(*values: int) -> list[int]:
    """Seed material for numpy's SeedSequence, which accepts only non-negative integers."""
    for value in values:
        if value < 0:
            raise ValueError(f"seeds must be non-negative, got {value}")
    return [int(v) for v in values]


__all__ = [
    "AUDIO_EXTENSIONS",
    "MANIFEST_NAME",
    "SILENCE_PEAK",
    "SKIP_REASONS",
    "AudioCatalog",
    "AudioItem",
    "SkippedFile",
    "scan_audio",
    "seed_words",
]
