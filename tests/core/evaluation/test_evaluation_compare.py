"""compare(): the train-only view, the orchestration (with a stand-in pipeline), the report files, and one
slow end-to-end run through the real pipeline on a tiny random teacher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from transformers import HubertConfig, HubertModel

from cli.evaluate import compare_command
from core.errors import AudioError
from core.evaluation.compare import compare, write_split_view
from core.evaluation.probes import PhoneProbeConfig, SpeakerProbeConfig
from tests.utils.evaluation import write_dataset

FAST = dict(phone_config=PhoneProbeConfig(epochs=2), speaker_config=SpeakerProbeConfig(epochs=5))


def save_teacher(path: Path, **overrides: Any) -> Path:
    """The tiny random teacher of the issue: hidden 32, 2 layers, 2 heads, a 2-layer conv stack."""
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32),
        conv_kernel=(10, 3),
        conv_stride=(5, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    settings.update(overrides)
    torch.manual_seed(0)
    HubertModel(HubertConfig(**settings)).save_pretrained(path)
    return path


def test_split_view_keeps_only_that_split(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data")
    view = write_split_view(dataset, "train", tmp_path / "view")
    rows = [json.loads(line) for line in (view / "manifest.jsonl").read_text().splitlines()]
    source = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
    assert rows == [row for row in source if row["split"] == "train"]  # every field kept, order kept
    for row in rows:
        assert (view / row["path"]).read_bytes() == (dataset / row["path"]).read_bytes()
    assert not any((view / row["path"]).exists() for row in source if row["split"] == "test")
    again = write_split_view(dataset, "train", tmp_path / "view")  # idempotent (resumed comparisons)
    assert (again / "manifest.jsonl").read_text() == (view / "manifest.jsonl").read_text()
    with pytest.raises(AudioError, match="'dev'"):
        write_split_view(dataset, "dev", tmp_path / "dev")


class FakePipeline:
    """Stands in for core.pipeline.run: 'compresses' by copying the teacher and records what it was given."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, spec: Any, teacher: Path, audio: Path, workdir: Path, **kwargs: Any) -> Any:
        from core.pipeline import PipelineResult

        splits = {json.loads(line)["split"] for line in (audio / "manifest.jsonl").read_text().splitlines()}
        self.calls.append(
            {
                "method": spec.method,
                "seed": spec.seed,
                "sparsity": spec.sparsity,
                "steps": (spec.stage1_steps, spec.stage2_steps),
                "splits": splits,
            }
        )
        export = workdir / "student"
        shutil.copytree(teacher, export, dirs_exist_ok=True)
        report = {
            "clusters": [[0], [1, 2]],
            "achieved_sparsity": 0.5,
            "speed": {"cpu_1_thread": {"speedup": 3.0 + spec.seed}},
        }  # what core.evaluation.speed measured in the job
        return PipelineResult(export, report, {})


