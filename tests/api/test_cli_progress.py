"""`skillkd submit --wait` / `skillkd demo` progress: the stage-2 bar counts to its total (it stayed at `0it`
when its first poll saw the stage_started row, which has no total), and the stage-1 bar shows what a
compression user watches: sparsity against its target, expected parameters (and MACs), λ."""

from __future__ import annotations

import io
import json

from cli.progress import ProgressBars, postfix
from service.engine import FakeEngine


def job(stage: str, step: int, total: int, **metrics) -> dict:
    return {
        "status": "running",
        "stage": stage,
        "progress": {"stage": stage, "step": step, "total_steps": total, "metrics": metrics},
    }


def test_stage_two_bar_counts_to_its_total_after_a_first_poll_without_one():
    out = io.StringIO()
    view = ProgressBars(file=out)
    view.job(job("final_distill", 0, 0))  # stage_started: no total yet
    view.job(job("final_distill", 40, 80, loss=0.5))
    assert view.bar.total == 80 and view.bar.n == 40
    view.close()
    assert "40/80" in out.getvalue()


def test_a_stage_without_steps_shows_its_elapsed_time_not_zero_steps():
    out = io.StringIO()
    view = ProgressBars(file=out)
    view.job(job("export", 0, 0))
    view.close()
    assert "export: 00:00" in out.getvalue() and "0step" not in out.getvalue()


def test_stage_one_postfix_shows_sparsity_params_macs_and_lambda():
    shown = postfix(
        "distill_prune",
        {
            "distill": 0.25,
            "sparsity": 0.61,
            "target_sparsity": 0.7,
            "expected_params": 4_321_000,
            "expected_macs": 2.5e9,
            "macs_sparsity": 0.4,
            "lambda1": 0.125,
        },
    )
    assert shown == {
        "loss": "0.25",
        "sparsity": "0.610→0.700",
        "params": "4.32M",
        "MACs/s": "2.5G",
        "MACs sparsity": "0.400",
        "λ": "0.125",
    }
    assert postfix("final_distill", {"distill": 0.5, "sparsity": 0.7}) == {"loss": "0.5"}


# Issue 22, item 10 ------------------------------------------------------------------------------------------


def test_polled_bars_end_at_their_totals_when_their_stage_finished():
    """`submit --wait` polls; progress rows are throttled, so the last poll of a stage saw 2/4 or 9/10: the
    bar of a stage that finished (a later stage seen, or the job succeeded) ends at its total."""
    out = io.StringIO()
    view = ProgressBars(file=out)
    view.job(job("distill_prune", 2, 4, sparsity=0.39))
    view.job(job("final_distill", 9, 10, loss=0.5))
    view.job({**job("final_distill", 9, 10, loss=0.5), "status": "succeeded"})
    view.close()
    text = out.getvalue()
    assert "4/4" in text and "10/10" in text, text


def test_a_failed_stage_keeps_the_step_it_reached():
    out = io.StringIO()
    view = ProgressBars(file=out)
    view.job(job("distill_prune", 2, 4))
    view.job({**job("distill_prune", 2, 4), "status": "failed"})
    view.close()
    assert "2/4" in out.getvalue() and "4/4" not in out.getvalue()


def test_engine_events_end_a_bar_at_its_total_on_stage_finished():
    from core.events import Event

    out = io.StringIO()
    view = ProgressBars(file=out)
    view(Event("stage_started", "final_distill"))
    view(Event("progress", "final_distill", step=9, total=10, metrics={"loss": 0.5}))
    view(Event("stage_finished", "final_distill"))
    assert "10/10" in out.getvalue()


REPORT = {  # the fields of a real report.json (runs/q21, hubert-mini, quick preset) that the summary reads
    "target_sparsity": 0.75,
    "achieved_sparsity": 0.7494,
    "student": {"num_params": 2786471, "macs_per_second": 7.25e8},
    "speed": {
        "teacher": {"params": 11120128, "macs_per_second": 1.27e9},
        "student": {"params": 2786471, "macs_per_second": 7.25e8},
        "cpu_1_thread": {"teacher_rtf": 0.1, "student_rtf": 0.059, "speedup": 1.69},
        "cpu_all_threads": {"teacher_rtf": 0.06, "student_rtf": 0.04, "speedup": 1.5},
    },
}


class _ReportingEngine(FakeEngine):
    """The fake engine, with a report like the real engine's, and eval headline when asked."""

    def __init__(self, report: dict) -> None:
        super().__init__(steps=3)
        self.report = report

    def run(self, *args, **kwargs):
        result = super().run(*args, **kwargs)
        result.report = self.report
        return result


