"""Server-side commands (run on the service's machine): `serve`, `worker`, `migrate`, `keys`.

`skillkd worker` starts Celery on `worker.celery_app` as a command line (like docker-compose does), and
`skillkd serve` starts its embedded worker as `python -m cli worker`, so the CLI never imports the worker's
code.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click


def settings() -> Any:
    from service.settings import get_settings

    return get_settings()


def package_env() -> dict[str, str]:
    """The environment for a child process, with this checkout importable."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--worker/--no-worker", default=True, help="also start one worker process (embedded mode)")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="API processes sharing the port (a request costs CPU in Python: about one per core); the "
    "job worker stays one process",
)
def serve(host: str, port: int, worker: bool, workers: int) -> None:
    """Run the API (and one worker): migrations applied, an admin key created on first start.

    With `--workers N`, uvicorn's supervisor runs N API processes, each building the app from the same
    environment (`api.app:create_app`); they share nothing but the database (SQLite in WAL mode serves several
    processes), so each has its own API-key cache, runs its own reaper (its transitions are conditional
    updates: two reapers cannot both win). /metrics sums the request counters of all N (prometheus_client's
    multiprocess mode, in a directory of this server's own under `home`/metrics, removed when it stops); the
    job and queue figures are read from the database and the broker."""
    import uvicorn

    from api.app import create_app
    from api.http import uvicorn_options
    from service.db import make_engine, make_sessionmaker, upgrade

    s = settings()
    s.ensure_dirs()
    upgrade(s.database_url)
    ensure_admin_key(s, make_sessionmaker(make_engine(s.database_url)))
    supervisor: WorkerSupervisor | None = None
    metrics_dir: Path | None = None
    if worker:
        s.embedded_worker_pid_file = s.home / f"worker-{os.getpid()}.pid"
        os.environ["SKILLKD_EMBEDDED_WORKER_PID_FILE"] = str(s.embedded_worker_pid_file)  # --workers N
        supervisor = WorkerSupervisor(s.embedded_worker_pid_file)
        supervisor.start()
    # uvicorn re-raises the SIGTERM it handled once it has shut down; with the default handler that would end
    # this process before the `finally` below stops the worker. A no-op handler lets the cleanup run.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    click.echo(f"dashboard: http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ui/", err=True)
    try:
        if workers == 1:
            uvicorn.run(create_app(s), host=host, port=port, log_level="info", **uvicorn_options())
        else:
            # read by prometheus_client when each API process imports it, and by Settings
            metrics_dir = s.home / "metrics" / f"serve-{os.getpid()}"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            uvicorn.run(
                "api.app:create_app",
                factory=True,
                workers=workers,
                host=host,
                port=port,
                log_level="info",
                **uvicorn_options(),
            )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if supervisor is not None:
            supervisor.stop()


class WorkerSupervisor:
    """The embedded worker of `skillkd serve` (`python -m cli worker`), started again whenever it dies.

    A thread starts the worker and waits for it. While it runs, its process id is in `pid_file` (which the
    API's /readyz reads, from any of its processes); when it exits without being asked to, the file is removed
    (/readyz answers 503 naming the worker), the exit is logged, and it is started again after a backoff:
    1 s, doubling up to 60 s, back to 1 s once a worker has run for `STABLE_S`. `stop()` ends it with a warm
    shutdown (a running job resumes from its checkpoint later), SIGKILL of its process group after 10 s.

    The worker gets its own process group (so its pool children can be stopped with it) and a parent-death
    signal, so a SIGKILLed `serve` does not leave an orphaned worker consuming jobs. That signal follows the
    thread that started the process, which is why one thread starts every worker and lives as long as the
    supervisor."""

    FIRST_BACKOFF_S = 1.0
    MAX_BACKOFF_S = 60.0
    STABLE_S = 60.0

    def __init__(self, pid_file: Path) -> None:
        import threading

        self.pid_file = pid_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # a worker is never started after stop() looked for one to end
        self._thread = threading.Thread(target=self._run, name="embedded-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        from core.processes import die_with_parent

        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker"],
            env=package_env(),
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        tmp = self.pid_file.with_name(self.pid_file.name + ".tmp")
        tmp.write_text(f"{proc.pid}\n")
        tmp.replace(self.pid_file)
        return proc

    def _run(self) -> None:
        import logging
        import time

        log = logging.getLogger("skillkd.serve")
        backoff = self.FIRST_BACKOFF_S
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                self.proc = self._spawn()
            code = self.proc.wait()
            self.pid_file.unlink(missing_ok=True)
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= self.STABLE_S:
                backoff = self.FIRST_BACKOFF_S
            self.restarts += 1
            message = (
                f"the job worker (pid {self.proc.pid}) exited with code {code}; "
                f"starting it again in {backoff:g} s (restart {self.restarts})"
            )
            log.warning(message)
            click.echo(f"skillkd serve: {message}", err=True)
            try:  # what is left of its process group (pool children)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self.MAX_BACKOFF_S)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown; a running job resumes from its checkpoint later
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._thread.join(timeout=15)
        self.pid_file.unlink(missing_ok=True)


def ensure_admin_key(s: Any, factory: Any) -> None:
    from service.keys import create_key, key_count

    key_file = s.home / "admin.key"
    with factory() as session:
        if key_count(session):
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
    from service.queue import QUEUE

    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        QUEUE,
        "-c",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "-n",
        f"skillkd-{os.getpid()}@%h",
    ]
    os.execve(sys.executable, argv, package_env())


@click.command()
def migrate() -> None:
    """Apply database migrations (SKILLKD_DATABASE_URL)."""
    from service.db import upgrade

    s = settings()
    s.ensure_dirs()
    upgrade(s.database_url)
    click.echo("database is at head")


@click.group()
def keys() -> None:
    """Manage API keys (admin; direct database access)."""


def _session() -> Any:
    from service.db import make_engine, make_sessionmaker, upgrade

    s = settings()
    s.ensure_dirs()
    upgrade(s.database_url)
    return make_sessionmaker(make_engine(s.database_url))()


@keys.command("create")
@click.option("--owner", required=True, help="owner name (created if new)")
@click.option("--admin", is_flag=True, help="the owner may register server-side datasets")
@click.option("--name", default="", help="a label for the key")
def keys_create(owner: str, admin: bool, name: str) -> None:
    """Create a key; it is printed once and stored only hashed."""
    from service.keys import create_key

    with _session() as session:
        new = create_key(session, owner_name=owner, admin=admin, key_name=name)
        session.commit()
    click.echo(new.key)


@keys.command("list")
def keys_list() -> None:
    from service.keys import list_keys

    with _session() as session:
        for key, owner in list_keys(session):
            state = "revoked" if key.revoked_at else "active"
            admin = " (admin)" if owner.is_admin else ""
            click.echo(f"{key.id}  {key.prefix}...  {owner.name}{admin}  {state}  {key.name}")


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke by key id or prefix."""
    from service.keys import revoke_key

    with _session() as session:
        n = revoke_key(session, key_id_or_prefix=key)
        session.commit()
    if not n:
        raise click.ClickException(f"no active key {key}")
    click.echo(f"revoked {n} key(s)")


COMMANDS = (serve, worker_cmd, migrate, keys)

__all__ = [
    "COMMANDS",
    "serve",
    "worker_cmd",
    "migrate",
    "keys",
    "package_env",
    "settings",
    "ensure_admin_key",
    "WorkerSupervisor",
]
