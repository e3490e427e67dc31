"""`skillkd`: the engine's commands (core.cli) plus the service commands defined here.

Service commands import fastapi / sqlalchemy / celery / httpx inside their bodies, so `skillkd compress`
stays light. Client commands read SKILLKD_URL and SKILLKD_API_KEY (or --url / --api-key); on the machine
running `skillkd serve`, the admin key written to $SKILLKD_HOME/admin.key is used when no key is given.
"""

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

TERMINAL = ("succeeded", "failed", "cancelled")


def _settings():
    from api.settings import get_settings

    return get_settings()


def _client(url: str | None, api_key: str | None):
    from api.client import SkillkdClient

    url = url or os.environ.get("SKILLKD_URL") or "http://127.0.0.1:8000"
    key = api_key or os.environ.get("SKILLKD_API_KEY")
    if not key:
        key_file = _settings().home / "admin.key"
        if key_file.is_file():
            key = key_file.read_text().strip()
    if not key:
        raise click.UsageError("no API key: set SKILLKD_API_KEY or pass --api-key (create one with `skillkd keys create`)")
    return SkillkdClient(url, key)


def _client_options(f):
    f = click.option("--api-key", envvar="SKILLKD_API_KEY", default=None, help="API key (env SKILLKD_API_KEY)")(f)
    f = click.option("--url", envvar="SKILLKD_URL", default=None, help="service URL (env SKILLKD_URL)")(f)
    return f


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


def _package_env() -> dict[str, str]:
    """The environment for a child process, with this checkout importable."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# -- server side ---------------------------------------------------------------------------------------
@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--worker/--no-worker", default=True, help="also start one worker process (embedded mode)")
def serve(host: str, port: int, worker: bool) -> None:
    """Run the API (and one worker): migrations applied, an admin key created on first start."""
    import uvicorn

    from api.app import create_app
    from api.db import make_engine, make_sessionmaker, upgrade
    from core.processes import die_with_parent

    settings = _settings()
    settings.ensure_dirs()
    upgrade(settings.database_url)
    _ensure_admin_key(settings, make_sessionmaker(make_engine(settings.database_url)))
    proc = None
    if worker:
        # Its own process group (so its pool children can be stopped with it), and a parent-death signal so a
        # SIGKILLed `serve` does not leave an orphaned worker consuming jobs.
        proc = subprocess.Popen([sys.executable, "-m", "api.cli", "worker"], env=_package_env(),
                                start_new_session=True, preexec_fn=die_with_parent)
    # uvicorn re-raises the SIGTERM it handled once it has shut down; with the default handler that would end
    # this process before the `finally` below stops the worker. A no-op handler lets the cleanup run.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown; a running job resumes from its checkpoint later
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _ensure_admin_key(settings, factory) -> None:
    from sqlalchemy import func, select

    from api.keys import create_key
    from api.models import ApiKey

    key_file = settings.home / "admin.key"
    with factory() as session:
        if session.scalar(select(func.count()).select_from(ApiKey)):
            return
        new = create_key(session, owner_name="admin", admin=True, key_name="created by skillkd serve")
        session.commit()
    key_file.touch(mode=0o600)
    key_file.write_text(new.key + "\n")
    click.echo(f"created admin API key {new.prefix}... (saved to {key_file})", err=True)


@click.command("worker")
@click.option("--concurrency", default=1, show_default=True, type=int, help="jobs at once (one per GPU)")
@click.option("--loglevel", default="INFO", show_default=True)
def worker_cmd(concurrency: int, loglevel: str) -> None:
    """Run a Celery worker on queue `gpu` (SKILLKD_BROKER_URL, SKILLKD_DATABASE_URL)."""
    from worker.celery_app import QUEUE, app

    app.worker_main(["worker", "-Q", QUEUE, "-c", str(concurrency), "--loglevel", loglevel,
                     "--without-gossip", "--without-mingle", "-n", f"skillkd-{os.getpid()}@%h"])


@click.command()
def migrate() -> None:
    """Apply database migrations (SKILLKD_DATABASE_URL)."""
    from api.db import upgrade

    settings = _settings()
    settings.ensure_dirs()
    upgrade(settings.database_url)
    click.echo("database is at head")


@click.group()
def keys() -> None:
    """Manage API keys (admin; direct database access)."""


def _session():
    from api.db import make_engine, make_sessionmaker, upgrade

    settings = _settings()
    settings.ensure_dirs()
    upgrade(settings.database_url)
    return make_sessionmaker(make_engine(settings.database_url))()


@keys.command("create")
@click.option("--owner", required=True, help="owner name (created if new)")
@click.option("--admin", is_flag=True, help="the owner may register server-side datasets")
@click.option("--name", default="", help="a label for the key")
def keys_create(owner: str, admin: bool, name: str) -> None:
    """Create a key; it is printed once and stored only hashed."""
    from api.keys import create_key

    with _session() as session:
        new = create_key(session, owner_name=owner, admin=admin, key_name=name)
        session.commit()
    click.echo(new.key)


@keys.command("list")
def keys_list() -> None:
    from api.keys import list_keys

    with _session() as session:
        for key, owner in list_keys(session):
            state = "revoked" if key.revoked_at else "active"
            click.echo(f"{key.id}  {key.prefix}...  {owner.name}{' (admin)' if owner.is_admin else ''}  {state}  {key.name}")


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke by key id or prefix."""
    from api.keys import revoke_key

    with _session() as session:
        n = revoke_key(session, key_id_or_prefix=key)
        session.commit()
    if not n:
        raise click.ClickException(f"no active key {key}")
    click.echo(f"revoked {n} key(s)")


