"""core.data: scanning users' data, decoding, and the two batch streams.

Audio is generated on the fly into tmp_path (tiny files, seconds of audio in all) so the tests stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from core.data import (
    AudioCatalog,
    AudioItem,
    Batch,
    TrainBatches,
    WaveformCache,
    iter_padded_batches,
    load_waveform,
    scan_audio,
)
from core.errors import AudioError, CheckpointError

DEMO = (
    Path(__file__).resolve().parents[2] / "core" / "assets" / "demo-audio"
)  # bundled copy of shared/data/demo


def tone(
    seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5, channels: int = 1
) -> np.ndarray:
    """A sine, (time,) or (time, channel) with a different phase per channel."""
    t = np.arange(round(seconds * rate)) / rate
    columns = [amplitude * np.sin(2 * np.pi * freq * t + c) for c in range(channels)]
    data = np.stack(columns, axis=1).astype(np.float32)
    return data[:, 0] if channels == 1 else data


def write(path: Path, data: np.ndarray, rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate)
    return path


@pytest.fixture
def messy_dir(tmp_path: Path) -> Path:
    """A directory source with one file of each kind a user might upload."""
    root = tmp_path / "messy"
    write(root / "good_16k.flac", tone(1.0, 16000), 16000)
    write(root / "stereo_44k.wav", tone(1.2, 44100, channels=2), 44100)
    write(root / "nested" / "deeper" / "low_8k.wav", tone(0.8, 8000), 8000)
    write(root / "nested" / "UPPER.WAV", tone(0.7, 16000), 16000)
    write(root / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    write(root / "short.flac", tone(0.2, 16000), 16000)
    write(root / "zero_frames.wav", np.zeros(0, dtype=np.float32), 16000)
    (root / "zero_bytes.wav").write_bytes(b"")
    (root / "text.wav").write_text("this is not audio\n")
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    (root / "notes.txt").write_text("transcripts\n")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    return root


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    """A manifest dataset with good rows, a bad JSON row, a row with no path, a missing file and escapes."""
    root = tmp_path / "ds"
    write(root / "audio" / "a.flac", tone(1.0, 16000), 16000)
    write(root / "audio" / "b.flac", tone(1.5, 16000, freq=300), 16000)
    write(root / "audio" / "c.flac", tone(2.0, 16000, freq=200), 16000)
    write(tmp_path / "outside.flac", tone(1.0, 16000), 16000)
    rows = [
        json.dumps({"id": "a", "path": "audio/a.flac", "split": "train", "speaker": "s1", "text": "hi"}),
        json.dumps({"id": "b", "path": "audio/b.flac", "split": "test", "speaker": "s2", "duration_s": 99.0}),
        json.dumps({"path": "audio/c.flac", "split": "train"}),
        "{not json",
        json.dumps({"id": "nopath"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"id": "gone", "path": "audio/missing.flac"}),
        json.dumps({"id": "up", "path": "../outside.flac"}),
        json.dumps({"id": "abs", "path": str(tmp_path / "outside.flac")}),
        json.dumps({"id": "a", "path": "audio/b.flac"}),
    ]
    (root / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return root


def reasons(catalog: AudioCatalog) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for skip in catalog.skipped:
        found.setdefault(skip.reason, []).append(skip.path)
    return found


# ----------------------------------------------------------------------------------------------------
# scanning


def test_scan_directory_counts_and_reasons(messy_dir: Path) -> None:
    catalog = scan_audio(messy_dir)
    ids = sorted(item.id for item in catalog.items)
    assert ids == ["good_16k", "nested/UPPER", "nested/deeper/low_8k", "stereo_44k"]
    assert _sorted(reasons(catalog)) == {
        "empty": ["zero_bytes.wav", "zero_frames.wav"],
        "not_audio": ["notes.txt", "text.wav"],
        "silent": ["silent.wav"],
        "too_short": ["short.flac"],
        "unreadable": ["corrupt.wav"],
    }
    stereo = next(item for item in catalog.items if item.id == "stereo_44k")
    assert (stereo.sample_rate, stereo.channels) == (44100, 2)
    assert stereo.duration_s == pytest.approx(1.2, abs=1e-3)
    assert catalog.sample_rates == [8000, 16000, 44100]
    assert catalog.total_seconds == pytest.approx(1.0 + 1.2 + 0.8 + 0.7, abs=1e-3)

    summary = catalog.summary()
    assert summary["files"] == 4
    assert summary["hours"] == pytest.approx(3.7 / 3600, rel=1e-3)
    assert summary["skipped"] == {"empty": 2, "not_audio": 2, "silent": 1, "too_short": 1, "unreadable": 1}
    assert len(summary["skipped_examples"]) == 7
    json.dumps(summary)  # goes into events and reports as is


def _sorted(found: dict[str, list[str]]) -> dict[str, list[str]]:
    return {reason: sorted(paths) for reason, paths in found.items()}


def test_scan_options_change_what_is_kept(messy_dir: Path) -> None:
    loose = scan_audio(messy_dir, min_seconds=0.1, check_silence=False)
    assert {"short", "silent"} <= {item.id for item in loose.items}
    assert "silent" not in reasons(loose)
    capped = scan_audio(messy_dir, max_seconds=0.9)
    assert sorted(reasons(capped)["too_long"]) == ["good_16k.flac", "stereo_44k.wav"]


def test_scan_manifest_rows(manifest_dir: Path) -> None:
    catalog = scan_audio(manifest_dir)
    assert [item.id for item in catalog.items] == ["a", "b", "audio/c"]
    a, b, c = catalog.items
    assert (a.split, a.speaker, a.extra) == ("train", "s1", {"text": "hi"})
    assert b.duration_s == pytest.approx(1.5)  # the header wins over the row's duration_s
    assert "duration_s" not in b.extra
    assert (c.split, c.speaker) == ("train", None)
    assert a.path == manifest_dir / "audio" / "a.flac"
    assert catalog.root == manifest_dir
    assert _sorted(reasons(catalog)) == {
        "bad_manifest_row": ["manifest.jsonl:4", "manifest.jsonl:5", "manifest.jsonl:6"],
        "missing": ["audio/missing.flac"],
        "outside_dataset": sorted(["../outside.flac", str(manifest_dir.parent / "outside.flac")]),
        "duplicate_id": ["audio/b.flac"],
    }

    direct = scan_audio(manifest_dir / "manifest.jsonl")
    assert [item.id for item in direct.items] == ["a", "b", "audio/c"]
    assert [item.id for item in catalog.filter(split="train").items] == ["a", "audio/c"]
    assert [item.id for item in catalog.filter(speaker="s2").items] == ["b"]


def test_manifest_symlink_escaping_dataset_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write(root / "in.flac", tone(1.0, 16000), 16000)
    secret = write(tmp_path / "secret.flac", tone(1.0, 16000), 16000)
    (root / "link.flac").symlink_to(secret)
    (root / "manifest.jsonl").write_text(
        json.dumps({"path": "in.flac"}) + "\n" + json.dumps({"path": "link.flac"}) + "\n"
    )
    catalog = scan_audio(root)
    assert [item.id for item in catalog.items] == ["in"]
    assert reasons(catalog) == {"outside_dataset": ["link.flac"]}


def test_scan_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="does not exist"):
        scan_audio(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_text("nope")
    write(bad / "quiet.flac", np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="2 skipped") as info:
        scan_audio(bad)
    assert info.value.code == "audio_invalid"
    assert "not_audio: 1" in info.value.message and "silent: 1" in info.value.message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AudioError, match="no audio files found"):
        scan_audio(empty)
    with pytest.raises(AudioError, match="neither"):
        scan_audio(write(tmp_path / "one.flac", tone(1.0, 16000), 16000))


def test_subset_is_deterministic_and_within_limits(tmp_path: Path) -> None:
    items = [
        AudioItem(
            id=f"u{i:03d}",
            path=tmp_path / f"u{i:03d}.flac",
            duration_s=1.0 + (i % 7),
            sample_rate=16000,
            channels=1,
        )
        for i in range(100)
    ]
    catalog = AudioCatalog(items=items, skipped=[], root=tmp_path)
    first = catalog.subset(max_items=20, max_seconds=60.0, seed=3)
    assert [i.id for i in first.items] == [i.id for i in catalog.subset(20, 60.0, seed=3).items]
    assert len(first.items) <= 20 and first.total_seconds <= 60.0
    assert first.total_seconds > 50.0  # skipping an overflowing item lets shorter ones fill the budget
    reversed_catalog = AudioCatalog(items=items[::-1], skipped=[], root=tmp_path)
    assert {i.id for i in reversed_catalog.subset(20, 60.0, seed=3).items} == {i.id for i in first.items}
    assert {i.id for i in catalog.subset(20, 60.0, seed=4).items} != {i.id for i in first.items}
    assert len(catalog.subset(max_items=5, seed=0).items) == 5
    assert len(catalog.subset(max_seconds=0.5, seed=0).items) == 1  # never empty


# ----------------------------------------------------------------------------------------------------
# decoding


def peak_hz(waveform: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return float(np.fft.rfftfreq(len(waveform), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(("rate", "seconds"), [(44100, 1.0), (8000, 0.75), (22050, 0.5), (16000, 1.0)])
def test_resampling_keeps_length_and_frequency(tmp_path: Path, rate: int, seconds: float) -> None:
    path = write(tmp_path / f"t{rate}.wav", tone(seconds, rate, freq=1000.0), rate)
    waveform = load_waveform(path, 16000)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert waveform.shape[0] == round(round(seconds * rate) * 16000 / rate)
    assert peak_hz(waveform, 16000) == pytest.approx(1000.0, abs=2.0)


def test_stereo_is_mixed_down(tmp_path: Path) -> None:
    left = tone(0.5, 16000, freq=500.0, amplitude=0.4)
    right = tone(0.5, 16000, freq=500.0, amplitude=0.2)
    path = write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000)
    waveform = load_waveform(path, 16000)
    np.testing.assert_allclose(waveform, (left + right) / 2, atol=1e-4)  # 16-bit PCM quantisation
    item = scan_audio(tmp_path).items[0]
    np.testing.assert_allclose(load_waveform(item, 16000), waveform)


def test_load_waveform_raises_audio_error(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_text("nope")
    with pytest.raises(AudioError, match=r"x\.wav"):
        load_waveform(tmp_path / "x.wav", 16000)


def test_cache_respects_its_byte_budget(tmp_path: Path) -> None:
    items = scan_audio(_utterance_dir(tmp_path, [1.0, 1.0, 1.0])).items
    one = 16000 * 4
    cache = WaveformCache(max_bytes=2 * one)
    for item in items:
        cache.get(item, 16000)
    assert len(cache) == 2 and cache.bytes == 2 * one
    assert not cache.get(items[0], 16000).flags.writeable
    disabled = WaveformCache(0)
    disabled.get(items[0], 16000)
    assert len(disabled) == 0


# ---------------------------------------------------------------------------------------------------- batches


def _utterance_dir(tmp_path: Path, durations: list[float], rate: int = 16000) -> Path:
    """Files whose samples encode (file number, sample index), so crops can be traced back to their source."""
    root = tmp_path / f"utts{len(durations)}_{rate}"
    rng = np.random.default_rng(0)
    for i, seconds in enumerate(durations):
        data = (0.1 + 0.4 * rng.random(round(seconds * rate))).astype(np.float32)
        write(root / f"u{i:03d}.wav", data, rate)
    return root


@pytest.fixture
def train_catalog(tmp_path: Path) -> AudioCatalog:
    rng = np.random.default_rng(1)
    durations = list(np.round(rng.uniform(0.3, 4.0, size=40), 3)) + [0.5, 0.9]
    return scan_audio(_utterance_dir(tmp_path, durations, rate=8000), min_seconds=0.1)


def batch_key(batch: Batch) -> tuple[list[str], bytes]:
    return batch.ids, batch.waveforms.numpy().tobytes()


def test_train_batches_budget_no_padding_and_crops(train_catalog: AudioCatalog) -> None:
    stream = TrainBatches(
        train_catalog, sample_rate=16000, batch_seconds=6.0, min_utterance_s=1.0, max_utterance_s=3.0, seed=7
    )
    kept = {item.id: item for item in stream.items}
    assert all(item.duration_s >= 1.0 for item in kept.values())
    assert len(kept) < len(train_catalog.items)
    sources = {item_id: load_waveform(item, 16000) for item_id, item in kept.items()}
    seen: list[str] = []
    for _ in range(stream.batches_per_epoch):
        batch = next(stream)
        count, time = batch.waveforms.shape
        assert batch.waveforms.dtype == torch.float32 and batch.lengths.dtype == torch.int64
        assert torch.equal(batch.lengths, torch.full((count,), time, dtype=torch.int64))  # no padding
        assert count * time <= 6.0 * 16000 or count == 1
        assert time <= 3.0 * 16000
        shortest = min(min(round(kept[i].duration_s * 16000), 3 * 16000) for i in batch.ids)
        assert time == shortest  # cropped to the shortest in the batch
        for row, item_id in enumerate(batch.ids):
            source = sources[item_id]
            window = batch.waveforms[row].numpy()
            offsets = [o for o in range(len(source) - time + 1) if source[o] == window[0]]
            assert any(np.array_equal(source[o : o + time], window) for o in offsets)
        seen.extend(batch.ids)
    assert sorted(seen) == sorted(kept)  # one epoch serves every kept utterance exactly once
    assert stream.epoch == 1 and stream.position == 0


def test_train_batches_similar_durations_and_epoch_shuffle(train_catalog: AudioCatalog) -> None:
    stream = TrainBatches(
        train_catalog,
        sample_rate=8000,
        batch_seconds=8.0,
        min_utterance_s=0.5,
        max_utterance_s=4.0,
        seed=0,
        bucket_ratio=1.2,
    )
    durations = {item.id: item.duration_s for item in stream.items}
    epochs = []
    for _ in range(2):
        batches = [next(stream) for _ in range(stream.batches_per_epoch)]
        mixed = 0
        for batch in batches:
            spread = [durations[i] for i in batch.ids]
            mixed += max(spread) / min(spread) > 1.2 * 1.001
        assert mixed <= len(stream._buckets)  # only batches holding a bucket's leftovers mix durations
        epochs.append([b.ids for b in batches])
    assert epochs[0] != epochs[1]


def test_train_batches_resume_exactly(train_catalog: AudioCatalog) -> None:
    def make() -> TrainBatches:
        return TrainBatches(
            train_catalog,
            sample_rate=16000,
            batch_seconds=5.0,
            min_utterance_s=0.5,
            max_utterance_s=2.5,
            seed=11,
            cache_bytes=0,
        )

    reference = make()
    per_epoch = reference.batches_per_epoch
    total = 2 * per_epoch + 3
    expected = [batch_key(next(reference)) for _ in range(total)]
    for stop in (1, per_epoch, per_epoch + 2):
        first = make()
        got = [batch_key(next(first)) for _ in range(stop)]
        state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip into a checkpoint
        second = make()
        second.load_state_dict(state)
        got += [batch_key(next(second)) for _ in range(total - stop)]
        assert got == expected


def test_train_batches_state_mismatch_is_refused(train_catalog: AudioCatalog) -> None:
    stream = TrainBatches(train_catalog, sample_rate=16000, batch_seconds=5.0, min_utterance_s=0.5, seed=1)
    state = stream.state_dict()
    other = TrainBatches(train_catalog, sample_rate=16000, batch_seconds=5.0, min_utterance_s=0.5, seed=2)
    with pytest.raises(CheckpointError, match="seed"):
        other.load_state_dict(state)
    fewer = TrainBatches(
        train_catalog.subset(max_items=20, seed=0),
        sample_rate=16000,
        batch_seconds=5.0,
        min_utterance_s=0.5,
        seed=1,
    )
    with pytest.raises(CheckpointError):
        fewer.load_state_dict(state)


def test_speed_perturbation_shifts_pitch_within_the_range_and_keeps_the_budget(tmp_path: Path) -> None:
    for i in range(6):
        write(tmp_path / "tones" / f"t{i}.wav", tone(2.0, 16000, freq=1000.0), 16000)
    catalog = scan_audio(tmp_path / "tones", min_seconds=0.1)
    options = dict(sample_rate=16000, batch_seconds=6.0, min_utterance_s=1.0, max_utterance_s=1.5, seed=3)
    plain = TrainBatches(catalog, **options)
    perturbed = TrainBatches(catalog, **options, speed_perturbation=0.1)
    assert plain.fingerprint != perturbed.fingerprint  # a checkpoint of one stream does not resume the other
    assert TrainBatches(catalog, **options, speed_perturbation=0.0).fingerprint == plain.fingerprint
    peaks = []
    for index in range(plain.batches_per_epoch):
        a, b = plain.serve(index), perturbed.serve(index)
        assert a.ids == b.ids
        assert b.waveforms.dtype == torch.float32
        assert b.waveforms.shape[0] * b.waveforms.shape[1] <= 6.0 * 16000
        assert b.waveforms.shape[1] <= a.waveforms.shape[1]  # cut to the unperturbed crop at most
        assert torch.equal(perturbed.serve(index).waveforms, b.waveforms)  # the same batch whenever served
        for row in a.waveforms.numpy():
            assert peak_hz(row, 16000) == pytest.approx(1000.0, abs=2.0)
        peaks += [peak_hz(row, 16000) for row in b.waveforms.numpy()]
    # played at 0.9-1.1x speed, the 1 kHz tone lands at 900-1100 Hz, and not all at the same speed
    assert all(895.0 <= hz <= 1105.0 for hz in peaks) and max(peaks) - min(peaks) > 20.0
    with pytest.raises(ValueError, match="speed_perturbation"):
        TrainBatches(catalog, **options, speed_perturbation=0.5)


def test_rank_slices_are_disjoint_and_equal(train_catalog: AudioCatalog) -> None:
    def rank_epoch(rank: int, world: int, epoch: int) -> list[list[str]]:
        stream = TrainBatches(
            train_catalog,
            sample_rate=8000,
            batch_seconds=4.0,
            min_utterance_s=0.5,
            seed=5,
            rank=rank,
            world_size=world,
            cache_bytes=0,
        )
        stream.load_state_dict({**stream.state_dict(), "epoch": epoch})
        return [next(stream).ids for _ in range(stream.batches_per_epoch)]

    single = TrainBatches(train_catalog, sample_rate=8000, batch_seconds=4.0, min_utterance_s=0.5, seed=5)
    for epoch in (0, 1):
        per_rank = [rank_epoch(rank, 3, epoch) for rank in range(3)]
        assert len({len(batches) for batches in per_rank}) == 1
        assert len(per_rank[0]) == single.batches_per_epoch // 3
        all_ids = [i for batches in per_rank for batch in batches for i in batch]
        assert len(all_ids) == len(set(all_ids))


def test_train_batches_errors(train_catalog: AudioCatalog) -> None:
    with pytest.raises(AudioError, match="no utterance"):
        TrainBatches(
            train_catalog, sample_rate=16000, batch_seconds=10.0, min_utterance_s=50.0, max_utterance_s=60.0
        )
    with pytest.raises(AudioError, match="64 processes"):
        TrainBatches(
            train_catalog, sample_rate=16000, batch_seconds=1000.0, min_utterance_s=0.5, world_size=64, rank=3
        )
    with pytest.raises(ValueError):
        TrainBatches(train_catalog, min_utterance_s=3.0, max_utterance_s=2.0)


def test_single_long_utterance_still_forms_a_batch(train_catalog: AudioCatalog) -> None:
    stream = TrainBatches(
        train_catalog, sample_rate=8000, batch_seconds=0.5, min_utterance_s=2.0, max_utterance_s=3.0
    )
    batch = next(stream)
    assert batch.waveforms.shape[0] == 1


# ---------------------------------------------------------------------------------------------------- padded


def test_padded_batches(train_catalog: AudioCatalog) -> None:
    batches = list(iter_padded_batches(train_catalog, sample_rate=16000, batch_seconds=6.0))
    again = list(iter_padded_batches(train_catalog, sample_rate=16000, batch_seconds=6.0))
    assert [batch_key(b) for b in batches] == [batch_key(b) for b in again]
    by_id = {item.id: item for item in train_catalog.items}
    served = []
    previous_longest = None
    for batch in batches:
        count, time = batch.waveforms.shape
        assert count * time <= 6.0 * 16000 or count == 1
        assert int(batch.lengths.max()) == time
        if previous_longest is not None:
            assert time <= previous_longest  # longest first
        previous_longest = time
        for row, item_id in enumerate(batch.ids):
            length = int(batch.lengths[row])
            source = load_waveform(by_id[item_id], 16000)
            assert length == len(source)
            np.testing.assert_array_equal(batch.waveforms[row, :length].numpy(), source)
            assert not batch.waveforms[row, length:].any()
        served.extend(batch.ids)
    assert sorted(served) == sorted(by_id)


def test_padded_batches_truncate_long_items(train_catalog: AudioCatalog) -> None:
    batches = list(
        iter_padded_batches(train_catalog, sample_rate=8000, batch_seconds=5.0, max_utterance_s=1.0)
    )
    by_id = {item.id: item for item in train_catalog.items}
    for batch in batches:
        assert batch.waveforms.shape[1] <= 8000
        for row, item_id in enumerate(batch.ids):
            assert int(batch.lengths[row]) == min(round(by_id[item_id].duration_s * 8000), 8000)
            source = load_waveform(by_id[item_id], 8000)
            np.testing.assert_array_equal(
                batch.waveforms[row, : int(batch.lengths[row])].numpy(), source[: int(batch.lengths[row])]
            )


# ---------------------------------------------------------------------------------------------------- demo
# data


def test_demo_dataset() -> None:
    if not (DEMO / "manifest.jsonl").is_file():
        pytest.skip("shared demo data absent")
    catalog = scan_audio(DEMO)
    assert len(catalog.items) == 36 and not catalog.skipped
    assert catalog.total_seconds / 60 == pytest.approx(1.8, abs=0.1)
    assert catalog.sample_rates == [16000]
    assert {item.channels for item in catalog.items} == {1}
    assert all(item.split for item in catalog.items)
    assert "text" in catalog.items[0].extra


def _split_stream(catalog: AudioCatalog, rank: int, world: int, accumulation: int) -> TrainBatches:
    """Rank `rank`'s stream of a `world` x `accumulation` split of the same plan."""
    return TrainBatches(
        catalog,
        sample_rate=16000,
        batch_seconds=3.0,
        min_utterance_s=0.5,
        max_utterance_s=2.5,
        seed=5,
        rank=rank,
        world_size=world,
        accumulation=accumulation,
        cache_bytes=0,
    )