def test_compare_orchestrates_methods_and_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.pipeline

    fake = FakePipeline()
    monkeypatch.setattr(core.pipeline, "run", fake)
    teacher = save_teacher(
        tmp_path / "teacher", conv_dim=(32, 32, 32), conv_kernel=(10, 8, 4), conv_stride=(5, 8, 8)
    )
    dataset = write_dataset(tmp_path / "data")
    out = tmp_path / "cmp"
    result = compare(
        teacher, dataset, out_dir=out, seeds=2, stage1_steps=4, stage2_steps=2, measure_speed=False, **FAST
    )
    assert [(c["method"], c["seed"]) for c in fake.calls] == [
        ("skill", 0),
        ("skill", 1),
        ("dphubert", 0),
        ("dphubert", 1),
    ]
    assert all(
        c["splits"] == {"train"} and c["steps"] == (4, 2) and c["sparsity"] == 0.75 for c in fake.calls
    )
    assert [row["model"] for row in result["rows"]] == ["teacher", "fbank", "skill", "dphubert"]
    assert all(row["runs"] == 2 for row in result["rows"])
    runs = {(run["group"], run["seed"]): run for run in result["runs"]}
    # A copied teacher probed with the same seed is the teacher: same numbers, CKA 1.
    for seed in (0, 1):
        assert runs[("skill", seed)]["pr"] == runs[("teacher", seed)]["pr"]
        assert runs[("skill", seed)]["cka"]["values"] == pytest.approx([1.0, 1.0], abs=1e-3)
    assert runs[("teacher", 0)]["pr"] != runs[("teacher", 1)]["pr"]  # seeds differ
    for name in ("comparison.json", "comparison.md", "comparison.png"):
        assert (out / name).stat().st_size > 0
    table = (out / "comparison.md").read_text()
    assert "| skill |" in table and "±" in table
    # the interleaved speed-up of each job's report, mean over seeds (3 and 4)
    assert [row["speedup_cpu_1_thread"] for row in result["rows"]] == [None, None, 3.5, 3.5]
    assert "speed-up, 1 thread" in table and "| 3.50× |" in table
    assert json.loads((out / "comparison.json").read_text())["rows"] == result["rows"]
    # paired by seed a copy of the teacher differs from it by nothing, sd too (unpaired: the seeds' spread)
    students = [row for row in result["rows"] if row["model"] in ("skill", "dphubert")]
    assert all(row["per_vs_teacher_mean"] == 0.0 and row["per_vs_teacher_std"] == 0.0 for row in students)
    assert all(row["sid_accuracy_vs_teacher_mean"] == 0.0 for row in students)
    assert result["rows"][0]["per_vs_teacher_mean"] is None  # the teacher itself
    assert "PER − teacher" in table and "| +0.00 ± 0.00 |" in table

    again = compare(
        teacher,
        dataset,
        out_dir=tmp_path / "cmp2",
        seeds=2,
        stage1_steps=4,
        stage2_steps=2,
        measure_speed=False,
        **FAST,
    )
    for first, second in zip(result["runs"], again["runs"], strict=True):
        assert first.get("pr") == second.get("pr") and first.get("sid") == second.get("sid")


