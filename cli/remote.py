"""Client commands (any machine that reaches the service): `submit`, `status`, `logs`, `cancel`, `pause`,
`resume`, `download`, `teachers`, `datasets`.

The service URL and API key come from `service.settings.ClientSettings` (SKILLKD_URL, SKILLKD_API_KEY) or
`--url` / `--api-key`; on the machine running `skillkd serve`, its admin key ($SKILLKD_HOME/admin.key) is used
when no key is given. The spec options are generated from `CompressionSpec` (cli/spec_options.py), the same
as `skillkd compress`. The HTTP client (cli/client.py, on httpx) is imported inside the commands, so the
engine commands do not load it.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli.errors import fail
from cli.progress import ProgressBars, compact_count, postfix
from cli.spec_options import build_spec, spec_options


def connect(url: str | None, api_key: str | None) -> Any:
    """A client of the service at `url` (or SKILLKD_URL) with `api_key` (or SKILLKD_API_KEY, or the admin key
    of a `skillkd serve` on this machine)."""
    from cli.client import SkillkdClient
    from service.settings import ClientSettings

    cs = ClientSettings()
    key = api_key or cs.api_key
    if not key:
        key_file = cs.home.expanduser() / "admin.key"
        if key_file.is_file():
            key = key_file.read_text().strip()
    if not key:
        raise click.UsageError(
            "no API key: set SKILLKD_API_KEY or pass --api-key (create one with `skillkd keys create`)"
        )
    return SkillkdClient(url or cs.url, key)


def client_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--api-key", default=None, help="API key [default: SKILLKD_API_KEY]")(f)
    f = click.option(
        "--url", default=None, help="service URL [default: SKILLKD_URL or http://127.0.0.1:8000]"
    )(f)
    return f


def _base_spec(spec_json: str | None) -> dict[str, Any]:
    if not spec_json:
        return {}
    text = Path(spec_json[1:]).read_text() if spec_json.startswith("@") else spec_json
    try:
        base = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--spec") from None
    if not isinstance(base, dict):
        raise click.BadParameter("expected a JSON object", param_hint="--spec")
    return base


@click.command()
@click.argument("teacher_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("audio_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option(
    "--spec", "spec_json", default=None, help="spec as JSON, or @file.json (options below override it)"
)
@click.option("--idempotency-key", default=None)
@click.option("--wait", is_flag=True, help="follow progress until the job ends; exit 1 unless it succeeded")
@click.option(
    "--dry-run",
    is_flag=True,
    help="upload, then print the service's estimate (JSON) instead of creating a job",
)
@client_options
@spec_options
def submit(
    teacher_dir: Path,
    audio_dir: Path,
    calibration: Path | None,
    spec_json: str | None,
    idempotency_key: str | None,
    wait: bool,
    dry_run: bool,
    url: str | None,
    api_key: str | None,
    **spec_kw: Any,
) -> None:
    """Upload TEACHER_DIR and AUDIO_DIR, create a job, print its id (and follow it with --wait)."""
    from cli.client import ClientError

    spec = build_spec(spec_kw, _base_spec(spec_json)).model_dump(mode="json", exclude_defaults=True)
    with connect(url, api_key) as c:
        try:
            teacher = c.upload_directory("teachers", teacher_dir)
            click.echo(
                f"teacher {teacher['id']}: {teacher['architecture']} {teacher['layout']}, "
                f"{teacher['num_params']:,} parameters{_reused(teacher)}",
                err=True,
            )
            dataset = c.upload_directory("datasets", audio_dir)
            click.echo(
                f"dataset {dataset['id']}: {dataset['files']} files, {dataset['hours']:.3f} h, "
                f"skipped {dataset['skipped']}{_reused(dataset)}",
                err=True,
            )
            calibration_id = c.upload_directory("datasets", calibration)["id"] if calibration else None
            job = c.create_job(
                teacher["id"],
                dataset["id"],
                spec,
                calibration_dataset_id=calibration_id,
                idempotency_key=idempotency_key,
                dry_run=dry_run,
            )
        except ClientError as exc:
            fail(exc)
        if dry_run:
            click.echo(json.dumps(job, indent=2))
            return
        click.echo(job["id"])
        if wait:
            final = follow(c, job["id"])
            try:
                artifacts = c.artifacts(job["id"]) if final["status"] == "succeeded" else []
            except ClientError:
                artifacts = []
            for line in summary_lines(final, artifacts):
                click.echo(line, err=True)
            if final["status"] != "succeeded":
                err = final.get("error") or {}
                raise click.ClickException(f"job {final['status']}: {err.get('code')}: {err.get('message')}")


def _minutes(start: str | None, end: str | None) -> str:
    from datetime import datetime

    if not start or not end:
        return ""
    return _minutes_of((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())


def result_lines(report: dict[str, Any]) -> list[str]:
    """A finished job's result from its report: size, compute, measured speed-up, quality."""
    lines: list[str] = []
    speed = report.get("speed") or {}
    teacher, student = speed.get("teacher") or {}, speed.get("student") or {}
    params = (teacher.get("params"), student.get("params") or (report.get("student") or {}).get("num_params"))
    if params[0] and params[1]:
        size = (
            f"size:      {compact_count(params[0])} → {compact_count(params[1])} parameters "
            f"({params[1] / params[0]:.1%} of the teacher"
        )
        if report.get("target_sparsity") is not None:
            size += f"; sparsity {1 - params[1] / params[0]:.3f}, target {report['target_sparsity']:.3f}"
        lines.append(size + ")")
    elif report.get("achieved_sparsity") is not None or report.get("sparsity") is not None:
        lines.append(f"size:      sparsity {report.get('achieved_sparsity', report.get('sparsity')):.3f}")
    macs = (teacher.get("macs_per_second"), student.get("macs_per_second"))
    if macs[0] and macs[1]:
        lines.append(
            f"MACs:      {compact_count(macs[0])} → {compact_count(macs[1])} per second of audio "
            f"({macs[0] / macs[1]:.2f}× fewer)"
        )
    measured = [
        f"{speed[key]['speedup']:.2f}× on {label}"
        for key, label in (
            ("cpu_1_thread", "1 CPU thread"),
            ("cpu_all_threads", "all CPU threads"),
            ("cuda", "the GPU"),
        )
        if isinstance(speed.get(key), dict) and speed[key].get("speedup") is not None
    ]
    if speed:
        lines.append(
            "speed-up:  " + (", ".join(measured) if measured else "not measured (SKILLKD_SPEED_RUNS=0)")
        )
    quality = report.get("evaluation_headline") or {}
    shown = []
    if "eval_per" in quality:
        shown.append(f"phoneme error rate {100 * quality['eval_per']:.1f}%")
    if "eval_sid_accuracy" in quality:
        shown.append(f"speaker ID accuracy {100 * quality['eval_sid_accuracy']:.1f}%")
    if shown:
        lines.append("quality:   " + ", ".join(shown) + " (probes on frozen features; evaluation.json)")
    else:
        lines.append("quality:   not evaluated (submit with --evaluate to probe the student)")
    return lines


