"""`skillkd inspect`: parameters and MACs per second of audio, per conv layer, per transformer layer, per
part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import skillkd as cli
from core.evaluation import count_macs
from core.export.student import save_student
from core.models import load_model
from tests.utils.models import tiny_pair


def _inspect(path: Path, *args: str) -> dict:
    result = CliRunner().invoke(cli, ["inspect", str(path), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("seconds", [10.0, 2.0])
def test_inspect_counts_macs_by_layer_and_part(tmp_path: Path, seconds: float) -> None:
    teacher, student = tiny_pair(tmp_path / "teacher")
    save_student(student, tmp_path / "student")
    for path in (tmp_path / "teacher", tmp_path / "student"):
        info = _inspect(path, "--seconds", str(seconds))
        model = load_model(path)
        counted = count_macs(model, seconds=seconds).macs_per_second
        macs = info["macs"]
        assert macs["utterance_seconds"] == seconds
        assert macs["per_second"] == pytest.approx(counted, rel=1e-3)
        assert sum(macs["by_part"].values()) == pytest.approx(macs["per_second"], rel=1e-6)
        assert sum(c["macs_per_second"] for c in info["conv"]) == pytest.approx(macs["by_part"]["conv"])
        assert sum(r["attention_macs_per_second"] for r in info["layers"]) == pytest.approx(
            macs["by_part"]["attention"]
        )
        assert [r["heads"] for r in info["layers"]] == [layer.attention.num_heads for layer in model.layers()]
    assert (
        _inspect(tmp_path / "student")["macs"]["per_second"]
        < _inspect(tmp_path / "teacher")["macs"]["per_second"]
    )


def test_inspect_text_and_bad_seconds(tmp_path: Path) -> None:
    teacher, _ = tiny_pair(tmp_path / "teacher")
    text = CliRunner().invoke(cli, ["inspect", str(tmp_path / "teacher")])
    assert text.exit_code == 0, text.output
    assert "MACs per second of audio (10 s utterance)" in text.stdout and "MACs by part: conv" in text.stdout
    assert "attn MACs/s" in text.stdout
    bad = CliRunner().invoke(cli, ["inspect", str(tmp_path / "teacher"), "--seconds", "0"])
    assert bad.exit_code == 2 and "--seconds" in bad.output
