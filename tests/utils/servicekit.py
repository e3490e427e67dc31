"""Builders shared by the service tests: tiny teachers, audio, archives (good and hostile), databases."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[2]
DEMO_TEACHER = REPO / "core" / "assets" / "demo-teacher"
DEMO_AUDIO = REPO / "core" / "assets" / "demo-audio"
PG_ADMIN_URL = os.environ.get("SKILLKD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def safetensors_bytes(shapes: dict[str, list[int]]) -> bytes:
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\x00" * offset


def make_teacher(root: Path, *, model_type: str = "hubert") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(
        json.dumps({"model_type": model_type, "hidden_size": 32, "num_hidden_layers": 4})
    )
    (root / "model.safetensors").write_bytes(safetensors_bytes({"a.weight": [32, 32], "b.bias": [32]}))
    return root


def make_audio(root: Path, n: int = 3, seconds: float = 1.0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    rng = np.random.default_rng(0)
    for i in range(n):  # noise on top: real audio barely compresses, and the ratio limit must not trip
        wave = 0.1 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(t.size)
        soundfile.write(root / f"u{i}.wav", wave.astype("float32"), 16000)
    return root


def zip_dir(source: Path, *, top: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(source.rglob("*")):
            if p.is_file():
                zf.write(p, f"{top}{p.relative_to(source)}")
    return buf.getvalue()


def tar_dir(source: Path, *, top: str = "", mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for p in sorted(source.rglob("*")):
            if p.is_file():
                tf.add(p, f"{top}{p.relative_to(source)}")
    return buf.getvalue()


def zip_entries(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def tar_with(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = b"x"
        info = tarfile.TarInfo("ok.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(data))
        bad = tarfile.TarInfo("evil")
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "ok.txt"
        elif kind == "device":
            bad.type = tarfile.CHRTYPE
        elif kind == "traversal":
            bad.name, bad.size = "../../evil.txt", 1
            tf.addfile(bad, io.BytesIO(data))
            return buf.getvalue()
        elif kind == "absolute":
            bad.name, bad.size = "/tmp/evil.txt", 1
            tf.addfile(bad, io.BytesIO(data))
            return buf.getvalue()
        tf.addfile(bad)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_available() -> bool:
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new database (random name, created via the `test` database), dropped afterwards."""
    import sqlalchemy

    name = f"skillkd_t_{secrets.token_hex(6)}"
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class RedisServer:
    """A private redis-server (no persistence) that tests may stop and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def redis_server_binary() -> bool:
    return shutil.which("redis-server") is not None


def service_env(settings_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLKD_")}
    env.update(settings_env)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class WorkerProcess:
    """`python -m cli worker` in its own process group, so a test can SIGKILL parent and child."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        out = open(self.log, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--loglevel", "INFO"],
            env=self.env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(predicate, *, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
