"""Background batch loading (core/data/loader.py) and the shared training step (core/distill/train.py
DistillStep): worker processes serve exactly the stream's batches, resume exactly, and `compile` falls back to
eager."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from core.data import AudioCatalog, Batch, TrainBatches, scan_audio
from core.data.loader import BatchLoader, default_workers
from core.distill.targets import ClusterTargets
from core.distill.train import StageContext, train_stage
from core.events import Event
from core.models import load_huggingface, make_student
from core.pipeline import run
from core.spec import CompressionSpec


@pytest.fixture
def catalog(tmp_path: Path) -> AudioCatalog:
    rng = np.random.default_rng(3)
    root = tmp_path / "utts"
    root.mkdir()
    for i, seconds in enumerate(rng.uniform(0.5, 2.5, size=24)):
        sf.write(
            root / f"u{i:02d}.wav", rng.uniform(-0.5, 0.5, round(seconds * 8000)).astype(np.float32), 8000
        )
    return scan_audio(root, min_seconds=0.1)


def _stream(catalog: AudioCatalog) -> TrainBatches:
    return TrainBatches(
        catalog, sample_rate=16000, batch_seconds=4.0, min_utterance_s=0.5, max_utterance_s=2.0, seed=11
    )


def _key(batch: Batch) -> tuple[list[str], bytes]:
    return batch.ids, batch.waveforms.numpy().tobytes()


def test_workers_serve_the_same_batches_and_resume_exactly(catalog: AudioCatalog) -> None:
    plain = _stream(catalog)
    n = plain.batches_per_epoch * 2 + 3  # across two epoch boundaries
    expected = [_key(next(plain)) for _ in range(n)]

    stream = _stream(catalog)
    loader = BatchLoader(stream, workers=2, prefetch=3)
    got = []
    for batch in loader:
        got.append(_key(batch))
        if len(got) == n // 2:
            break
    # the stream counts what was received, not what the workers prefetched
    assert stream.consumed == n // 2
    state = stream.state_dict()
    loader.close()

    resumed = _stream(catalog)
    resumed.load_state_dict(state)
    loader = BatchLoader(resumed, workers=1)
    for batch in loader:
        got.append(_key(batch))
        if len(got) == n:
            break
    loader.close()
    assert got == expected
    assert resumed.consumed == n


def test_serve_is_a_pure_function_of_the_index(catalog: AudioCatalog) -> None:
    stream = _stream(catalog)
    first = [_key(next(stream)) for _ in range(5)]
    assert [_key(stream.serve(i)) for i in range(5)] == first
    assert stream.consumed == 5
    stream.seek(2)
    assert _key(next(stream)) == first[2]


def test_default_workers() -> None:
    assert default_workers(torch.device("cpu")) == 0
    assert 1 <= default_workers(torch.device("cuda"), ranks=1) <= 4
    assert default_workers(torch.device("cuda"), ranks=64) == 1
    with pytest.raises(ValueError):
        BatchLoader(_FakeStream(), workers=-1)


class _FakeStream:
    consumed = 0

    def seek(self, consumed: int) -> None:
        pass

    def serve(self, index: int) -> Batch:
        g = torch.Generator().manual_seed(index)
        w = 0.1 * torch.randn(2, 8000, generator=g)
        return Batch(w, torch.full((2,), 8000), ["a", "b"])

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _audio(directory: Path) -> Path:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        sf.write(
            directory / f"u{i}.wav",
            (0.3 * rng.standard_normal(int(16000 * rng.uniform(1.0, 1.6)))).astype(np.float32),
            16000,
        )
    return directory


def test_pipeline_with_loader_workers_equals_without(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    audio = _audio(tmp_path / "audio")
    base = dict(stage1_steps=6, stage2_steps=3, batch_seconds=2.0, checkpoint_every=2)
    a = run(CompressionSpec(**base, data_workers=0), tiny_teacher_dir, audio, tmp_path / "a")
    b = run(CompressionSpec(**base, data_workers=2), tiny_teacher_dir, audio, tmp_path / "b")
    assert a.report["student"] == b.report["student"]
    sa = torch.load(tmp_path / "a" / "final_distill" / "checkpoint.pt", weights_only=False)["student"]
    sb = torch.load(tmp_path / "b" / "final_distill" / "checkpoint.pt", weights_only=False)["student"]
    for name, value in sa.items():
        assert torch.equal(value, sb[name]), name


def _stage(
    tmp_path: Path, teacher_dir: Path, *, compile: bool, events: list[Event] | None = None, steps: int = 3
) -> dict:
    teacher = load_huggingface(teacher_dir)
    torch.manual_seed(0)
    student = make_student(teacher)
    targets = ClusterTargets([[0], [1, 2]], teacher.config.hidden_size)
    recipe = CompressionSpec(stage1_steps=steps, checkpoint_every=100).recipe(1)
    ctx = StageContext(
        tmp_path,
        recipe,
        torch.device("cpu"),
        "distill_prune",
        0.5,
        teacher.num_params(),
        on_event=(events.append if events is not None else lambda e: None),
        compile=compile,
    )
    train_stage(student, teacher, targets, _FakeStream(), ctx)  # type: ignore[arg-type]
    return student.state_dict()


def test_compile_failure_falls_back_to_eager_with_a_message(
    tmp_path: Path, tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = _stage(tmp_path / "eager", tiny_teacher_dir, compile=False)

    def broken_compile(module, **kwargs):  # noqa: ANN001, ANN202
        def call(*args, **kw):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("no C++ compiler here\nlong backtrace")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    events: list[Event] = []
    fallen_back = _stage(tmp_path / "fallback", tiny_teacher_dir, compile=True, events=events)
    messages = [e.message for e in events if e.kind == "log"]
    assert any("torch.compile failed (RuntimeError: no C++ compiler here)" in (m or "") for m in messages)
    for name, value in eager.items():  # the failed attempt consumed no randomness: the same run as eager
        assert torch.equal(value, fallen_back[name]), name


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("c++") or shutil.which("g++")), reason="inductor needs a C++ compiler on CPU"
)
def test_compiled_training_runs_and_tracks_eager(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    """Real torch.compile (inductor) on CPU: no fallback, finite figures, weights close to an eager run.
    Stage 1 samples masks with random numbers that compiled code draws differently, so compare loosely."""
    events: list[Event] = []
    compiled = _stage(tmp_path / "c", tiny_teacher_dir, compile=True, events=events, steps=2)
    assert not [e for e in events if e.kind == "log" and "torch.compile failed" in (e.message or "")]
    progress = [e for e in events if e.kind == "progress"]
    assert progress and all(np.isfinite(v) for v in progress[-1].metrics.values())
    eager = _stage(tmp_path / "e", tiny_teacher_dir, compile=False, steps=2)
    diffs = [
        (compiled[k].float() - eager[k].float()).abs().max().item() for k in eager if "log_alpha" not in k
    ]
    assert max(diffs) < 0.05


def _iterate_in_daemon(catalog: AudioCatalog, out: object) -> None:
    loader = BatchLoader(_stream(catalog), workers=2)
    out.put([_key(b) for b, _ in zip(loader, range(3))])  # type: ignore[attr-defined]
    loader.close()


def test_a_daemonic_process_loads_in_process(catalog: AudioCatalog) -> None:
    """Daemonic processes (some process pools) may not start children: the loader serves the same batches
    without workers instead of failing."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_iterate_in_daemon, args=(catalog, queue), daemon=True)
    proc.start()
    got = queue.get(timeout=60)
    proc.join(timeout=10)
    plain = _stream(catalog)
    assert got == [_key(next(plain)) for _ in range(3)]
