"""Batches of waveforms for the stages.

    TrainBatches(catalog)     -> Batch, ...  infinite, duration-bucketed, cropped (no padding), resumable,
                                             optionally speed-perturbed (training)
    iter_padded_batches(...)  -> Batch, ...  one deterministic pass, zero-padded (calibration, evaluation)
    WholeUtterances(...)      .serve(step) -> Batch of one whole utterance (a supervised term's transcripts
                                             fit only uncropped audio)

Shapes use the project's words: `waveforms (batch, time)`, `lengths (batch,)` in samples.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import soxr
import torch

from core.data.catalog import AudioCatalog, AudioItem, seed_words
from core.data.waveforms import WaveformCache
from core.errors import AudioError, CheckpointError


@dataclass
class Batch:
    """Waveforms `(batch, time)` float32 with true `lengths (batch,)` int64 in samples, and the item ids."""

    waveforms: torch.Tensor
    lengths: torch.Tensor
    ids: list[str]

    def pin_memory(self) -> Batch:
        """Page-locked copy (what `DataLoader(pin_memory=True)` calls), so the copy to the GPU is
        asynchronous."""
        return Batch(self.waveforms.pin_memory(), self.lengths.pin_memory(), self.ids)


def _planned_samples(item: AudioItem, sample_rate: int) -> int:
    """The item's length at `sample_rate` as soxr will produce it; serving re-checks against the decoded
    array."""
    return max(1, round(item.duration_s * sample_rate))


class TrainBatches:
    """Infinite, exactly resumable stream of unpadded training batches of similar-duration utterances.

    Why this shape: SSL distillation runs the whole batch through the conv front end, so padding is wasted
    compute; DPHuBERT instead crops every utterance of a batch to the shortest one. Grouping similar durations
    keeps that crop small. Plan of one epoch (a pure function of seed, epoch and the catalog, which is what
    makes resuming exact without saving any generator state):

    1. Utterances shorter than `min_utterance_s` are excluded once; longer than `max_utterance_s` count as
       `max_utterance_s` (they are randomly cropped when served).
    2. Items fall into geometric duration buckets (`bucket_ratio` wide: cropping to the shortest of a batch
       discards under 1 - 1/bucket_ratio of any utterance). Each bucket has a fixed batch size
       max(1, floor(batch_seconds / longest in bucket)), so a batch cropped to its shortest never exceeds the
       budget.
    3. Per epoch, each bucket is shuffled and cut into batches; the few items left over join the front of the
       next (longer) bucket instead of forming a small batch of their own, so only the last batch of the epoch
       can be short; at most one batch per bucket mixes durations from neighbouring buckets. How many items
       flow into each bucket does not depend on the shuffle, so the number of batches per epoch is constant.
    4. The epoch's batch list is shuffled and cut into optimiser steps of `world_size * accumulation`
       batches (the global batch; the remainder dropped). Within step s, rank r takes batches
       s * G + r + k * world_size for k < accumulation: its micro-batches, in the order it adds them up. The
       global batches are the same for any split of G into ranks x accumulation (1 x 2 serves what 2 x 1
       serve), which is what lets a resumed run change its number of processes and keep its recipe.
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
        accumulation: int = 1,
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
        if accumulation < 1:
            raise ValueError(f"accumulation must be >= 1, got {accumulation}")
        if bucket_ratio <= 1.0:
            raise ValueError(f"bucket_ratio must be > 1, got {bucket_ratio}")
        if not 0.0 <= speed_perturbation < 0.5:
            raise ValueError(f"speed_perturbation must be in [0, 0.5), got {speed_perturbation}")
        seed_words(seed)
        self.speed_perturbation = float(speed_perturbation)
        self.sample_rate = sample_rate
        self.batch_seconds = float(batch_seconds)
        self.min_utterance_s = float(min_utterance_s)
        self.max_utterance_s = float(max_utterance_s)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.accumulation = accumulation
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
        self.total_batches = total
        self.steps_per_epoch = total // self.batches_per_step
        if self.steps_per_epoch == 0:
            raise AudioError(
                f"{total} batches per epoch cannot fill one optimiser step of {self.batches_per_step} "
                f"batches ({world_size} processes x {accumulation} accumulated)"
            )
        self.batches_per_epoch = self.steps_per_epoch * accumulation  # this rank's
        self.fingerprint = self._fingerprint()

        self.epoch = 0
        self.position = 0
        self._plan_epoch: int | None = None
        self._plan: list[tuple[int, list[int]]] = []

    @property
    def batches_per_step(self) -> int:
        """The global batch in batches: every rank's micro-batches of one optimiser step together."""
        return self.world_size * self.accumulation

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
        """Identifies everything the plan depends on, so a state from another dataset or setting is
        refused."""
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
        rng = np.random.default_rng(seed_words(self.seed, epoch))
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
        g, w, a = self.batches_per_step, self.world_size, self.accumulation
        mine = [s * g + self.rank + k * w for s in range(self.steps_per_epoch) for k in range(a)]
        self._plan = [(j, batches[order[j]]) for j in mine]
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
        rng = np.random.default_rng(seed_words(self.seed, epoch, batch_index))
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

    def _speed_perturbed(
        self, rows: list[np.ndarray], crop: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """Each row played at a speed drawn uniformly from 1 ± speed_perturbation (tempo and pitch together,
        as Kaldi's speed perturbation: resampled from rate * f to rate), then all cut to the shortest and to
        at most `crop` samples, so the batch keeps its audio budget. Teacher and student see the same
        perturbed audio."""
        factors = rng.uniform(1.0 - self.speed_perturbation, 1.0 + self.speed_perturbation, size=len(rows))
        out = [
            soxr.resample(row, self.sample_rate * float(f), self.sample_rate, quality="HQ").astype(np.float32)
            for row, f in zip(rows, factors)
        ]
        length = min(crop, *(r.shape[0] for r in out))
        return [r[:length] for r in out]

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands; epoch and position recompute everything else.

        Ranks advance in lockstep, so rank 0's state resumes every rank (rank itself is not checked), and a
        stream of the same global batch split otherwise (another number of processes, each accumulating
        more or fewer batches) resumes from it at the same optimiser step.
        """
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "accumulation": self.accumulation,
            "batches_per_step": self.batches_per_step,
            "batches_per_epoch": self.batches_per_epoch,
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` left off; CheckpointError if it came from a different stream.

        `state` may come from another split of the global batch (e.g. 2 processes, where this stream is one
        process accumulating 2 batches): it resumes at the same optimiser step. A state saved before
        accumulation existed has a global batch of its `world_size` batches."""
        accumulation = int(state.get("accumulation", 1))
        saved = {
            "seed": state.get("seed"),
            "fingerprint": state.get("fingerprint"),
            "batches_per_step": state.get("batches_per_step", int(state.get("world_size", 0)) * accumulation),
        }
        for key, value in saved.items():
            if value != getattr(self, key):
                raise CheckpointError(
                    f"batch state does not match this dataset and settings: {key} is {value!r} "
                    f"in the checkpoint, {getattr(self, key)!r} here"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < int(state.get("batches_per_epoch", 0)) or position % accumulation:
            raise CheckpointError(f"batch state out of range: epoch {epoch}, position {position}")
        self.epoch, self.position = epoch, position // accumulation * self.accumulation


class WholeUtterances:
    """One whole (uncropped, unperturbed) utterance per step for each rank, from `ids` of `catalog`: what a
    CTC head's supervised term trains on, since a transcript fits only the utterance it transcribes. A pure
    function of (seed, step, rank), so a resumed stage serves what it would have served: the n utterances
    are visited in a fresh seeded order every n draws (draw = step x world_size + rank)."""

    def __init__(
        self,
        catalog: AudioCatalog,
        ids: Sequence[str],
        sample_rate: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        cache: WaveformCache | None = None,
    ) -> None:
        wanted = set(ids)
        self.items = sorted((item for item in catalog.items if item.id in wanted), key=lambda item: item.id)
        if not self.items:
            raise ValueError("no utterance of the catalog has the given ids")
        self.sample_rate, self.seed = sample_rate, seed
        self.rank, self.world_size = rank, world_size
        self.cache = cache if cache is not None else WaveformCache()

    def __len__(self) -> int:
        return len(self.items)

    def index(self, step: int) -> int:
        draw = step * self.world_size + self.rank
        n = len(self.items)
        order = np.random.default_rng(seed_words(self.seed, draw // n)).permutation(n)
        return int(order[draw % n])

    def serve(self, step: int) -> Batch:
        item = self.items[self.index(step)]
        waveform = self.cache.get(item, self.sample_rate)
        if waveform.shape[0] == 0:
            raise AudioError(f"decoded an empty waveform for {item.id}")
        return Batch(
            waveforms=torch.from_numpy(np.array(waveform, dtype=np.float32))[None],
            lengths=torch.tensor([waveform.shape[0]], dtype=torch.int64),
            ids=[item.id],
        )


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
    duration keeps padding small; longest first makes an out-of-memory batch show up at once rather than at
    the end. A batch holds as many items as fit `count * longest <= batch_seconds` (at least one). Items
    longer than `max_utterance_s` keep their first `max_utterance_s`. The order is deterministic (duration,
    then id).
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


__all__ = ["Batch", "TrainBatches", "iter_padded_batches"]
