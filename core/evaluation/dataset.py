"""The labelled side of evaluation: which utterances train and test the probes, and their phones and speakers.

Any dataset directory with a `manifest.jsonl` works (read by `core.data.scan_audio`, which also drops unusable
files): rows need `split`; phoneme recognition needs a phone field (default `arpabet`, space-separated symbols
or a JSON list); speaker identification needs `speaker`. A missing phone field is an error that names the
field, because a silent skip would look like a finished evaluation. Missing speakers only skip SID, with a
note, because many ASR-style manifests simply do not have them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.data import AudioCatalog, AudioItem, scan_audio
from core.errors import AudioError

TASKS = ("pr", "sid")


@dataclass
class ProbeData:
    """Utterances and labels of one evaluation: everything the probes need besides the features."""

    catalog: AudioCatalog  # train + test items: the ones to extract features for
    train: list[AudioItem]
    test: list[AudioItem]
    tasks: tuple[str, ...]  # the tasks that can run (requested, minus those skipped)
    phones: dict[str, list[str]] = field(default_factory=dict)  # id -> phone symbols (PR)
    speakers: dict[str, str] = field(default_factory=dict)  # id -> speaker (SID)
    notes: list[str] = field(default_factory=list)

    def phone_pairs(self, items: Sequence[AudioItem]) -> list[tuple[str, list[str]]]:
        return [(item.id, self.phones[item.id]) for item in items]

    def speaker_pairs(self, items: Sequence[AudioItem]) -> list[tuple[str, str]]:
        return [(item.id, self.speakers[item.id]) for item in items if item.id in self.speakers]

    def summary(self) -> dict[str, Any]:
        return {
            "train_utterances": len(self.train),
            "test_utterances": len(self.test),
            "train_hours": sum(item.duration_s for item in self.train) / 3600.0,
            "test_hours": sum(item.duration_s for item in self.test) / 3600.0,
            "skipped_files": self.catalog.summary()["skipped"],
        }


def _phone_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(token, str) for token in value):
        return list(value)
    return None


def load_probe_data(
    dataset: Path,
    *,
    tasks: Sequence[str] = TASKS,
    phone_field: str = "arpabet",
    train_split: str = "train",
    test_split: str = "test",
) -> ProbeData:
    """Read and check the labels of `dataset` for `tasks`.

    Raises AudioError when a split is empty, or when PR is asked for and some train/test rows lack
    `phone_field` (the message names the field and an example row).
    """
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, found {list(tasks)}")
    catalog = scan_audio(dataset)
    train = catalog.filter(split=train_split).items
    test = catalog.filter(split=test_split).items
    if not train or not test:
        present = sorted({str(item.split) for item in catalog.items})
        empty = train_split if not train else test_split
        raise AudioError(f"{dataset}: no usable utterance in split {empty!r}; splits present: {present}")
    notes: list[str] = []
    if catalog.skipped:
        notes.append(
            f"{len(catalog.skipped)} files skipped by the audio scan: {catalog.summary()['skipped']}"
        )
    used = replace(catalog, items=train + test)
    data = ProbeData(catalog=used, train=train, test=test, tasks=tuple(tasks), notes=notes)

    if "pr" in tasks:
        for item in train + test:
            phones = _phone_list(item.extra.get(phone_field))
            if phones is None:
                lacking = sum(1 for i in train + test if _phone_list(i.extra.get(phone_field)) is None)
                raise AudioError(
                    f"phoneme recognition needs the manifest field {phone_field!r} (space-separated phones "
                    "or a "
                    f"list of strings) on every {train_split}/{test_split} row; {lacking} rows lack it, e.g. "
                    f"{item.id!r}. Choose the field with --phone-field, or drop 'pr' from the tasks (and ctc "
                    "from --finetune)."
                )
            data.phones[item.id] = phones

    if "sid" in tasks:
        labelled = {item.id: item.speaker for item in train + test if item.speaker}
        train_labelled = sum(1 for item in train if item.id in labelled)
        test_labelled = sum(1 for item in test if item.id in labelled)
        if not train_labelled or not test_labelled:
            data.tasks = tuple(task for task in data.tasks if task != "sid")
            notes.append(
                "speaker identification skipped: the manifest has no `speaker` on the "
                f"{train_split if not train_labelled else test_split} rows"
            )
        else:
            data.speakers = labelled  # type: ignore[assignment]
            unlabelled = len(train) + len(test) - len(labelled)
            if unlabelled:
                notes.append(f"speaker identification leaves out {unlabelled} utterances without a speaker")
    return data


__all__ = ["ProbeData", "TASKS", "load_probe_data"]
