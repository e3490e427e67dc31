"""SUPERB-style probes on frozen features: phoneme recognition (CTC) and speaker identification.

Convention (SUPERB, Yang et al. 2021): the encoder is frozen; a probe sees a learnable softmax-weighted sum of
all L+1 representations, each first normalised per frame with a parameter-free layer norm (so a layer with a
large scale cannot dominate the mix before the weights learn anything); the weights start equal. What the
probe can read linearly (or with one small BiLSTM) from that mix is the measure of the encoder, and the
learned weights show which layers carry the task.

- PR: a head per frame (linear by default, or one BiLSTM layer) trained with CTC over the phone vocabulary of
  the train split (blank = 0); greedy decoding; corpus PER on the test split.
- SID: mean over frames of the mix, then a linear classifier over the train speakers with cross-entropy;
  accuracy on the test split. A test speaker the train split never saw cannot be predicted: it counts as an
  error and is reported, so a bad split is visible rather than silently inflating or deflating the number.
- SID per layer (optional): the same speaker probe on each representation alone, to see where speaker identity
  lives (the learned mix only says what the probe leaned on, not what each layer knows).

Training is deterministic given a seed: parameters are initialised from `seed` inside a forked RNG (callers'
global RNG is untouched) and batches are shuffled with a dedicated generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from core.errors import TrainingError
from core.evaluation.features import FeatureSet
from core.evaluation.per import ctc_greedy_decode, error_rate

BLANK = "<blank>"

ModuleT = TypeVar("ModuleT", bound=nn.Module)

EpochProgress = Callable[[int, int, float], None]
"""progress(epoch, epochs, mean training loss of that epoch)."""


# ------------------------------------------------------------------------------------------------------------
# Modules


class WeightedLayerSum(nn.Module):
    """Softmax-weighted sum of L+1 representations, each layer-normalised per frame without affine.

    The weights are logits initialised to zero, i.e. an equal mix at the start.
    """

    def __init__(self, num_reps: int, *, layer_norm: bool = True) -> None:
        super().__init__()
        if num_reps < 1:
            raise ValueError(f"expected at least one representation, found {num_reps}")
        self.layer_norm = layer_norm
        self.logits = nn.Parameter(torch.zeros(num_reps))

    def normalise(self, reps: torch.Tensor) -> torch.Tensor:
        """(..., feature) -> the same shape, each vector normalised if `layer_norm`."""
        return F.layer_norm(reps, reps.shape[-1:]) if self.layer_norm else reps

    def weights(self) -> torch.Tensor:
        """(rep,) softmax weights."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, reps: torch.Tensor, *, normalised: bool = False) -> torch.Tensor:
        """(batch, rep, frame, feature) -> (batch, frame, feature). `normalised`: `normalise` was already
        applied."""
        if reps.dim() != 4 or reps.shape[1] != self.logits.shape[0]:
            raise ValueError(
                f"expected reps of shape (batch, {self.logits.shape[0]}, frame, feature), found "
                f"{tuple(reps.shape)}"
            )
        reps = reps if normalised else self.normalise(reps)
        return torch.einsum("r,brtf->btf", self.weights(), reps)  # (batch, frame, feature)

    def mix_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """(batch, rep, feature) per-layer pooled vectors (already normalised) -> (batch, feature)."""
        return torch.einsum("r,brf->bf", self.weights(), pooled)  # (batch, feature)


