"""`skillkd demo`: the whole product on one machine (an embedded service started for the run, the bundled demo
teacher and audio submitted, followed, downloaded, verified and loaded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.errors import fail
from cli.remote import follow
from cli.server import package_env

# The quick preset's stage 2 is 960 steps (core/spec.py); the demo stops at 160 so the first command of the
# README finishes within 5 minutes on an idle 2-core CPU (measured: README, "Quick start"). Stage 1 (the
# joint pruning) is the preset's whole 200 steps, so the demo student has the preset's size.
DEMO_STAGE2_STEPS = 160


@click.command()
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=Path("runs/demo-service"),
    show_default=True,
    help="SKILLKD_HOME of the embedded service started for the demo (database, storage, broker).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="Where the downloaded student goes.",
)
@click.option("--port", type=int, default=0, help="API port (default: a free one).")
@click.option(
    "--stage1-steps", type=int, default=None, help="Override the quick preset (e.g. for a smoke run)."
)
@click.option(
    "--stage2-steps",
    type=int,
    default=DEMO_STAGE2_STEPS,
    show_default=True,
    help="Stage 2 of the demo is shorter than the quick preset's 960 steps, so the demo finishes in minutes; "
    "960 runs the preset as `skillkd compress` does.",
)
def demo(home: Path, out: Path, port: int, stage1_steps: int | None, stage2_steps: int) -> None:
    """The whole product on one machine: start the embedded service (SQLite, no servers), submit the bundled
    demo teacher and audio, follow the job, download the student, verify its sha256 and load it."""
    import socket
    import zipfile

    import httpx

    from cli.client import ClientError, SkillkdClient
    from cli.engine import DEMO_AUDIO, DEMO_TEACHER
    from core.models import load_student

    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = package_env()
    env["SKILLKD_HOME"] = str(home)
    env.pop("SKILLKD_DATABASE_URL", None)
    env.pop("SKILLKD_BROKER_URL", None)
    log = open(home / "serve.log", "ab")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    click.echo(
        f"started the embedded service at {url} (home {home}, log {home / 'serve.log'}); "
        f"dashboard: {url}/ui/",
        err=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise click.ClickException(
                    f"the service exited (code {server.returncode}); see {home / 'serve.log'}"
                )
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise click.ClickException(f"the service did not become ready; see {home / 'serve.log'}")
            time.sleep(0.5)
        key = (home / "admin.key").read_text().strip()
        spec: dict[str, Any] = {"preset": "quick"}
        if stage1_steps is not None:
            spec["stage1_steps"] = stage1_steps
        spec["stage2_steps"] = stage2_steps
        with SkillkdClient(url, key) as client:
            try:
                teacher = client.upload_directory("teachers", DEMO_TEACHER, name="demo-teacher")
                click.echo(
                    f"uploaded teacher {teacher['id']}: {teacher['architecture']}, "
                    f"{teacher['num_params']:,} parameters",
                    err=True,
                )
                dataset = client.upload_directory("datasets", DEMO_AUDIO, name="demo-audio")
                click.echo(
                    f"uploaded audio {dataset['id']}: {dataset['files']} files, "
                    f"{60 * dataset['hours']:.1f} min",
                    err=True,
                )
                job = client.create_job(teacher["id"], dataset["id"], spec)
                click.echo(f"job {job['id']} queued", err=True)
                final = follow(client, job["id"])
                if final["status"] != "succeeded":
                    err = final.get("error") or {}
                    raise click.ClickException(
                        f"job {final['status']}: {err.get('code')}: {err.get('message')}"
                    )
                out.mkdir(parents=True, exist_ok=True)
                archive = client.download(job["id"], "model", out / "student.zip")  # sha256 checked
            except ClientError as exc:
                fail(exc)
        with zipfile.ZipFile(archive) as zf:  # the archive holds one folder, "student/"
            zf.extractall(out)
        archive.unlink()
        candidates = sorted(p.parent for p in out.rglob("config.json"))
        student = load_student(candidates[0])
        report = json.loads((candidates[0] / "report.json").read_text())
        t, n = report["teacher"]["num_params"], student.num_params()
        click.echo(
            f"\nstudent: {candidates[0]} (sha256 verified, loaded: {n:,} parameters, "
            f"{100 * n / t:.1f}% of the teacher's {t:,})\n"
            f"report:  {candidates[0] / 'report.json'}\nclusters: {report['clusters']}"
        )
    finally:
        # The service and its worker share one process group: stop both, then make sure nothing is left.
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()


__all__ = ["demo"]