def test_compare_budgets_runs_each_method_at_each_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.pipeline
    from core.evaluation.compare import parse_budgets

    budgets = parse_budgets("sparsity=0.75;macs_sparsity=0.75;sparsity=0.5,target_macs=2.5G")
    assert budgets == [{"sparsity": 0.75}, {"macs_sparsity": 0.75}, {"sparsity": 0.5, "target_macs": "2.5G"}]
    with pytest.raises(ValueError, match="field=value"):
        parse_budgets("params=0.75")
    fake = FakePipeline()
    monkeypatch.setattr(core.pipeline, "run", fake)
    teacher = save_teacher(
        tmp_path / "teacher", conv_dim=(32, 32, 32), conv_kernel=(10, 8, 4), conv_stride=(5, 8, 8)
    )
    result = compare(
        teacher,
        write_dataset(tmp_path / "data"),
        out_dir=tmp_path / "cmp",
        methods=["skill"],
        seeds=1,
        budgets=budgets[:2],
        include_fbank=False,
        measure_speed=False,
        **FAST,
    )
    assert [row["model"] for row in result["rows"]] == [
        "teacher",
        "skill [sparsity=0.75]",
        "skill [macs_sparsity=0.75]",
    ]
    assert [c["sparsity"] for c in fake.calls] == [0.75, None]
    assert "budgets sparsity=0.75; macs_sparsity=0.75" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_compare_compresses_on_another_split_and_reports_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held-out-speakers view: compression sees split 'compress' only, probes run on the other two."""
    import core.pipeline

    fake = FakePipeline()
    monkeypatch.setattr(core.pipeline, "run", fake)
    teacher = save_teacher(
        tmp_path / "teacher", conv_dim=(32, 32, 32), conv_kernel=(10, 8, 4), conv_stride=(5, 8, 8)
    )
    dataset = write_dataset(tmp_path / "data", per_speaker={"compress": 2, "probe_train": 3, "probe_test": 2})
    out = tmp_path / "cmp"
    result = compare(
        teacher,
        dataset,
        out_dir=out,
        methods=["skill"],
        seeds=2,
        include_fbank=False,
        train_split="probe_train",
        test_split="probe_test",
        compress_split="compress",
        per_layer=True,
        measure_speed=False,
        **FAST,
    )
    assert [c["splits"] for c in fake.calls] == [{"compress"}, {"compress"}]
    assert result["dataset"]["compress_split"] == "compress" and result["dataset"]["train_utterances"] == 9
    runs = {(run["group"], run["seed"]): run for run in result["runs"]}
    teacher_row, skill_row = result["rows"]
    for row in (teacher_row, skill_row):
        columns = [runs[(row["model"], seed)]["sid_per_layer"]["accuracy"] for seed in (0, 1)]
        assert row["sid_per_layer_mean"] == pytest.approx(
            [(a + b) / 2 for a, b in zip(*columns, strict=True)]
        )
    table = (out / "comparison.md").read_text()
    assert "split `compress` only" in table and "| model | r0 | r1 | r2 |" in table

    # The CLI passes both options through.
    cli = CliRunner().invoke(
        compare_command,
        [
            str(teacher),
            str(dataset),
            "--methods",
            "dphubert",
            "--seeds",
            "1",
            "--no-fbank",
            "--compress-split",
            "compress",
            "--train-split",
            "probe_train",
            "--test-split",
            "probe_test",
            "--per-layer",
            "--json",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert fake.calls[-1]["splits"] == {"compress"} and fake.calls[-1]["method"] == "dphubert"
    assert all(row["sid_per_layer_mean"] for row in json.loads(cli.stdout)["rows"])


def test_compare_cli_refuses_unknown_methods(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "data")
    result = CliRunner().invoke(
        compare_command, [str(dataset), str(dataset), "--methods", "skill,lora", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "--methods" in result.output


@pytest.mark.slow
def test_compare_end_to_end_with_the_pipeline(tmp_path: Path) -> None:
    teacher = save_teacher(tmp_path / "teacher")
    dataset = write_dataset(tmp_path / "data", per_speaker={"train": 3, "test": 1})
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        compare_command,
        [
            str(teacher),
            str(dataset),
            "--methods",
            "skill,dphubert",
            "--sparsity",
            "0.5",
            "--seeds",
            "2",
            "--stage1-steps",
            "4",
            "--stage2-steps",
            "2",
            "--clusters",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)
    assert [row["model"] for row in comparison["rows"]] == ["teacher", "fbank", "skill", "dphubert"]
    students = [run for run in comparison["runs"] if run["group"] in ("skill", "dphubert")]
    assert len(students) == 4
    for run in students:
        assert run["params"] < comparison["rows"][0]["params"]
        assert run["cka"] and all(0.0 <= v <= 1.0 + 1e-6 for v in run["cka"]["values"])
        assert run["pr"]["per"] >= 0.0 and 0.0 <= run["sid"]["accuracy"] <= 1.0
    for name in ("comparison.json", "comparison.md", "comparison.png"):
        assert (out / name).exists()


def test_pipeline_evaluate_stage_reports_headline_numbers(tmp_path: Path) -> None:
    """spec.evaluate runs the probes as the job's last stage; the headline reaches report and events."""
    from core.pipeline import run
    from core.spec import CompressionSpec
    from tests.utils.evaluation import write_dataset

    teacher = save_teacher(tmp_path / "teacher")
    dataset = write_dataset(tmp_path / "data")
    events = []
    spec = CompressionSpec(stage1_steps=2, stage2_steps=1, batch_seconds=2.0, evaluate=True, clusters=2)
    result = run(spec, teacher, dataset, tmp_path / "w", on_event=events.append)
    headline = result.report["evaluation_headline"]
    assert headline["eval_per"] >= 0.0 and 0.0 <= headline["eval_sid_accuracy"] <= 1.0
    assert result.artifacts["evaluation.json"].exists()
    assert any(e.kind == "progress" and e.stage == "evaluate" and e.metrics == headline for e in events)