class PhoneProbe(nn.Module):
    """Weighted layer sum, then a frame-wise head producing CTC logits over blank + phones."""

    def __init__(
        self,
        num_reps: int,
        dim: int,
        vocab_size: int,
        *,
        head: Literal["linear", "lstm"] = "linear",
        lstm_hidden: int = 128,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        self.mix = WeightedLayerSum(num_reps, layer_norm=layer_norm)
        self.lstm: nn.LSTM | None = None
        if head == "lstm":
            self.lstm = nn.LSTM(dim, lstm_hidden, num_layers=1, batch_first=True, bidirectional=True)
            self.out = nn.Linear(2 * lstm_hidden, vocab_size)
        elif head == "linear":
            self.out = nn.Linear(dim, vocab_size)
        else:
            raise ValueError(f"head must be 'linear' or 'lstm', found {head!r}")

    def forward(
        self, reps: torch.Tensor, frame_lengths: torch.Tensor, *, normalised: bool = False
    ) -> torch.Tensor:
        """reps (batch, rep, frame, feature), frame_lengths (batch,) -> logits (batch, frame, vocab).

        `normalised`: the reps already went through `self.mix.normalise` (the trainer does it once up front).
        """
        mixed = self.mix(reps, normalised=normalised)  # (batch, frame, feature)
        if self.lstm is not None:
            # Packing keeps the backward direction from reading the padding of shorter rows.
            packed = pack_padded_sequence(mixed, frame_lengths.cpu(), batch_first=True, enforce_sorted=False)
            hidden, _ = self.lstm(packed)
            mixed, _ = pad_packed_sequence(
                hidden, batch_first=True, total_length=reps.shape[2]
            )  # (batch, frame, 2*hidden)
        return self.out(mixed)  # (batch, frame, vocab)


class SpeakerProbe(nn.Module):
    """Weighted layer sum of per-layer mean-pooled vectors, then a linear classifier over speakers.

    Pooling happens before the mix: mean_t Σ_l w_l LN(r_l[t]) = Σ_l w_l mean_t LN(r_l[t]), so pooling each
    normalised layer once up front gives exactly the SUPERB mean-pooled mix at a fraction of the cost.
    """

    def __init__(self, num_reps: int, dim: int, num_speakers: int, *, layer_norm: bool = True) -> None:
        super().__init__()
        self.mix = WeightedLayerSum(num_reps, layer_norm=layer_norm)
        self.out = nn.Linear(dim, num_speakers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (batch, rep, feature): frame means of each normalised layer -> logits (batch, speaker)."""
        return self.out(self.mix.mix_pooled(pooled))  # (batch, speaker)


# ------------------------------------------------------------------------------------------------------------
# Configuration and results


@dataclass(frozen=True)
class PhoneProbeConfig:
    """Fixed schedule: no early stopping, so two models are compared after the same amount of probe
    training."""

    head: Literal["linear", "lstm"] = "linear"
    lstm_hidden: int = 128
    layer_norm: bool = True
    epochs: int = 20
    batch_size: int = 8
    lr: float = 5e-3


@dataclass(frozen=True)
class SpeakerProbeConfig:
    layer_norm: bool = True
    epochs: int = 100
    batch_size: int = 32
    lr: float = 5e-3


@dataclass
class PhoneVocabulary:
    """Phone symbols of the train split, sorted; id 0 is the CTC blank."""

    tokens: list[str]

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[str]]) -> PhoneVocabulary:
        symbols = sorted({token for sequence in sequences for token in sequence})
        if BLANK in symbols:
            raise ValueError(f"the phone set may not contain the blank symbol {BLANK!r}")
        return cls([BLANK, *symbols])

    def __len__(self) -> int:
        return len(self.tokens)

    def __post_init__(self) -> None:
        self._index = {token: i for i, token in enumerate(self.tokens)}

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def encode(self, sequence: Sequence[str]) -> list[int]:
        """Ids of known symbols; raises KeyError on a symbol outside the train set."""
        return [self._index[token] for token in sequence]

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.tokens[i] for i in ids]


@dataclass
class PhoneProbeResult:
    per: float
    layer_weights: list[float]
    vocabulary_size: int
    train_utterances: int
    test_utterances: int
    unknown_test_phones: int
    epochs: int
    steps: int
    final_train_loss: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SpeakerProbeResult:
    accuracy: float
    layer_weights: list[float]
    train_speakers: int
    train_utterances: int
    test_utterances: int
    unseen_test_speakers: int
    unseen_test_utterances: int
    epochs: int
    steps: int
    final_train_loss: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------------------
# Training


def _seeded_init(seed: int, build: Callable[[], ModuleT]) -> ModuleT:
    """Build a module with parameters drawn from `seed` without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def layer_norm_(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """In-place `F.layer_norm(x, x.shape[-1:])` without affine (same eps, biased variance); returns `x`.

    Probe batches are large (rep × frame × feature) and rebuilt every step; normalising them in place in a
    reused buffer avoids allocating (and page-faulting) a fresh copy of the features per step.
    """
    x.sub_(x.mean(dim=-1, keepdim=True))
    variance = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])  # (..., 1)
    return x.mul_(variance.add_(eps).rsqrt_())


class _Batcher:
    """Builds zero-padded float32 batches (batch, rep, frame, feature) of frozen features in one reused
    buffer.

    The returned tensor is a view of the buffer: valid until the next call, which is all one training step or
    one decoding step needs. Utterances stay float16 in the `FeatureSet`; only the batch is ever float32.
    """

    def __init__(self, features: FeatureSet, *, layer_norm: bool) -> None:
        self.features = features
        self.layer_norm = layer_norm
        self.storage = torch.empty(0)

    def __call__(self, ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        stacks = [self.features[i] for i in ids]
        lengths = torch.tensor([stack.shape[1] for stack in stacks], dtype=torch.int64)  # (batch,)
        shape = (len(stacks), self.features.num_reps, int(lengths.max()), self.features.dim)
        if self.storage.numel() < math.prod(shape):
            self.storage = torch.empty(math.prod(shape))
        batch = self.storage[: math.prod(shape)].view(shape)  # (batch, rep, frame, feature)
        for row, stack in enumerate(stacks):
            batch[row, :, : stack.shape[1]].copy_(stack)
            batch[row, :, stack.shape[1] :].zero_()
        if self.layer_norm:
            layer_norm_(batch)
        return batch, lengths


def _pooled(batcher: _Batcher, ids: Sequence[str]) -> torch.Tensor:
    """(utterance, rep, feature): the frame mean of each (normalised) representation of each utterance."""
    pooled = [batcher([utterance_id])[0][0].mean(dim=1) for utterance_id in ids]  # (rep, feature) each
    return torch.stack(pooled)


def _length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, *, pool: int = 16
) -> list[list[int]]:
    """Random batches of rows with similar lengths, so little of each padded batch is padding.

    Rows are shuffled, cut into pools of `pool` batches, sorted by length within a pool and split into
    batches; then the batch order is shuffled. All randomness comes from `generator`.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches: list[list[int]] = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda row: lengths[row])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def _check_finite(loss: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"{what} probe loss became {loss.item()} at step {step}")


def train_phone_probe(
    features: FeatureSet,
    train: Sequence[tuple[str, Sequence[str]]],
    test: Sequence[tuple[str, Sequence[str]]],
    *,
    config: PhoneProbeConfig = PhoneProbeConfig(),
    seed: int = 0,
    progress: EpochProgress | None = None,
) -> PhoneProbeResult:
    """Train a CTC phone probe on (utterance id, phones) pairs of `train`; PER on `test`.

    Test phones absent from the train vocabulary stay in the references (they can never be recognised, so they
    count as errors) and their number is reported.
    """
    if not train or not test:
        raise ValueError(f"phone probe needs train and test utterances, found {len(train)} and {len(test)}")
    vocabulary = PhoneVocabulary.from_sequences([phones for _, phones in train])
    probe = _seeded_init(
        seed,
        lambda: PhoneProbe(
            features.num_reps,
            features.dim,
            len(vocabulary),
            head=config.head,
            lstm_hidden=config.lstm_hidden,
            layer_norm=config.layer_norm,
        ),
    )
    optimiser = torch.optim.Adam(probe.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(seed)
    batcher = _Batcher(features, layer_norm=config.layer_norm)
    train_ids = [utterance_id for utterance_id, _ in train]
    frame_counts = [features[i].shape[1] for i in train_ids]
    targets = [torch.tensor(vocabulary.encode(phones), dtype=torch.int64) for _, phones in train]

    def ctc(rows: list[int]) -> torch.Tensor:
        reps, frame_lengths = batcher([train_ids[r] for r in rows])
        batch_targets = [targets[r] for r in rows]
        log_probs = probe(reps, frame_lengths, normalised=True).log_softmax(dim=-1)  # (batch, frame, vocab)
        return F.ctc_loss(
            log_probs.transpose(0, 1),  # (frame, batch, vocab)
            torch.cat(batch_targets),
            frame_lengths,
            torch.tensor([len(t) for t in batch_targets], dtype=torch.int64),
            blank=0,
            zero_infinity=True,  # an utterance with fewer frames than phones adds nothing, not inf
        )

    probe.train()
    step, epoch_loss = _fit(
        "phone",
        optimiser,
        config.epochs,
        ctc,
        progress,
        lambda: _length_bucketed_batches(frame_counts, config.batch_size, generator),
    )

    probe.eval()
    per, unknown = _score_phone_probe(probe, batcher, vocabulary, test, config.batch_size)
    return PhoneProbeResult(
        per=per,
        layer_weights=probe.mix.weights().tolist(),
        vocabulary_size=len(vocabulary) - 1,
        train_utterances=len(train),
        test_utterances=len(test),
        unknown_test_phones=unknown,
        epochs=config.epochs,
        steps=step,
        final_train_loss=epoch_loss,
        config=asdict(config),
    )


def _score_phone_probe(
    probe: PhoneProbe,
    batcher: _Batcher,
    vocabulary: PhoneVocabulary,
    test: Sequence[tuple[str, Sequence[str]]],
    batch_size: int,
) -> tuple[float, int]:
    """PER of greedy CTC decoding on `test`, and how many test phones the train vocabulary lacks."""
    references: list[list[str]] = []
    hypotheses: list[list[str]] = []
    unknown = 0
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            chunk = test[start : start + batch_size]
            reps, frame_lengths = batcher([utterance_id for utterance_id, _ in chunk])
            decoded = ctc_greedy_decode(probe(reps, frame_lengths, normalised=True), frame_lengths, blank=0)
            for (_, phones), ids in zip(chunk, decoded, strict=True):
                references.append(list(phones))
                hypotheses.append(vocabulary.decode(ids))
                unknown += sum(1 for token in phones if token not in vocabulary)
    return error_rate(references, hypotheses), unknown


def _fit(
    name: str,
    optimiser: torch.optim.Optimizer,
    epochs: int,
    batch_loss: Callable[[Any], torch.Tensor],
    progress: EpochProgress | None,
    epoch_batches: Callable[[], Iterable[Any]],
) -> tuple[int, float]:
    """The probes' training loop: per epoch, one optimiser step per batch of `epoch_batches()`; returns the
    step count and the last epoch's mean loss. A non-finite loss stops it with a TrainingError naming the
    probe."""
    step, epoch_loss = 0, math.nan
    for epoch in range(epochs):
        losses = []
        for batch in epoch_batches():
            loss = batch_loss(batch)
            _check_finite(loss, name, step)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step += 1
            losses.append(loss.item())
        epoch_loss = sum(losses) / len(losses)
        if progress is not None:
            progress(epoch + 1, epochs, epoch_loss)
    return step, epoch_loss


def _speaker_classes(train: Sequence[tuple[str, str]], test: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Class index of each train speaker (sorted names); raises ValueError when a side is empty."""
    if not train or not test:
        raise ValueError(f"speaker probe needs train and test utterances, found {len(train)} and {len(test)}")
    return {speaker: i for i, speaker in enumerate(sorted({speaker for _, speaker in train}))}


@dataclass
class _SpeakerData:
    """What every speaker probe trains and scores on: frame means pooled once for all representations."""

    index: dict[str, int]  # class of each train speaker
    train_pooled: torch.Tensor  # (utterance, rep, feature)
    labels: torch.Tensor  # (utterance,)
    test_pooled: torch.Tensor  # (utterance, rep, feature): the test utterances of train speakers only
    truth: torch.Tensor  # (utterance,)

    @classmethod
    def pool(
        cls,
        features: FeatureSet,
        train: Sequence[tuple[str, str]],
        test: Sequence[tuple[str, str]],
        config: SpeakerProbeConfig,
    ) -> _SpeakerData:
        index = _speaker_classes(train, test)
        batcher = _Batcher(features, layer_norm=config.layer_norm)
        train_pooled = _pooled(batcher, [i for i, _ in train])
        seen = [(i, speaker) for i, speaker in test if speaker in index]
        return cls(
            index=index,
            train_pooled=train_pooled,
            labels=torch.tensor([index[speaker] for _, speaker in train], dtype=torch.int64),
            test_pooled=_pooled(batcher, [i for i, _ in seen]) if seen else train_pooled[:0],
            truth=torch.tensor([index[speaker] for _, speaker in seen], dtype=torch.int64),
        )


def _fit_speaker_probe(
    pooled: torch.Tensor,
    labels: torch.Tensor,
    num_speakers: int,
    *,
    config: SpeakerProbeConfig,
    seed: int,
    progress: EpochProgress | None,
) -> tuple[SpeakerProbe, int, float]:
    """A speaker probe trained on `pooled` (utterance, rep, feature) with `labels` (utterance,); returns the
    probe in eval mode, its step count and its last epoch's mean loss. Same seed = same init and batches."""
    probe = _seeded_init(
        seed,
        lambda: SpeakerProbe(pooled.shape[1], pooled.shape[2], num_speakers, layer_norm=config.layer_norm),
    )
    optimiser = torch.optim.Adam(probe.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(seed)

    def shuffled_batches() -> Iterator[torch.Tensor]:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), config.batch_size):
            yield order[start : start + config.batch_size]

    probe.train()
    step, epoch_loss = _fit(
        "speaker",
        optimiser,
        config.epochs,
        lambda rows: F.cross_entropy(probe(pooled[rows]), labels[rows]),
        progress,
        shuffled_batches,
    )
    probe.eval()
    return probe, step, epoch_loss


