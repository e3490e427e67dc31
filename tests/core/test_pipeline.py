"""The job end to end on a tiny random-init teacher: stages, export, stop/resume, bad inputs, the CLI."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from core.errors import AudioError, SpecError, StopRequested
from core.inputs import teacher_sha256
from core.models import load_student
from core.pipeline import run
from core.spec import CompressionSpec
from tests.utils.audio import write_audio
from tests.utils.models import save_tiny_teacher
from tests.utils.pipeline import SPEC


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    return write_audio(tmp_path / "audio")


def test_final_distillation_reports_progress_and_stops_when_asked(
    tmp_path: Path, tiny_teacher_dir: Path, audio_dir: Path
) -> None:
    """Stage 2 emits progress and honours should_stop like stage 1 (it once did neither: the service showed
    no progress and could not cancel a job in its final distillation)."""
    seen: list = []

    def stop_in_stage2() -> bool:
        return any(e.kind == "progress" and e.stage == "final_distill" for e in seen)

    with pytest.raises(StopRequested):
        run(
            CompressionSpec(**{**SPEC, "stage2_steps": 40}),
            tiny_teacher_dir,
            audio_dir,
            tmp_path / "w",
            on_event=seen.append,
            should_stop=stop_in_stage2,
        )
    steps = [e.step for e in seen if e.kind == "progress" and e.stage == "final_distill"]
    assert steps and max(steps) < 40


def test_full_run_exports_a_loadable_smaller_student(
    tmp_path: Path, tiny_teacher_dir: Path, audio_dir: Path
) -> None:
    events = []
    result = run(
        CompressionSpec(**SPEC, export_onnx=True),
        tiny_teacher_dir,
        audio_dir,
        tmp_path / "w",
        on_event=events.append,
    )
    report = result.report
    student = load_student(result.export_dir)
    assert student.num_params() == report["student"]["num_params"]
    assert report["student"]["num_params"] < report["teacher"]["num_params"]
    for kept, full in zip(report["student"]["layers"], report["teacher"]["layers"], strict=True):  # per layer
        assert kept["heads"] <= full["heads"] and kept["ffn"] <= full["ffn"]
    assert len(report["teacher"]["conv_channels"]) == len(report["student"]["conv_channels"])
    assert report["finalize"]["max_abs_diff_masked_vs_pruned"] < 1e-4
    assert len(report["cka"]) == 3 and abs(report["cka"][0][0] - 1.0) < 1e-6
    assert sorted(i for c in report["clusters"] for i in c) == [0, 1, 2]
    for name in ("model", "report.json", "cka.png", "clusters.json", "train_log", "onnx", "hf"):
        assert result.artifacts[name].exists(), name
    assert report["onnx"]["max_abs_diff"] < 1e-3
    stages = [e.stage for e in events if e.kind == "stage_finished"]
    assert stages == ["calibrate", "distill_prune", "finalize", "final_distill", "export"]
    progress = [e for e in events if e.kind == "progress" and e.stage == "distill_prune"]
    assert progress[-1].step == progress[-1].total == 8 and "sparsity" in progress[-1].metrics
    with torch.no_grad():
        reps, frames = student(torch.randn(2, 8000), torch.tensor([8000, 6000]))
    assert len(reps) == 3 and frames.tolist()[0] > frames.tolist()[1]
    # the log is one continuous record of both stages
    log = [json.loads(line) for line in result.artifacts["train_log"].read_text().splitlines()]
    assert [r["step"] for r in log if r["stage"] == "distill_prune"] == list(range(1, 9))
    assert_publishable(result.export_dir, tmp_path, tiny_teacher_dir)
    assert_publishable(result.artifacts["hf"], tmp_path, tiny_teacher_dir)
    assert report["teacher"]["name"] == tiny_teacher_dir.name and len(report["teacher"]["sha256"]) == 64
    assert report["teacher"]["sha256"] == teacher_sha256(tiny_teacher_dir)
    assert "onnx" in {p.name for p in result.artifacts["hf"].iterdir()}


def assert_publishable(directory: Path, *private: Path) -> None:
    """No exported file names a path of the machine it was made on (the service's storage, a user's home), and
    every file is world-readable."""
    needles = {str(p.resolve()).encode() for p in private} | {str(p).encode() for p in private}
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        data = path.read_bytes()
        assert not any(needle in data for needle in needles), path


def test_a_second_run_on_a_finished_workdir_does_nothing_again(
    tmp_path: Path, tiny_teacher_dir: Path, audio_dir: Path
) -> None:
    first = run(CompressionSpec(**SPEC), tiny_teacher_dir, audio_dir, tmp_path / "w")
    events = []
    again = run(CompressionSpec(**SPEC), tiny_teacher_dir, audio_dir, tmp_path / "w", on_event=events.append)
    assert not [e for e in events if e.kind == "progress"]
    assert again.report["student"] == first.report["student"]


def test_stopped_and_resumed_run_equals_uninterrupted_run(
    tmp_path: Path, tiny_teacher_dir: Path, audio_dir: Path
) -> None:
    spec = CompressionSpec(stage1_steps=12, stage2_steps=4, batch_seconds=2.0, checkpoint_every=3)
    straight = run(spec, tiny_teacher_dir, audio_dir, tmp_path / "a")

    log = tmp_path / "b" / "distill_prune" / "train_log.jsonl"

    def stop_soon() -> bool:  # polled between batches and every 5 training steps: stops stage 1 at step 5
        return log.exists() and len(log.read_text().splitlines()) >= 5

    with pytest.raises(StopRequested):
        run(spec, tiny_teacher_dir, audio_dir, tmp_path / "b", should_stop=stop_soon)
    ckpt = torch.load(tmp_path / "b" / "distill_prune" / "checkpoint.pt", weights_only=False)
    assert 0 < ckpt["step"] < 12
    resumed = run(spec, tiny_teacher_dir, audio_dir, tmp_path / "b")
    a, b = load_student(straight.export_dir), load_student(resumed.export_dir)
    assert a.config == b.config
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), name


def test_dphubert_mode_uses_fixed_layers(tmp_path: Path, audio_dir: Path) -> None:
    teacher = save_tiny_teacher(tmp_path / "t", "hubert", num_hidden_layers=3)
    result = run(CompressionSpec(**SPEC, method="dphubert"), teacher, audio_dir, tmp_path / "w")
    assert result.report["clusters"] == [[0], [1], [2], [3]]


def test_explicit_clusters_and_target_params(tmp_path: Path, tiny_wavlm_dir: Path, audio_dir: Path) -> None:
    spec = CompressionSpec(**SPEC, clusters=[[0], [1, 2]], target_params=15_000)
    result = run(spec, tiny_wavlm_dir, audio_dir, tmp_path / "w")
    assert result.report["clusters"] == [[0], [1, 2]]
    assert result.report["target_sparsity"] == pytest.approx(
        1 - 15_000 / result.report["teacher"]["num_params"]
    )


def test_bad_inputs_raise_engine_errors(tmp_path: Path, tiny_teacher_dir: Path, audio_dir: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio here")
    with pytest.raises(AudioError):
        run(CompressionSpec(**SPEC), tiny_teacher_dir, empty, tmp_path / "w1")
    with pytest.raises(SpecError, match="representations"):
        run(CompressionSpec(**SPEC, clusters=9), tiny_teacher_dir, audio_dir, tmp_path / "w2")
    with pytest.raises(SpecError, match="clusters"):
        run(CompressionSpec(**SPEC, clusters=[[0], [5]]), tiny_teacher_dir, audio_dir, tmp_path / "w3")
    run(CompressionSpec(**SPEC), tiny_teacher_dir, audio_dir, tmp_path / "w4")
    with pytest.raises(SpecError, match="different spec"):
        run(CompressionSpec(**SPEC, sparsity=0.5), tiny_teacher_dir, audio_dir, tmp_path / "w4")


def test_cli_compress_inspect_export(tmp_path: Path, tiny_teacher_dir: Path, audio_dir: Path) -> None:
    from cli import skillkd as cli

    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(
        cli,
        [
            "compress",
            str(tiny_teacher_dir),
            str(audio_dir),
            "--out",
            str(out),
            "--stage1-steps",
            "4",
            "--stage2-steps",
            "2",
            "--batch-seconds",
            "2",
            "--json",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["student_params"] < summary["teacher_params"]
    res = runner.invoke(cli, ["inspect", summary["student"], "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["num_params"] == summary["student_params"]
    res = runner.invoke(cli, ["export", summary["student"], "--onnx", "--json"])
    assert res.exit_code == 0, res.output
    assert Path(json.loads(res.stdout)["onnx"]["files"]["fp32"]).exists()
    # existing run without --resume: a usage error, not a traceback
    res = runner.invoke(cli, ["compress", str(tiny_teacher_dir), str(audio_dir), "--out", str(out)])
    assert res.exit_code == 2 and "--resume" in res.output
    # a bad teacher: a clear message and exit code 2
    res = runner.invoke(
        cli, ["compress", str(tmp_path / "missing"), str(audio_dir), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "error [teacher_invalid]" in res.output
    res = runner.invoke(cli, ["compress", str(tiny_teacher_dir), str(audio_dir), "--sparsity", "1.5"])
    assert res.exit_code == 2 and "sparsity" in res.output


def test_core_pipeline_does_not_import_the_service() -> None:
    import subprocess
    import sys

    code = (
        "import sys, core.pipeline, cli.engine; bad = [m for m in ('fastapi', 'celery', 'sqlalchemy', "
        "'redis') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_a_run_keeps_its_global_batch_when_resumed_on_another_number_of_processes(tmp_path: Path) -> None:
    from core.workdir import Workdir

    teacher, audio = tmp_path / "t", tmp_path / "a"
    wd = Workdir(tmp_path / "w")
    assert wd.claim(CompressionSpec(**SPEC, gpus=2), teacher, audio) == 2
    assert json.loads((tmp_path / "w" / "job.json").read_text())["batches_per_step"] == 2
    assert wd.claim(CompressionSpec(**SPEC, gpus=1), teacher, audio) == 2  # one process accumulating 2
    assert wd.claim(CompressionSpec(**SPEC, gpus=1, grad_accumulation=2), teacher, audio) == 2
    with pytest.raises(SpecError, match="use grad_accumulation 2 or leave it out"):
        wd.claim(CompressionSpec(**SPEC, gpus=1, grad_accumulation=1), teacher, audio)
    with pytest.raises(SpecError, match="3 processes cannot share"):
        wd.claim(CompressionSpec(**SPEC, gpus=3), teacher, audio)
    # a run started with accumulation: 2 processes x 2, resumable on 4 x 1
    other = Workdir(tmp_path / "w2")
    assert other.claim(CompressionSpec(**SPEC, gpus=2, grad_accumulation=2), teacher, audio) == 4
    assert other.claim(CompressionSpec(**SPEC, gpus=4), teacher, audio) == 4


def test_a_run_started_before_a_spec_field_existed_resumes_with_its_default(tmp_path: Path) -> None:
    """A workdir whose job.json predates a field (`speed_margin`, added with a default) resumes with that
    default; one that recorded another value of it, or a field this version does not know, is refused."""
    from core.workdir import Workdir

    teacher, audio = tmp_path / "t", tmp_path / "a"
    spec = CompressionSpec(**SPEC, target_speedup=2.0)
    wd = Workdir(tmp_path / "w")
    wd.claim(spec, teacher, audio)
    path = tmp_path / "w" / "job.json"
    saved = json.loads(path.read_text())
    del saved["spec"]["speed_margin"]  # as an older version wrote it
    path.write_text(json.dumps(saved))
    wd.claim(spec, teacher, audio)  # resumes
    with pytest.raises(SpecError, match="different spec"):
        wd.claim(CompressionSpec(**SPEC, target_speedup=2.0, speed_margin=0.1), teacher, audio)
    saved["spec"]["a_field_from_elsewhere"] = 1
    path.write_text(json.dumps(saved))
    with pytest.raises(SpecError, match="different spec"):
        wd.claim(spec, teacher, audio)
