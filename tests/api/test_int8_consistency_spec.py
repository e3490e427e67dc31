"""int8-aware stage 2's consistency term as a spec field (issue 25): on by default for an int8-aware job,
and a weight asked for without int8_aware is refused at job creation (API 422 naming the field; CLI exit 2),
nothing queued."""

from __future__ import annotations

from pathlib import Path

from tests.api.test_task_teachers_api import create, upload
from tests.utils.models import save_tiny_teacher
from tests.utils.servicekit import make_audio


def test_a_consistency_weight_without_int8_aware_is_422_naming_the_field(
    client, alice, dataset, enqueuer, tmp_path
):
    teacher = upload(client, alice, save_tiny_teacher(tmp_path / "t"))
    r = create(client, alice, teacher, dataset, {"int8_aware_consistency": 0.5})
    assert r.status_code == 422, r.text
    assert "int8_aware_consistency" in r.json()["error"]["message"] and "Traceback" not in r.text
    assert enqueuer.ids == []
    r = create(client, alice, teacher, dataset, {"int8_aware": True, "int8_aware_consistency": 0.5})
    assert r.status_code == 202, r.text


def test_the_cli_refuses_it_and_its_dry_run_reads_the_default(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import skillkd

    teacher, audio = save_tiny_teacher(tmp_path / "t"), make_audio(tmp_path / "a", n=2)
    out = str(tmp_path / "o")
    base = ["compress", str(teacher), str(audio), "--out", out, "--dry-run", "--device", "cpu"]
    result = CliRunner().invoke(skillkd, [*base, "--int8-aware-consistency", "0.5"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "int8_aware_consistency" in result.output and "needs int8_aware" in result.output
    result = CliRunner().invoke(skillkd, [*base, "--int8-aware"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "consistency term (rounded student to its fp32 self): weight 0.2" in result.output
    result = CliRunner().invoke(skillkd, [*base, "--int8-aware", "--int8-aware-consistency", "0"])
    assert "consistency term (rounded student to its fp32 self): off" in result.output, result.output
    assert not (tmp_path / "o").exists()
