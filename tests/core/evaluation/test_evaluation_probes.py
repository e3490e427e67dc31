"""Probes on planted signals: one representation carries the labels, the others are noise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.evaluation.features import FeatureSet
from core.evaluation.probes import (
    PhoneProbeConfig,
    PhoneVocabulary,
    SpeakerProbeConfig,
    WeightedLayerSum,
    layer_norm_,
    train_phone_probe,
    train_speaker_probe,
    train_speaker_probes_per_layer,
)

NUM_REPS, DIM = 4, 16
PHONES = ["AA", "B", "D", "IY", "K", "S"]


def _noise(generator: torch.Generator, frames: int) -> torch.Tensor:
    return torch.randn(NUM_REPS, frames, DIM, generator=generator)  # (rep, frame, feature)


def planted_phones(signal_rep: int, utterances: int = 60, seed: int = 0):
    """Each phone holds 3 frames; `signal_rep` carries a fixed random embedding of the phone plus noise."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = 3.0 * torch.randn(len(PHONES), DIM, generator=generator)
    reps, labels = {}, []
    for u in range(utterances):
        ids = [int(torch.randint(len(PHONES), (1,), generator=generator))]
        while len(ids) < 8:
            nxt = int(torch.randint(len(PHONES), (1,), generator=generator))
            if nxt != ids[-1]:  # no immediate repeat: CTC would need a blank between them
                ids.append(nxt)
        frames = torch.tensor(ids).repeat_interleave(3)
        stack = _noise(generator, len(frames))
        stack[signal_rep] = embeddings[frames] + 0.3 * torch.randn(len(frames), DIM, generator=generator)
        reps[f"u{u}"] = stack.half()
        labels.append((f"u{u}", [PHONES[i] for i in ids]))
    return FeatureSet("planted", reps, NUM_REPS, DIM), labels