# -- client side -----------------------------------------------------------------------------------------
def _spec(spec_json: str | None, options: dict[str, Any]) -> dict[str, Any]:
    from pydantic import ValidationError

    from core.spec import CompressionSpec

    spec: dict[str, Any] = {}
    if spec_json:
        text = Path(spec_json[1:]).read_text() if spec_json.startswith("@") else spec_json
        spec = json.loads(text)
    for key, value in options.items():
        if value is not None:
            spec[key] = value
    if isinstance(spec.get("clusters"), str) and spec["clusters"] != "auto":
        spec["clusters"] = json.loads(spec["clusters"])
    try:
        return CompressionSpec.model_validate(spec).model_dump(mode="json", exclude_defaults=True)
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="spec") from exc


@click.command()
@click.argument("teacher_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("audio_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--spec", "spec_json", default=None, help="spec as JSON, or @file.json")
@click.option("--method", type=click.Choice(["skill", "dphubert"]), default=None)
@click.option("--preset", type=click.Choice(["quick", "paper"]), default=None)
@click.option("--sparsity", type=float, default=None)
@click.option("--target-params", default=None, help="e.g. 24M")
@click.option("--clusters", default=None, help="k, auto, or JSON layer groups")
@click.option("--stage1-steps", type=int, default=None)
@click.option("--stage2-steps", type=int, default=None)
@click.option("--batch-seconds", type=float, default=None)
@click.option("--device", default=None)
@click.option("--seed", type=int, default=None)
@click.option("--idempotency-key", default=None)
@click.option("--wait", is_flag=True, help="follow progress until the job ends; exit 1 unless it succeeded")
@_client_options
def submit(teacher_dir: Path, audio_dir: Path, calibration: Path | None, spec_json: str | None, method, preset,
           sparsity, target_params, clusters, stage1_steps, stage2_steps, batch_seconds, device, seed,
           idempotency_key, wait: bool, url, api_key) -> None:
    """Upload TEACHER_DIR and AUDIO_DIR, create a job, print its id (and follow it with --wait)."""
    from api.client import ClientError
    from core.spec import parse_param_count

    clusters_value: Any = clusters
    if clusters is not None and clusters.isdigit():
        clusters_value = int(clusters)
    spec = _spec(spec_json, {
        "method": method, "preset": preset, "sparsity": sparsity,
        "target_params": parse_param_count(target_params) if target_params else None,
        "clusters": clusters_value, "stage1_steps": stage1_steps, "stage2_steps": stage2_steps,
        "batch_seconds": batch_seconds, "device": device, "seed": seed})
    with _client(url, api_key) as client:
        try:
            teacher = client.upload_directory("teachers", teacher_dir)
            click.echo(f"teacher {teacher['id']}: {teacher['architecture']} {teacher['layout']}, "
                       f"{teacher['num_params']:,} parameters", err=True)
            dataset = client.upload_directory("datasets", audio_dir)
            click.echo(f"dataset {dataset['id']}: {dataset['files']} files, {dataset['hours']:.3f} h, "
                       f"skipped {dataset['skipped']}", err=True)
            calibration_id = client.upload_directory("datasets", calibration)["id"] if calibration else None
            job = client.create_job(teacher["id"], dataset["id"], spec, calibration_dataset_id=calibration_id,
                                    idempotency_key=idempotency_key)
        except ClientError as exc:
            _fail(exc)
        click.echo(job["id"])
        if wait:
            final = _follow(client, job["id"])
            if final["status"] != "succeeded":
                err = final.get("error") or {}
                raise click.ClickException(f"job {final['status']}: {err.get('code')}: {err.get('message')}")


def _follow(client, job_id: str, poll_s: float = 1.0) -> dict[str, Any]:
    from tqdm import tqdm

    bar = None
    stage = None
    while True:
        job = client.get_job(job_id)
        progress = job.get("progress") or {}
        if progress.get("stage") != stage:
            if bar is not None:
                bar.close()
            stage = progress.get("stage")
            bar = tqdm(total=progress.get("total_steps") or None, desc=stage or job["status"], file=sys.stderr,
                       leave=True)
        if bar is not None:
            bar.total = progress.get("total_steps") or bar.total
            bar.n = progress.get("step") or 0
            metrics = progress.get("metrics") or {}
            bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in list(metrics.items())[:4]},
                            refresh=True)
        if job["status"] in TERMINAL:
            if bar is not None:
                bar.close()
            click.echo(f"{job_id}: {job['status']}", err=True)
            return job
        time.sleep(poll_s)