def _correct(probe: SpeakerProbe, pooled: torch.Tensor, truth: torch.Tensor) -> int:
    """How many rows of `pooled` (utterance, rep, feature) the probe assigns to their `truth` class."""
    if not len(truth):
        return 0
    with torch.no_grad():
        return int((probe(pooled).argmax(dim=-1) == truth).sum())


def train_speaker_probe(
    features: FeatureSet,
    train: Sequence[tuple[str, str]],
    test: Sequence[tuple[str, str]],
    *,
    config: SpeakerProbeConfig = SpeakerProbeConfig(),
    seed: int = 0,
    progress: EpochProgress | None = None,
) -> SpeakerProbeResult:
    """Train a speaker classifier on (utterance id, speaker) pairs of `train`; accuracy on `test`.

    Classes are the train speakers. Test utterances of unseen speakers stay in the denominator as errors.
    """
    data = _SpeakerData.pool(features, train, test, config)
    probe, step, epoch_loss = _fit_speaker_probe(
        data.train_pooled, data.labels, len(data.index), config=config, seed=seed, progress=progress
    )
    unseen_speakers = {speaker for _, speaker in test if speaker not in data.index}
    return SpeakerProbeResult(
        accuracy=_correct(probe, data.test_pooled, data.truth) / len(test),
        layer_weights=probe.mix.weights().tolist(),
        train_speakers=len(data.index),
        train_utterances=len(train),
        test_utterances=len(test),
        unseen_test_speakers=len(unseen_speakers),
        unseen_test_utterances=len(test) - len(data.truth),
        epochs=config.epochs,
        steps=step,
        final_train_loss=epoch_loss,
        config=asdict(config),
    )