def planted_speakers(signal_rep: int, speakers: int = 5, per_speaker: int = 12, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(speakers, DIM, generator=generator)
    reps, labels = {}, []
    for s in range(speakers):
        for k in range(per_speaker):
            frames = int(torch.randint(20, 40, (1,), generator=generator))
            stack = _noise(generator, frames)
            stack[signal_rep] = embeddings[s] + 1.0 * torch.randn(frames, DIM, generator=generator)
            uid = f"s{s}u{k}"
            reps[uid] = stack.half()
            labels.append((uid, f"spk{s}"))
    return FeatureSet("planted", reps, NUM_REPS, DIM), labels


def _split(labels: list, every: int = 4) -> tuple[list, list]:
    return [x for i, x in enumerate(labels) if i % every], [x for i, x in enumerate(labels) if not i % every]


def test_phone_probe_finds_the_planted_layer() -> None:
    features, labels = planted_phones(signal_rep=2)
    train, test = _split(labels)
    result = train_phone_probe(
        features, train, test, config=PhoneProbeConfig(epochs=25, batch_size=8, lr=1e-2)
    )
    assert result.per < 0.1
    weights = torch.tensor(result.layer_weights)
    assert int(weights.argmax()) == 2 and float(weights[2]) > 0.4
    assert weights.sum().item() == pytest.approx(1.0)
    assert result.vocabulary_size == len(PHONES) and result.unknown_test_phones == 0


def test_speaker_probe_finds_the_planted_layer() -> None:
    features, labels = planted_speakers(signal_rep=1)
    train, test = _split(labels)
    result = train_speaker_probe(features, train, test, config=SpeakerProbeConfig(epochs=60, lr=1e-2))
    assert result.accuracy > 0.9
    weights = torch.tensor(result.layer_weights)
    assert int(weights.argmax()) == 1 and float(weights[1]) > 0.5
    assert result.unseen_test_speakers == 0 and result.train_speakers == 5


def test_per_layer_speaker_probes_find_the_planted_layer() -> None:
    features, labels = planted_speakers(signal_rep=2)
    train, test = _split(labels)
    config = SpeakerProbeConfig(epochs=60, lr=1e-2)
    seen = []
    result = train_speaker_probes_per_layer(
        features,
        train,
        test,
        config=config,
        seed=3,
        progress=lambda done, total, loss: seen.append((done, total)),
    )
    assert len(result.accuracy) == NUM_REPS and result.best_layer == 2
    assert result.accuracy[2] > 0.9
    assert all(acc < 0.6 for layer, acc in enumerate(result.accuracy) if layer != 2)  # noise: near 1/5
    assert seen == [(layer + 1, NUM_REPS) for layer in range(NUM_REPS)]
    # Each layer's probe is the SUPERB speaker probe on that layer alone, same seed.
    for layer in (1, 2):
        alone = FeatureSet(
            "alone", {uid: stack[layer : layer + 1] for uid, stack in features.reps.items()}, 1, DIM
        )
        assert (
            train_speaker_probe(alone, train, test, config=config, seed=3).accuracy == result.accuracy[layer]
        )


def test_unseen_test_speakers_count_as_errors() -> None:
    features, labels = planted_speakers(signal_rep=1)
    train, test = _split(labels)
    train = [(uid, spk) for uid, spk in train if spk != "spk4"]  # spk4 only in test now
    result = train_speaker_probe(features, train, test, config=SpeakerProbeConfig(epochs=60, lr=1e-2))
    unseen = sum(1 for _, spk in test if spk == "spk4")
    assert result.unseen_test_speakers == 1 and result.unseen_test_utterances == unseen
    assert result.accuracy <= (len(test) - unseen) / len(test)


def test_probes_are_deterministic_and_leave_the_global_rng_alone() -> None:
    features, labels = planted_phones(signal_rep=0, utterances=16)
    train, test = _split(labels)
    config = PhoneProbeConfig(epochs=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = train_phone_probe(features, train, test, config=config, seed=7)
    assert torch.rand(1) == before  # the caller's RNG stream is where it was
    second = train_phone_probe(features, train, test, config=config, seed=7)
    assert first.to_dict() == second.to_dict()
    other = train_phone_probe(features, train, test, config=config, seed=8)
    assert other.layer_weights != first.layer_weights


def test_lstm_head_trains() -> None:
    features, labels = planted_phones(signal_rep=3, utterances=12)
    train, test = _split(labels)
    result = train_phone_probe(
        features, train, test, config=PhoneProbeConfig(head="lstm", epochs=1, lstm_hidden=8)
    )
    assert result.per >= 0.0 and result.steps == 2


def test_weighted_sum_starts_equal_and_normalises_each_layer() -> None:
    mix = WeightedLayerSum(3)
    assert mix.weights().tolist() == pytest.approx([1 / 3] * 3)
    reps = torch.randn(2, 3, 5, 8) * torch.tensor([1.0, 100.0, 0.01])[None, :, None, None]
    expected = F.layer_norm(reps, (8,)).mean(dim=1)
    assert torch.allclose(mix(reps), expected, atol=1e-5)


def test_in_place_layer_norm_matches_torch() -> None:
    x = 5.0 + 3.0 * torch.randn(2, 3, 7, 16)
    expected = F.layer_norm(x, (16,))
    assert torch.allclose(layer_norm_(x.clone()), expected, atol=1e-5)


def test_vocabulary_reserves_the_blank_and_reports_unknown_test_phones() -> None:
    vocabulary = PhoneVocabulary.from_sequences([["B", "AA"], ["AA", "K"]])
    assert vocabulary.tokens == ["<blank>", "AA", "B", "K"]
    assert vocabulary.encode(["K", "AA"]) == [3, 1] and vocabulary.decode([2]) == ["B"]
    features, labels = planted_phones(signal_rep=0, utterances=12)
    train, test = _split(labels)
    test = [(uid, [*phones, "ZH"]) for uid, phones in test]
    result = train_phone_probe(features, train, test, config=PhoneProbeConfig(epochs=1))
    assert result.unknown_test_phones == len(test)
