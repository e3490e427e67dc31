"""The dry run (core.estimate, `skillkd compress --dry-run`): same validation as a run, sizes, work, timed
steps, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.errors import AudioError, SpecError
from core.estimate import default_clusters, estimate, uniform_student
from core.models import load_huggingface, make_student
from core.pipeline import run
from core.spec import Budget, CompressionSpec
from tests.utils.audio import write_audio
from tests.utils.pipeline import SPEC


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_estimate_gives_sizes_work_and_time_and_writes_nothing(
    tmp_path: Path, tiny_teacher_dir: Path
) -> None:
    audio = write_audio(tmp_path / "audio")
    before = _tree(tmp_path)
    spec = CompressionSpec(
        **SPEC, sparsity=0.6
    )  # 0.75 leaves no room for the conv_kept shape on this teacher
    result = estimate(spec, tiny_teacher_dir, audio, timed_steps=2)
    assert _tree(tmp_path) == before

    teacher = load_huggingface(tiny_teacher_dir)
    assert result["teacher"]["num_params"] == teacher.num_params()
    assert result["teacher"]["macs_per_second"] == pytest.approx(float(teacher.expected_macs(10.0)))
    [budget] = result["targets"]
    assert budget["kind"] == "params" and budget["sparsity"] == 0.6
    for shape in ("uniform", "conv_kept"):
        student = result["student_estimate"][shape]
        assert student["num_params"] <= budget["target"]
        assert 0.0 < student["keep_fraction"] < 1.0
    assert result["student_estimate"]["stage2_timed_on"] == "conv_kept"
    for shape in ("uniform", "conv_kept"):  # (which is cheaper depends on the teacher's proportions)
        assert 0 < result["student_estimate"][shape]["macs_per_second"] < result["teacher"]["macs_per_second"]

    work = result["work"]
    assert (work["stage1_steps"], work["stage2_steps"]) == (8, 4)
    assert work["calibration_utterances"] == 8
    assert 0 < work["stage1_audio_seconds"] <= 8 * 2.0 and 0 < work["stage2_audio_seconds"] <= 4 * 2.0
    timing = result["timing"]
    assert len(timing["stage1"]["times_s"]) == len(timing["stage2"]["times_s"]) == 2
    seconds = result["estimated_seconds"]
    assert seconds["distill_prune"] == pytest.approx(8 * timing["stage1"]["step_s"], abs=0.1)
    assert seconds["final_distill"] == pytest.approx(4 * timing["stage2"]["step_s"], abs=0.1)
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k != "total"), abs=0.2)
    assert json.loads(json.dumps(result)) == result


def test_a_macs_target_is_met_by_the_uniform_student(tiny_teacher_dir: Path) -> None:
    teacher = load_huggingface(tiny_teacher_dir)
    student = make_student(teacher)
    macs = float(teacher.expected_macs(10.0))
    budgets = [Budget("params", float(teacher.num_params()), 0.5), Budget("macs", macs, 0.7)]
    shape = uniform_student(student, budgets, 10.0)
    assert shape is not None
    assert shape["macs_per_second"] <= 0.3 * macs and shape["num_params"] <= 0.5 * teacher.num_params()
    # a little more kept would miss a target: the fraction is the largest that fits
    assert shape["macs_per_second"] > 0.2 * macs
    # keeping every conv channel (and the projection and positional conv), 99.9% fewer MACs is out of reach
    assert uniform_student(student, [Budget("macs", macs, 0.999)], 10.0, conv=False) is None


def test_default_clusters_follow_the_spec() -> None:
    assert default_clusters(CompressionSpec(), 12) == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9], [10, 11, 12]]
    assert default_clusters(CompressionSpec(method="dphubert"), 12) == [[0], [4], [8], [12]]
    assert default_clusters(CompressionSpec(clusters=[[0], [1, 2]]), 2) == [[0], [1, 2]]


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        (dict(target_params=10**9), SpecError, "not smaller than the teacher"),
        (dict(clusters=[[0], [1, 7]]), SpecError, "clusters"),
        (dict(evaluate=True), SpecError, "arpabet"),
    ],
)
def test_bad_specs_fail_as_a_real_run_fails(
    tmp_path: Path, tiny_teacher_dir: Path, spec: dict, error: type, match: str
) -> None:
    audio = write_audio(tmp_path / "audio", n=3)
    with pytest.raises(error, match=match) as dry:
        estimate(CompressionSpec(**SPEC, **spec), tiny_teacher_dir, audio)
    with pytest.raises(error, match=match) as real:
        run(CompressionSpec(**SPEC, **spec), tiny_teacher_dir, audio, tmp_path / "w")
    assert str(dry.value) == str(real.value)


def test_audio_too_short_for_training_fails_before_any_stage(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    audio = write_audio(tmp_path / "audio", n=3)  # utterances of 1-1.6 s
    with pytest.raises(AudioError, match="no utterance of at least 2.0 s"):
        estimate(CompressionSpec(**{**SPEC, "preset": "paper"}), tiny_teacher_dir, audio)


def test_cli_dry_run(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    from cli import skillkd as cli

    audio = write_audio(tmp_path / "audio", n=4)
    out = tmp_path / "run"
    options = [
        "--stage1-steps",
        "4",
        "--stage2-steps",
        "2",
        "--batch-seconds",
        "2",
        "--out",
        str(out),
        "--dry-run",
    ]
    runner = CliRunner()
    text = runner.invoke(cli, ["compress", str(tiny_teacher_dir), str(audio), *options])
    assert text.exit_code == 0, text.output
    assert "nothing was written" in text.stdout and "estimate:" in text.stdout and "params <=" in text.stdout
    as_json = runner.invoke(cli, ["compress", str(tiny_teacher_dir), str(audio), *options, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["work"]["stage1_steps"] == 4
    assert not out.exists()
    bad = runner.invoke(
        cli, ["compress", str(tiny_teacher_dir), str(audio), *options, "--target-params", "1G"]
    )
    assert bad.exit_code == 2 and "error [spec_invalid]" in bad.stderr and "Traceback" not in bad.output
    weights = ["--target-weights", "1", "--target-weights", "2"]  # 2 weights, 4 clusters by default
    bad = runner.invoke(cli, ["compress", str(tiny_teacher_dir), str(audio), *options, *weights])
    assert bad.exit_code == 2 and "target_weights has 2 weights but there will be 4 clusters" in bad.stderr
    ok = runner.invoke(
        cli, ["compress", str(tiny_teacher_dir), str(audio), *options, *weights, "--clusters", "2"]
    )
    assert ok.exit_code == 0, ok.output


def test_too_few_batches_for_the_data_parallel_ranks_fails(tmp_path: Path, tiny_teacher_dir: Path) -> None:
    audio = write_audio(tmp_path / "audio", n=3)  # a few 2 s batches per epoch: not enough for 8 ranks
    with pytest.raises(AudioError, match="one optimiser step of 8 batches"):
        estimate(CompressionSpec(**SPEC, gpus=8), tiny_teacher_dir, audio)


def test_an_int8_aware_stage_2_is_timed_through_the_rounding_and_its_consistency_pass(
    tmp_path: Path, tiny_teacher_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its steps cost more than plain ones (a second, rounded forward and backward): the dry run times them
    as the run trains them, and says so; the hooks are gone after."""
    from core.distill.train import DistillStep

    audio = write_audio(tmp_path / "audio")
    passes: list[int] = []
    consistency = DistillStep._int8_consistency

    def counted(self: DistillStep, waveforms, count: int):  # type: ignore[no-untyped-def]
        passes.append(count)
        return consistency(self, waveforms, count)

    monkeypatch.setattr(DistillStep, "_int8_consistency", counted)
    plain = estimate(CompressionSpec(**SPEC, sparsity=0.6), tiny_teacher_dir, audio, timed_steps=2)
    assert passes == [] and plain["timing"]["stage2"]["int8_aware"] is False
    aware = estimate(
        CompressionSpec(**SPEC, sparsity=0.6, int8_aware=True), tiny_teacher_dir, audio, timed_steps=2
    )
    assert len(passes) >= 3  # one untimed step and two timed ones, each with its consistency pass
    assert aware["timing"]["stage2"]["int8_aware"] is True