@dataclass
class LayerSpeakerResult:
    """Speaker accuracy of each representation r[0..L] on its own: where speaker identity lives.

    The SUPERB probe's learned mix says which layers it leaned on; this says how much each layer alone knows
    (its own linear probe on the frame mean of that layer), so the layers of a teacher and a student can be
    compared one by one."""

    accuracy: list[float]  # index l: accuracy of a probe on r[l] alone
    best_layer: int
    train_speakers: int
    train_utterances: int
    test_utterances: int
    unseen_test_utterances: int
    epochs: int
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_speaker_probes_per_layer(
    features: FeatureSet,
    train: Sequence[tuple[str, str]],
    test: Sequence[tuple[str, str]],
    *,
    config: SpeakerProbeConfig = SpeakerProbeConfig(),
    seed: int = 0,
    progress: EpochProgress | None = None,
) -> LayerSpeakerResult:
    """One speaker probe per representation (the same probe as `train_speaker_probe` over a single layer, so
    the mix is that layer): accuracy on `test` of each. Frames are pooled once for all layers; every layer's
    probe gets the same seed (same init and batch order), so layers differ only by their features.
    `progress(layer + 1, num_reps, final loss)` after each layer."""
    data = _SpeakerData.pool(features, train, test, config)
    accuracy = []
    for layer in range(features.num_reps):
        probe, _, loss = _fit_speaker_probe(
            data.train_pooled[:, layer : layer + 1],
            data.labels,
            len(data.index),
            config=config,
            seed=seed,
            progress=None,
        )
        accuracy.append(_correct(probe, data.test_pooled[:, layer : layer + 1], data.truth) / len(test))
        if progress is not None:
            progress(layer + 1, features.num_reps, loss)
    return LayerSpeakerResult(
        accuracy=accuracy,
        best_layer=max(range(len(accuracy)), key=lambda layer: accuracy[layer]),
        train_speakers=len(data.index),
        train_utterances=len(train),
        test_utterances=len(test),
        unseen_test_utterances=len(test) - len(data.truth),
        epochs=config.epochs,
        config=asdict(config),
    )


__all__ = [
    "BLANK",
    "EpochProgress",
    "LayerSpeakerResult",
    "PhoneProbe",
    "PhoneProbeConfig",
    "PhoneProbeResult",
    "PhoneVocabulary",
    "SpeakerProbe",
    "SpeakerProbeConfig",
    "SpeakerProbeResult",
    "WeightedLayerSum",
    "train_phone_probe",
    "train_speaker_probe",
    "train_speaker_probes_per_layer",
]