@click.command()
@click.argument("job_id", required=False)
@click.option("--status", "status_filter", default=None, help="filter the list by status")
@_client_options
def status(job_id: str | None, status_filter: str | None, url, api_key) -> None:
    """Show one job (JSON), or list jobs."""
    from api.client import ClientError

    with _client(url, api_key) as client:
        try:
            if job_id:
                click.echo(json.dumps(client.get_job(job_id), indent=2))
                return
            for job in client.list_jobs(status=status_filter)["items"]:
                p = job.get("progress") or {}
                click.echo(f"{job['id']}  {job['status']:<10}  {job.get('stage') or '-':<14} "
                           f"{p.get('step', 0)}/{p.get('total_steps', 0)}  {job['created_at']}")
        except ClientError as exc:
            _fail(exc)


def _event_line(e: dict[str, Any]) -> str:
    metrics = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (e.get("metrics") or {}).items())
    step = f"{e['step']}/{e['total']}" if e.get("total") else ""
    return f"{e['created_at']}  {e['kind']:<14} {e['stage']:<14} {step:>9}  {metrics} {e.get('message', '')}".rstrip()


@click.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="stream new events until the job ends")
@_client_options
def logs(job_id: str, follow: bool, url, api_key) -> None:
    """Print a job's events."""
    from api.client import ClientError

    with _client(url, api_key) as client:
        try:
            if follow:
                for kind, data in client.stream_events(job_id):
                    click.echo(f"job {data.get('status')}" if kind == "end" else _event_line(data))
                return
            after = 0
            while True:
                page = client.events(job_id, after=after, limit=500)
                for e in page["items"]:
                    click.echo(_event_line(e))
                if not page["next_cursor"]:
                    break
                after = page["next_cursor"]
        except ClientError as exc:
            _fail(exc)


@click.command()
@click.argument("job_id")
@_client_options
def cancel(job_id: str, url, api_key) -> None:
    """Cancel a job (queued: at once; running: at the next stop check)."""
    from api.client import ClientError

    with _client(url, api_key) as client:
        try:
            click.echo(client.cancel(job_id)["status"])
        except ClientError as exc:
            _fail(exc)


@click.command()
@click.argument("job_id")
@click.argument("names", nargs=-1)
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@_client_options
def download(job_id: str, names: tuple[str, ...], output: Path, url, api_key) -> None:
    """Download artifacts (all by default); each file's sha256 is checked."""
    from api.client import ClientError

    output.mkdir(parents=True, exist_ok=True)
    with _client(url, api_key) as client:
        try:
            items = client.artifacts(job_id)
            wanted = [a for a in items if not names or a["name"] in names]
            if names and len(wanted) != len(set(names)):
                raise click.ClickException(f"unknown artifact; available: {[a['name'] for a in items]}")
            for a in wanted:
                filename = a["url"].rsplit("/", 1)[-1]
                suffix = {"application/zip": ".zip", "application/x-ndjson": ".jsonl"}.get(a["media_type"], "")
                if suffix and not filename.endswith(suffix):
                    filename += suffix
                path = client.download(job_id, a["name"], output / filename)
                click.echo(f"{path}  sha256 {a['sha256']}")
        except ClientError as exc:
            _fail(exc)