def test_pipeline_refuses_evaluate_without_phone_labels(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    from core.errors import SpecError
    from core.pipeline import run
    from core.spec import CompressionSpec

    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(
        audio / "a.wav", (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000
    )
    with pytest.raises(SpecError, match="arpabet"):
        run(
            CompressionSpec(evaluate=True, stage1_steps=2),
            save_teacher(tmp_path / "t"),
            audio,
            tmp_path / "w",
        )


def test_students_are_paired_with_the_teacher_probed_with_the_same_seed() -> None:
    from core.evaluation.compare import _aggregate

    def run(group: str, seed: int, per: float, accuracy: float) -> dict[str, Any]:
        return {
            "group": group,
            "seed": seed,
            "params": 1,
            "macs_per_second": 1,
            "speed": {},
            "pr": {"per": per},
            "sid": {"accuracy": accuracy},
        }

    runs = [run("teacher", 0, 0.30, 0.80), run("teacher", 1, 0.26, 0.70), run("teacher", 2, 0.20, 0.60)]
    runs += [run("skill", 1, 0.29, 0.66), run("skill", 0, 0.31, 0.78)]  # order does not matter
    runs += [run("dphubert", 3, 0.40, 0.50)]  # a seed the teacher was not probed with: no pair
    row = _aggregate("skill", runs)
    assert row["per_vs_teacher_mean"] == pytest.approx((0.01 + 0.03) / 2)
    assert row["per_vs_teacher_std"] == pytest.approx(2**0.5 * 0.01)  # sample sd of 0.01 and 0.03
    assert row["sid_accuracy_vs_teacher_mean"] == pytest.approx((-0.02 - 0.04) / 2)
    assert row["per_mean"] == pytest.approx(0.30)  # the unpaired columns as before
    # (against the mean of the teacher's three seeds, 0.2533 PER and 0.70 SID, the figures would differ)
    assert _aggregate("dphubert", runs)["per_vs_teacher_mean"] is None
    assert _aggregate("teacher", runs)["per_vs_teacher_mean"] is None


def test_parse_budgets_reads_a_latency_budget() -> None:
    from core.evaluation.compare import parse_budgets

    assert parse_budgets("sparsity=0.75;macs_sparsity=0.75;target_speedup=4") == [
        {"sparsity": 0.75},
        {"macs_sparsity": 0.75},
        {"target_speedup": 4.0},
    ]
    assert parse_budgets("target-speedup=2.5,sparsity=0.5") == [{"target_speedup": 2.5, "sparsity": 0.5}]
    with pytest.raises(ValueError, match="target_speedup must be a number"):
        parse_budgets("target_speedup=fast")


def test_pareto_front_dominance_ties_and_direction() -> None:
    from core.evaluation.compare import pareto_front

    # (speed-up, PER): lower is better. (2, 30) is beaten by (3, 29): faster and better.
    per = [(1.0, 28.0), (2.0, 30.0), (3.0, 29.0), (4.0, 35.0)]
    assert pareto_front(per, higher_is_better=False) == [0, 2, 3]
    # the same numbers as accuracies (higher is better): the fastest is also the best
    assert pareto_front(per, higher_is_better=True) == [3]
    acc = [(1.0, 74.0), (2.0, 68.0), (3.0, 69.0), (4.0, 60.0)]
    assert pareto_front(acc, higher_is_better=True) == [0, 2, 3]
    assert pareto_front(acc, higher_is_better=False) == [3]
    # equal points dominate neither other; equal speed, worse quality is dominated
    ties = [(2.0, 30.0), (2.0, 30.0), (2.0, 31.0), (1.0, 25.0)]
    assert pareto_front(ties, higher_is_better=False) == [3, 0, 1]
    assert pareto_front(ties, higher_is_better=True) == [2]
    # one point is its own front; none gives none; a NaN is never on it
    assert pareto_front([(1.0, 5.0)], higher_is_better=True) == [0]
    assert pareto_front([], higher_is_better=True) == []
    assert pareto_front([(1.0, float("nan")), (2.0, 3.0)], higher_is_better=True) == [1]


def _synthetic_comparison() -> dict[str, Any]:
    def row(model: str, per: float | None, acc: float | None, speedup: float | None) -> dict[str, Any]:
        return {
            "model": model,
            "runs": 2,
            "params": 1e6,
            "per_mean": per,
            "per_std": None if per is None else 0.01,
            "sid_accuracy_mean": acc,
            "sid_accuracy_std": None if acc is None else 0.02,
            "macs_per_second": 1e9,
            "rtf_cpu": None,
            "rtf_cuda": None,
            "speedup_cpu_1_thread": speedup,
            "cka_mean": None,
            "sid_per_layer_mean": None,
        }

    return {
        "teacher": "t",
        "dataset": {"path": "d", "train_split": "train", "test_split": "test"}
        | {"compress_split": "train", "train_utterances": 10, "test_utterances": 4},
        "methods": ["skill", "dphubert"],
        "sparsity": None,
        "budgets": ["sparsity=0.75", "target_speedup=4"],
        "seeds": [0, 1],
        "preset": "quick",
        "rows": [
            row("teacher", 0.28, 0.74, None),
            row("fbank", 0.66, 0.73, None),
            row("skill [sparsity=0.75]", 0.29, 0.68, 2.5),
            row("dphubert [sparsity=0.75]", 0.30, 0.69, 2.4),
            row("skill [target_speedup=4]", 0.33, 0.60, 4.1),
            row("dphubert [target_speedup=4]", 0.34, 0.61, None),  # SKILLKD_SPEED_RUNS=0
        ],
        "notes": [],
        "environment": {"threads": 1},
    }


def test_write_comparison_draws_the_tradeoff(tmp_path: Path) -> None:
    from core.evaluation.compare import tradeoff, write_comparison

    comparison = _synthetic_comparison()
    picture = tradeoff(comparison)
    assert picture["left_out"] == ["fbank", "dphubert [target_speedup=4]"]
    per, sid = picture["panels"]
    assert (per["metric"], sid["metric"]) == ("per", "sid")
    assert [p["speedup"] for p in per["points"]] == [1.0, 2.5, 2.4, 4.1]  # the teacher at 1×
    assert per["points"][1]["mean"] == pytest.approx(29.0) and per["points"][1]["sd"] == pytest.approx(1.0)
    # dphubert [sparsity] is slower and worse on PER than skill [sparsity]; on SID it is better
    assert per["front"] == ["teacher", "skill [sparsity=0.75]", "skill [target_speedup=4]"]
    assert sid["front"] == [
        "teacher",
        "dphubert [sparsity=0.75]",
        "skill [sparsity=0.75]",
        "skill [target_speedup=4]",
    ]

    write_comparison(comparison, tmp_path)
    png = (tmp_path / "tradeoff.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    table = (tmp_path / "comparison.md").read_text()
    assert "`tradeoff.png`" in table
    assert "2 left out without a measured speed-up (fbank, dphubert [target_speedup=4])" in table
    assert (
        "Pareto front, PER % (lower is better): teacher (1.00×, 28.00), "
        "skill [sparsity=0.75] (2.50×, 29.00), skill [target_speedup=4] (4.10×, 33.00)" in table
    )


def test_tradeoff_without_a_metric_still_writes_a_picture(tmp_path: Path) -> None:
    from core.evaluation.compare import plot_tradeoff, tradeoff

    comparison = _synthetic_comparison()
    for row in comparison["rows"]:
        row["per_mean"] = row["sid_accuracy_mean"] = None
    assert tradeoff(comparison)["panels"] == []
    plot_tradeoff(comparison, tmp_path / "tradeoff.png")
    assert (tmp_path / "tradeoff.png").stat().st_size > 0