def _finished_job(cli_as_alice, teacher, dataset, enqueuer, drain, report) -> str:
    r = cli_as_alice.post(
        "/v1/jobs", json={"teacher_id": teacher["id"], "dataset_id": dataset["id"], "spec": {}}
    )
    assert r.status_code == 202, r.text
    assert drain(_ReportingEngine(report)) == ["succeeded"]
    return r.json()["id"]


def test_status_is_a_readable_summary_and_json_on_request(cli_as_alice, teacher, dataset, enqueuer, drain):
    """`skillkd status JOB`: size before → after, MACs, the measured speed-ups, quality (or that it was not
    evaluated), and the exact download command; not the merged metrics, where a stage's `sparsity` (0.75 at
    the fake stage 2's last step here; 0.39 from a real stage 1) sits beside the final size. --json: the
    JSON."""
    from click.testing import CliRunner

    from cli import skillkd

    job_id = _finished_job(cli_as_alice, teacher, dataset, enqueuer, drain, REPORT)
    result = CliRunner().invoke(skillkd, ["status", job_id])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"job {job_id}: succeeded" in text
    assert "size:      11.1M → 2.79M parameters (25.1% of the teacher; sparsity 0.749, target 0.750)" in text
    assert "MACs:      1.27G → 725M per second of audio (1.75× fewer)" in text
    assert "speed-up:  1.69× on 1 CPU thread, 1.50× on all CPU threads" in text
    assert "quality:   not evaluated" in text
    assert f"student:   on the service: skillkd download {job_id} -o student" in text
    assert "artifacts: cka.png, clusters.json, model, report.json, train_log" in text
    assert "{" not in text and "sparsity=" not in text

    as_json = json.loads(CliRunner().invoke(skillkd, ["status", job_id, "--json"]).stdout)
    assert as_json["id"] == job_id and as_json["metrics"]["report"] == REPORT


def test_submit_wait_ends_with_the_summary(cli_as_alice, teacher, dataset, enqueuer, drain, tmp_path):
    """`skillkd submit --wait` ends with the same summary (here with quality from an evaluation)."""
    import threading

    from click.testing import CliRunner

    from cli import skillkd
    from tests.utils.servicekit import make_audio, make_teacher

    report = {**REPORT, "evaluation_headline": {"eval_per": 0.3119, "eval_sid_accuracy": 0.6691}}
    runner = threading.Thread(target=lambda: _drain_when_enqueued(enqueuer, drain, report), daemon=True)
    runner.start()
    t, a = make_teacher(tmp_path / "t"), make_audio(tmp_path / "a")
    result = CliRunner().invoke(skillkd, ["submit", str(t), str(a), "--wait"])
    runner.join(timeout=30)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "quality:   phoneme error rate 31.2%, speaker ID accuracy 66.9%" in result.stderr
    assert "speed-up:  1.69× on 1 CPU thread" in result.stderr
    assert "skillkd download job_" in result.stderr


def _drain_when_enqueued(enqueuer, drain, report) -> None:
    import time

    deadline = time.monotonic() + 20
    while not enqueuer.ids and time.monotonic() < deadline:
        time.sleep(0.05)
    drain(_ReportingEngine(report))


def test_log_lines_fit_100_columns_when_not_a_terminal(cli_as_alice, teacher, dataset, enqueuer, drain):
    """`skillkd logs` (and --follow) wrap each event to the terminal's width, 100 columns when the output is
    not a terminal (it printed 220-column lines, and the whole report on the succeeded event)."""
    from click.testing import CliRunner

    from cli import skillkd
    from cli.remote import _event_line

    job_id = _finished_job(cli_as_alice, teacher, dataset, enqueuer, drain, REPORT)
    result = CliRunner().invoke(skillkd, ["logs", job_id])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 100, lines
    long = {
        "created_at": "2026-12-05T09:04:14.659123+00:00",
        "kind": "progress",
        "stage": "distill_prune",
        "step": 120,
        "total": 200,
        "metrics": {f"metric_{i}": i / 7 for i in range(20)},
        "message": "",
    }
    wrapped = _event_line(long, 100).splitlines()
    assert len(wrapped) > 1 and all(len(line) <= 100 for line in wrapped)
    assert wrapped[0].startswith("2026-12-05 09:04:14  progress") and "metric_19=2.714" in wrapped[-1]