SERVICE_COMMANDS = (serve, worker_cmd, migrate, keys, submit, status, logs, cancel, download)


@click.command()
@click.option("--home", type=click.Path(path_type=Path), default=Path("runs/demo-service"), show_default=True,
              help="SKILLKD_HOME of the embedded service started for the demo (database, storage, broker).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Where the downloaded student goes.")
@click.option("--port", type=int, default=0, help="API port (default: a free one).")
@click.option("--stage1-steps", type=int, default=None, help="Override the quick preset (e.g. for a smoke run).")
@click.option("--stage2-steps", type=int, default=None)
def demo(home: Path, out: Path, port: int, stage1_steps: int | None, stage2_steps: int | None) -> None:
    """The whole product on one machine: start the embedded service (SQLite, no servers), submit the bundled
    demo teacher and audio, follow the job, download the student, verify its sha256 and load it."""
    import socket
    import zipfile

    import httpx

    from api.client import ClientError, SkillkdClient
    from core.cli import DEMO_AUDIO, DEMO_TEACHER
    from core.export import load_student

    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = _package_env()
    env["SKILLKD_HOME"] = str(home)
    env.pop("SKILLKD_DATABASE_URL", None)
    env.pop("SKILLKD_BROKER_URL", None)
    log = open(home / "serve.log", "ab")  # noqa: SIM115 (closed below)
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port)], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    click.echo(f"started the embedded service at {url} (home {home}, log {home / 'serve.log'})", err=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise click.ClickException(f"the service exited (code {server.returncode}); see {home / 'serve.log'}")
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
        if stage2_steps is not None:
            spec["stage2_steps"] = stage2_steps
        with SkillkdClient(url, key) as client:
            try:
                teacher = client.upload_directory("teachers", DEMO_TEACHER, name="demo-teacher")
                click.echo(f"uploaded teacher {teacher['id']}: {teacher['architecture']}, "
                           f"{teacher['num_params']:,} parameters", err=True)
                dataset = client.upload_directory("datasets", DEMO_AUDIO, name="demo-audio")
                click.echo(f"uploaded audio {dataset['id']}: {dataset['files']} files, "
                           f"{60 * dataset['hours']:.1f} min", err=True)
                job = client.create_job(teacher["id"], dataset["id"], spec)
                click.echo(f"job {job['id']} queued", err=True)
                final = _follow(client, job["id"])
                if final["status"] != "succeeded":
                    err = final.get("error") or {}
                    raise click.ClickException(f"job {final['status']}: {err.get('code')}: {err.get('message')}")
                out.mkdir(parents=True, exist_ok=True)
                archive = client.download(job["id"], "model", out / "student.zip")  # sha256 checked
            except ClientError as exc:
                _fail(exc)
        with zipfile.ZipFile(archive) as zf:  # the archive holds one folder, "student/"
            zf.extractall(out)
        archive.unlink()
        candidates = sorted(p.parent for p in out.rglob("config.json"))
        student = load_student(candidates[0])
        report = json.loads((candidates[0] / "report.json").read_text())
        t = report["teacher"]["num_params"]
        click.echo(f"\nstudent: {candidates[0]} (sha256 verified, loaded: {student.num_params():,} parameters, "
                   f"{100 * student.num_params() / t:.1f}% of the teacher's {t:,})\n"
                   f"report:  {candidates[0] / 'report.json'}\nclusters: {report['clusters']}")
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


def build_cli() -> click.Group:
    try:
        from core.cli import cli as engine_cli
    except ModuleNotFoundError as exc:  # the engine CLI is not there (yet): service commands still work
        if exc.name not in ("core.cli", "core"):
            raise
        engine_cli = click.Group(name="skillkd", help="skillkd: compress speech SSL encoders.")
    for command in SERVICE_COMMANDS:
        engine_cli.add_command(command)
    engine_cli.add_command(demo)
    return engine_cli


def main() -> None:
    build_cli()(prog_name="skillkd")


if __name__ == "__main__":
    main()