def _global_steps(catalog: AudioCatalog, world: int, accumulation: int, steps: int) -> list[list[list[str]]]:
    """Per optimiser step, the ids of its batches in global order (rank r's micro-batch k is batch r + k*world
    of the step), over every rank's stream of a `world` x `accumulation` split."""
    streams = [_split_stream(catalog, rank, world, accumulation) for rank in range(world)]
    out = []
    for step in range(steps):
        batches: dict[int, list[str]] = {}
        for rank, stream in enumerate(streams):
            for k in range(accumulation):
                batches[rank + k * world] = stream.serve(step * accumulation + k).ids
        out.append([batches[j] for j in sorted(batches)])
    return out


def test_a_global_batch_is_the_same_split_into_processes_or_accumulation(train_catalog: AudioCatalog) -> None:
    one = TrainBatches(
        train_catalog, sample_rate=16000, batch_seconds=3.0, min_utterance_s=0.5, max_utterance_s=2.5, seed=5
    )
    steps = 2 * (one.total_batches // 4) + 1  # into the second epoch
    four_by_one = _global_steps(train_catalog, 4, 1, steps)
    assert _global_steps(train_catalog, 1, 4, steps) == four_by_one
    assert _global_steps(train_catalog, 2, 2, steps) == four_by_one
    assert four_by_one[0] != four_by_one[1]
    # the plan of a single process without accumulation is unchanged: batch j of the shuffled epoch at step j
    assert [s[0] for s in _global_steps(train_catalog, 1, 1, 3)] == [one.serve(i).ids for i in range(3)]


def test_a_state_resumes_on_another_split_of_the_same_global_batch(train_catalog: AudioCatalog) -> None:
    def make(rank: int, world: int, accumulation: int) -> TrainBatches:
        return _split_stream(train_catalog, rank, world, accumulation)

    two = [make(r, 2, 1) for r in range(2)]
    for stream in two:
        for _ in range(3):  # 3 optimiser steps on 2 processes
            next(stream)
    state = json.loads(json.dumps(two[0].state_dict()))
    resumed = make(0, 1, 2)  # the same global batch on one process accumulating 2
    resumed.load_state_dict(state)
    assert resumed.consumed == 6
    for _ in range(4):
        assert [next(resumed).ids for _ in range(2)] == [next(s).ids for s in two]
    # a state written before accumulation existed (no such keys) loads as a global batch of its world size
    legacy = {k: v for k, v in state.items() if k not in ("accumulation", "batches_per_step")}
    again = make(0, 1, 2)
    again.load_state_dict(legacy)
    assert again.consumed == 6
    with pytest.raises(CheckpointError, match="batches_per_step"):
        make(0, 1, 1).load_state_dict(state)  # another global batch: another recipe
    with pytest.raises(CheckpointError, match="batches_per_step"):
        make(0, 2, 2).load_state_dict(state)
