"""What report.json tells a user about a run: measured speed of teacher and student, wall times per stage, and
the calibration audio; and the speed headline in the job's events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.pipeline import run
from core.spec import CompressionSpec
from tests.utils.audio import write_audio
from tests.utils.pipeline import SPEC


def test_report_has_speed_timings_and_calibration_audio(
    tmp_path: Path, tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKILLKD_SPEED_RUNS", "2")  # the suite skips the timing by default (conftest)
    audio = write_audio(tmp_path / "audio")
    events = []
    result = run(CompressionSpec(**SPEC), tiny_teacher_dir, audio, tmp_path / "w", on_event=events.append)
    report = json.loads((result.export_dir / "report.json").read_text())

    speed = report["speed"]
    assert speed["teacher"]["params"] == report["teacher"]["num_params"]
    assert speed["student"]["params"] == report["student"]["num_params"]
    assert speed["teacher"]["macs_per_second"] > speed["student"]["macs_per_second"] > 0
    for setting in ("cpu_1_thread", "cpu_all_threads"):
        assert speed[setting]["teacher_rtf"] > 0 and speed[setting]["student_rtf"] > 0
        assert len(speed[setting]["times_s"]["teacher"]) == speed["protocol"]["runs"]
    assert speed["cpu_1_thread"]["threads"] == 1
    assert speed["protocol"]["utterance_seconds"] == 10.0

    timings = report["timings_s"]
    stages = ["inputs", "calibrate", "distill_prune", "finalize", "final_distill", "export"]
    assert list(timings) == [*stages, "total"]
    assert all(timings[s] > 0 for s in stages)
    assert abs(timings["total"] - sum(timings[s] for s in stages)) < 1e-2

    assert "seconds" not in report["stage1"] and "seconds" not in report["stage2"]  # one clock: timings_s

    calibration = report["calibration"]
    assert set(calibration) == {"utterances", "frames", "audio_seconds"}
    assert 8.0 < calibration["audio_seconds"] < 8 * 1.6 + 1e-6  # 8 utterances of 1-1.6 s

    # the job's metrics: a progress event of the export stage carries the headline
    export = [e for e in events if e.stage == "export" and e.kind in ("progress", "stage_finished")]
    assert [e.kind for e in export] == ["progress", "stage_finished"]
    headline = export[0].metrics
    assert headline == export[1].metrics
    assert headline["student_params"] == report["student"]["num_params"]
    assert headline["speedup_cpu_1_thread"] == speed["cpu_1_thread"]["speedup"]
    assert all(isinstance(v, float) for v in headline.values())

    # a second call on the finished workdir keeps the recorded times
    again = run(CompressionSpec(**SPEC), tiny_teacher_dir, audio, tmp_path / "w")
    assert again.report["timings_s"] == timings


def test_a_student_with_zero_width_layers_loads_without_warnings(
    tmp_path: Path, tiny_wavlm_dir: Path
) -> None:
    import warnings

    import torch

    from core.export.student import save_student
    from core.models import load_huggingface, load_student, make_student

    student = make_student(load_huggingface(tiny_wavlm_dir))
    with torch.no_grad():
        for layer in student.layers():  # every head of every layer, and every FFN unit of the last, pruned
            layer.attention.hard_concrete.log_alpha.fill_(-100.0)
        student.layers()[-1].feed_forward.hard_concrete.log_alpha.fill_(-100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        student.eval().prune()
        save_student(student, tmp_path / "student")
        loaded = load_student(tmp_path / "student")
    assert [layer.attention.num_heads for layer in loaded.layers()] == [0, 0]
    assert loaded.layers()[-1].feed_forward.ffn_dim == 0
    with torch.no_grad():
        x = torch.randn(1, 4000)
        assert torch.equal(loaded(x)[0][-1], student(x)[0][-1])


def test_cli_compress_prints_the_measured_speed(
    tmp_path: Path, tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from cli import skillkd as cli

    monkeypatch.setenv("SKILLKD_SPEED_RUNS", "1")
    audio = write_audio(tmp_path / "audio", n=4)
    res = CliRunner().invoke(
        cli,
        [
            "compress",
            str(tiny_teacher_dir),
            str(audio),
            "--out",
            str(tmp_path / "run"),
            "--stage1-steps",
            "4",
            "--stage2-steps",
            "2",
            "--batch-seconds",
            "2",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "student" / "report.json").read_text())
    speed = report["speed"]
    assert (
        f"speed:   {speed['macs_ratio']:.2f}x fewer MACs than the teacher, "
        f"{speed['cpu_1_thread']['speedup']:.2f}x faster on one CPU thread"
    ) in res.stdout


def test_the_hugging_face_export_of_zero_width_layers_loads_without_warnings(
    tmp_path: Path, tiny_wavlm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    import torch
    from transformers import AutoModel

    from core.export.hf import save_hf_export
    from core.models import load_huggingface, make_student

    student = make_student(load_huggingface(tiny_wavlm_dir))
    with torch.no_grad():
        for layer in student.layers():
            layer.attention.hard_concrete.log_alpha.fill_(-100.0)
        student.layers()[0].feed_forward.hard_concrete.log_alpha.fill_(-100.0)
    student.eval().prune()
    directory = save_hf_export(student, tmp_path / "hf")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = AutoModel.from_pretrained(directory, trust_remote_code=True)
    assert not [w for w in caught if "zero-element" in str(w.message)]
    assert model.config.layer_num_heads == [0, 0] and model.config.layer_intermediate_size[0] == 0
