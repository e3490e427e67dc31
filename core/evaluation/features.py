"""Frozen features: run a representation model once over a dataset and keep every representation.

Probing trains many small heads (two tasks, several seeds, a learned mix of all L+1 layers) on the same frozen
encoder output, so the encoder runs once per dataset and its output stays in memory. Each utterance keeps a
(rep, frame, feature) stack in float16 on the CPU, trimmed to its true frame count: half the memory of
float32, no padding, and no device memory held while the probes train. One hour of audio through a
13-representation, 256-wide model is about 1.2 GB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch

from core.data import AudioCatalog, AudioItem, iter_padded_batches

SAMPLE_RATE = 16000

Progress = Callable[[int, int], None]
"""progress(done, total) in utterances."""


@runtime_checkable
class RepresentationModel(Protocol):
    """What evaluation needs of an encoder: all L+1 representations for a padded batch, and its size.

    Teachers loaded by `core.models.load_model`, exported students and `Fbank` all satisfy it. The model
    normalises waveforms itself if it needs to, so evaluation feeds raw audio to every model alike.
    """

    config: Any

    def __call__(
        self, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """waveforms (batch, time) float32, lengths (batch,) -> ([rep (batch, frame, feature)] * (L+1),
        frame_lengths)."""
        ...

    def num_params(self) -> int: ...


@dataclass
class FeatureSet:
    """Every representation of one model for a set of utterances, keyed by utterance id.

    `reps[id]` is (rep, frame, feature) float16 on the CPU, frames trimmed to the utterance's frame length.
    """

    name: str
    reps: dict[str, torch.Tensor]
    num_reps: int
    dim: int

    def __len__(self) -> int:
        return len(self.reps)

    def __getitem__(self, utterance_id: str) -> torch.Tensor:
        return self.reps[utterance_id]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.reps.values())


def _as_catalog(items: AudioCatalog | Sequence[AudioItem]) -> AudioCatalog:
    if isinstance(items, AudioCatalog):
        return items
    items = list(items)
    root = items[0].path.parent if items else None
    return AudioCatalog(items=items, skipped=[], root=root)  # type: ignore[arg-type]


def iter_model_outputs(
    model: RepresentationModel,
    items: AudioCatalog | Sequence[AudioItem],
    *,
    device: str | torch.device = "cpu",
    batch_seconds: float = 32.0,
    sample_rate: int = SAMPLE_RATE,
) -> Iterator[tuple[list[str], list[torch.Tensor], torch.Tensor]]:
    """(ids, reps [(batch, frame, feature)] * (L+1), frame_lengths (batch,)) per padded batch, no grad.

    Batches group utterances of similar duration (longest first) so padding stays small; the model is put in
    eval mode for the pass and its previous mode restored after.
    """
    catalog = _as_catalog(items)
    module = model if isinstance(model, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        for batch in iter_padded_batches(catalog, sample_rate=sample_rate, batch_seconds=batch_seconds):
            waveforms = batch.waveforms.to(device)  # (batch, time)
            lengths = batch.lengths.to(device)  # (batch,)
            with torch.no_grad():
                reps, frame_lengths = model(waveforms, lengths)
            _check_outputs(reps, frame_lengths, len(batch.ids))
            yield batch.ids, reps, frame_lengths
    finally:
        if module is not None:
            module.train(was_training)


def _check_outputs(reps: Sequence[torch.Tensor], frame_lengths: torch.Tensor, batch: int) -> None:
    if not reps:
        raise ValueError("the model returned no representations")
    first = reps[0]
    for index, rep in enumerate(reps):
        if (
            rep.dim() != 3
            or rep.shape[0] != batch
            or rep.shape[:2] != first.shape[:2]
            or rep.shape[2] != first.shape[2]
        ):
            raise ValueError(
                f"representation {index}: expected shape ({batch}, {first.shape[1]}, {first.shape[2]}) "
                f"(batch, frame, feature) like representation 0, found {tuple(rep.shape)}"
            )
    if frame_lengths.shape != (batch,):
        raise ValueError(f"expected frame_lengths of shape ({batch},), found {tuple(frame_lengths.shape)}")
    if int(frame_lengths.max()) > first.shape[1]:
        raise ValueError(
            f"frame_lengths reach {int(frame_lengths.max())} but the representations have {first.shape[1]} "
            "frames"
        )


def extract_features(
    model: RepresentationModel,
    items: AudioCatalog | Sequence[AudioItem],
    *,
    name: str = "model",
    device: str | torch.device = "cpu",
    batch_seconds: float = 32.0,
    sample_rate: int = SAMPLE_RATE,
    progress: Progress | None = None,
) -> FeatureSet:
    """Run `model` once over `items` and keep every representation of every utterance (float16, CPU).

    Raises ValueError if an utterance yields no frame (it would silently vanish from the probes).
    """
    catalog = _as_catalog(items)
    total = len(catalog.items)
    reps_by_id: dict[str, torch.Tensor] = {}
    num_reps = dim = 0
    for ids, reps, frame_lengths in iter_model_outputs(
        model, catalog, device=device, batch_seconds=batch_seconds, sample_rate=sample_rate
    ):
        stacked = torch.stack(reps, dim=1).to("cpu", torch.float16)  # (batch, rep, frame, feature)
        num_reps, dim = stacked.shape[1], stacked.shape[3]
        for row, utterance_id in enumerate(ids):
            frames = int(frame_lengths[row])
            if frames <= 0:
                raise ValueError(f"utterance {utterance_id!r} gives no frame: too short for this model")
            reps_by_id[utterance_id] = stacked[row, :, :frames].clone()  # (rep, frame, feature)
        if progress is not None:
            progress(len(reps_by_id), total)
    return FeatureSet(name=name, reps=reps_by_id, num_reps=num_reps, dim=dim)


def subset_catalog(catalog: AudioCatalog, ids: set[str]) -> AudioCatalog:
    """The catalog restricted to `ids`, catalog order kept."""
    return replace(catalog, items=[item for item in catalog.items if item.id in ids])


__all__ = [
    "FeatureSet",
    "Progress",
    "RepresentationModel",
    "SAMPLE_RATE",
    "extract_features",
    "iter_model_outputs",
    "subset_catalog",
]