def summary_lines(job: dict[str, Any], artifacts: list[dict[str, Any]]) -> list[str]:
    """A job as a person reads it: status and timing; while it runs, the stage, step and what its bar shows;
    when it failed, the error; when it succeeded, the result (`result_lines`) and how to get the student.
    Only the latest stage's metrics are shown while it runs: `metrics` of the JSON merges every stage's (a
    stage-1 sparsity stays in it after the student was resized)."""
    status_ = job["status"]
    took = _minutes(job.get("started_at"), job.get("finished_at"))
    lines = [f"job {job['id']}: {status_}" + (f" in {took}" if took else "")]
    if status_ == "succeeded":
        report = (job.get("metrics") or {}).get("report") or {}
        lines += result_lines(report)
        names = ", ".join(a["name"] for a in artifacts)
        lines.append(f"student:   on the service: skillkd download {job['id']} -o student")
        if names:
            lines.append(f"artifacts: {names} (all by default; name some after the job id for those alone)")
        return lines
    progress = job.get("progress") or {}
    if job.get("error"):
        lines.append(f"error:     [{job['error'].get('code')}] {job['error'].get('message')}")
    stage = progress.get("stage") or job.get("stage")
    if stage:
        where = f"stage:     {stage}"
        if progress.get("total_steps"):
            where += f" step {progress.get('step', 0)}/{progress['total_steps']}"
        if progress.get("eta_s") and status_ == "running":
            where += f", about {_minutes_of(float(progress['eta_s']))} left in this stage"
        lines.append(where)
        shown = postfix(stage, progress.get("metrics") or {})
        if shown:
            lines.append("latest:    " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    lines.append(
        f"created:   {job['created_at']}" + (f", attempts {job['attempts']}" if job.get("attempts") else "")
    )
    return lines


def _minutes_of(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _reused(item: dict[str, Any]) -> str:
    return " (already uploaded: not sent again)" if item.get("reused") else ""


def follow(c: Any, job_id: str, poll_s: float = 1.0) -> dict[str, Any]:
    from service.models import TERMINAL_STATUSES

    bars = ProgressBars()
    while True:
        job = c.get_job(job_id)
        bars.job(job)
        if job["status"] in TERMINAL_STATUSES or job["status"] == "paused":
            bars.close(finished=job["status"] == "succeeded")
            return job
        time.sleep(poll_s)


@click.command()
@click.argument("job_id", required=False)
@click.option("--status", "status_filter", default=None, help="filter the list by status")
@click.option("--json", "as_json", is_flag=True, help="one job as the service returns it (JSON)")
@client_options
def status(
    job_id: str | None, status_filter: str | None, as_json: bool, url: str | None, api_key: str | None
) -> None:
    """Show one job (a summary: status, progress or result, how to download it; --json: the JSON), or list
    jobs."""
    from cli.client import ClientError

    with connect(url, api_key) as c:
        try:
            if job_id:
                job = c.get_job(job_id)
                if as_json:
                    click.echo(json.dumps(job, indent=2))
                    return
                artifacts = c.artifacts(job_id) if job["status"] == "succeeded" else []
                for line in summary_lines(job, artifacts):
                    click.echo(line)
                return
            for job in c.list_jobs(status=status_filter)["items"]:
                p = job.get("progress") or {}
                click.echo(
                    f"{job['id']}  {job['status']:<10}  {job.get('stage') or '-':<14} "
                    f"{p.get('step', 0)}/{p.get('total_steps', 0)}  {job['created_at']}"
                )
        except ClientError as exc:
            fail(exc)


def output_width() -> int:
    """Columns for log lines: the terminal's when stdout is one, else 100."""
    if sys.stdout.isatty():
        return max(40, shutil.get_terminal_size((100, 24)).columns)
    return 100


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        text = json.dumps(v, separators=(",", ":"))
        return text if len(text) <= 40 else text[:39] + "…"
    return str(v)


def _event_line(e: dict[str, Any], width: int = 100) -> str:
    """One event: time, kind, stage, step, then its metrics and message wrapped under it, every line at most
    `width` columns (a `report` metric, the whole report.json, is left out: `skillkd status` shows it)."""
    metrics = " ".join(f"{k}={_value(v)}" for k, v in (e.get("metrics") or {}).items() if k != "report")
    step = f"{e['step']}/{e['total']}" if e.get("total") else ""
    when = str(e["created_at"]).replace("T", " ")[:19]
    head = f"{when}  {e['kind']:<14} {e['stage']:<14} {step:>9}"
    rest = f"{metrics} {e.get('message') or ''}".strip()
    if not rest:
        return head.rstrip()[:width]
    lines = textwrap.wrap(
        f"{head}  {rest}",
        width=width,
        subsequent_indent=" " * 4,
        break_long_words=True,
        break_on_hyphens=False,
    )
    return "\n".join(lines)


@click.command()
@click.argument("job_id")
@click.option("--follow", "-f", "follow_", is_flag=True, help="stream new events until the job ends")
@client_options
def logs(job_id: str, follow_: bool, url: str | None, api_key: str | None) -> None:
    """Print a job's events."""
    from cli.client import ClientError

    with connect(url, api_key) as c:
        try:
            width = output_width()
            if follow_:
                for kind, data in c.stream_events(job_id):
                    click.echo(f"job {data.get('status')}" if kind == "end" else _event_line(data, width))
                return
            after = 0
            while True:
                page = c.events(job_id, after=after, limit=500)
                for e in page["items"]:
                    click.echo(_event_line(e, width))
                if not page["next_cursor"]:
                    break
                after = page["next_cursor"]
        except ClientError as exc:
            fail(exc)


def _job_action(name: str, doc: str) -> click.Command:
    @click.command(name, help=doc)
    @click.argument("job_id")
    @client_options
    def command(job_id: str, url: str | None, api_key: str | None) -> None:
        from cli.client import ClientError

        with connect(url, api_key) as c:
            try:
                click.echo(c.job_action(job_id, name)["status"])
            except ClientError as exc:
                fail(exc)

    return command


cancel = _job_action("cancel", "Cancel a job (queued or paused: at once; running: at the next stop check).")
pause = _job_action(
    "pause", "Pause a job (queued: at once; running: at its next checkpoint, freeing its worker)."
)
resume = _job_action("resume", "Resume a paused job: queued again, it continues from its last checkpoint.")


@click.command()
@click.argument("job_id")
@click.argument("names", nargs=-1)
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@client_options
def download(job_id: str, names: tuple[str, ...], output: Path, url: str | None, api_key: str | None) -> None:
    """Download artifacts (all by default); each file's sha256 is checked."""
    from cli.client import ClientError

    output.mkdir(parents=True, exist_ok=True)
    with connect(url, api_key) as c:
        try:
            items = c.artifacts(job_id)
            wanted = [a for a in items if not names or a["name"] in names]
            if names and len(wanted) != len(set(names)):
                raise click.ClickException(f"unknown artifact; available: {[a['name'] for a in items]}")
            for a in wanted:
                filename = a["url"].rsplit("/", 1)[-1]
                suffix = {"application/zip": ".zip", "application/x-ndjson": ".jsonl"}.get(
                    a["media_type"], ""
                )
                if suffix and not filename.endswith(suffix):
                    filename += suffix
                path = c.download(job_id, a["name"], output / filename)
                click.echo(f"{path}  sha256 {a['sha256']}")
        except ClientError as exc:
            fail(exc)


def _resource_group(kind: str) -> click.Group:
    singular = kind[:-1]

    @click.group(kind, help=f"List or delete your uploaded {kind}.")
    def group() -> None:
        pass

    @group.command("list")
    @client_options
    def list_cmd(url: str | None, api_key: str | None) -> None:
        from cli.client import ClientError

        with connect(url, api_key) as c:
            try:
                for item in c.list_resources(kind)["items"]:
                    click.echo(f"{item['id']}  {item.get('name') or '-':<24} {item['created_at']}")
            except ClientError as exc:
                fail(exc)

    @group.command(
        "delete",
        help=f"Delete one of your {kind} and its files on the server; refused while an "
        "unfinished job (queued, running, paused, ...) uses it. Finished jobs keep its id.",
    )
    @click.argument("resource_id")
    @client_options
    def delete_cmd(resource_id: str, url: str | None, api_key: str | None) -> None:
        from cli.client import ClientError

        with connect(url, api_key) as c:
            try:
                c.delete_resource(kind, resource_id)
            except ClientError as exc:
                fail(exc)
        click.echo(f"deleted {singular} {resource_id}")

    return group


teachers = _resource_group("teachers")
datasets = _resource_group("datasets")

COMMANDS = (submit, status, logs, cancel, pause, resume, download, teachers, datasets)

__all__ = ["COMMANDS", "connect", "follow", "summary_lines", "result_lines"]
