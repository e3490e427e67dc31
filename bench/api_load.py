"""API load benchmark: requests/s and p50/p99 latency of GET /v1/jobs/{id} (and of job creation), with 1000
jobs in the database, for the code *before* a git revision and *after* (this checkout), on SQLite and
PostgreSQL, in one run:

    python bench/api_load.py                          # before = --before (default 33c1efa), after = this tree
    python bench/api_load.py --databases sqlite --before ''     # this tree only
    python bench/api_load.py --profile                # also: cProfile of the server under the GET load

Each server runs in its own process (uvicorn, one worker, the service's own options), seeded through its own
code and a fresh database; the before and after servers of a database run side by side and are measured in
alternation for `--rounds` rounds (the summary is the median) (SQLite file, or a new PostgreSQL database created via --pg-admin-url); the queue is
in memory, so the numbers measure the API and the database, not the broker. The client is another process
with `--concurrency` threads on keep-alive connections. "before" is the tree of `--before` exported with
`git archive` (the working tree is not touched). The machine is shared: the load average before and after
each measurement is recorded next to it. Writes bench/results/api_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Run inside the server process, with the tree under test first on sys.path. Knows both layouts: before issue
# 11 the state lived in api/ (api.db, api.models, api.keys), after it in service/.
SERVER = r'''
import json, sys, time
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["tree"])
import uvicorn
from api.app import create_app
try:
    from service.db import make_engine, make_sessionmaker, upgrade
    from service.keys import create_key
    from service.models import Dataset, Job, Teacher, new_id, utcnow
    from service.queue import MemoryEnqueuer
    from service.settings import Settings
    from api.http import uvicorn_options
    options = uvicorn_options()
except ImportError:
    from api.db import make_engine, make_sessionmaker, upgrade
    from api.keys import create_key
    from api.models import Dataset, Job, Teacher, new_id, utcnow
    from api.settings import Settings
    from worker.queue import MemoryEnqueuer
    options = {"access_log": False}

settings = Settings(home=cfg["home"], database_url=cfg["database_url"], max_jobs_in_flight=10**9)
upgrade(settings.database_url)
engine = make_engine(settings.database_url)
with make_sessionmaker(engine)() as session:
    key = create_key(session, owner_name="bench")
    teacher = Teacher(id=new_id("tch"), owner_id=key.owner_id, name="t", sha256="0" * 64, size_bytes=1,
                      architecture="hubert", layout="base", num_layers=12, hidden_size=768, num_params=94_000_000,
                      sample_rate=16000)
    dataset = Dataset(id=new_id("ds"), owner_id=key.owner_id, name="d", source="upload", files=1, hours=1.0,
                      summary={})
    session.add_all([teacher, dataset])
    session.flush()
    now, ids, statuses = utcnow(), [], ["succeeded"] * 8 + ["failed", "cancelled"]
    metrics = {"loss": 0.1, "distill": 0.09, "sparsity": 0.75, "lambda1": 0.01, "report": {"k": list(range(40))}}
    for i in range(cfg["jobs"]):
        ids.append(new_id("job"))
        session.add(Job(id=ids[-1], owner_id=key.owner_id, teacher_id=teacher.id, dataset_id=dataset.id,
                        spec={"sparsity": 0.75, "clusters": [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]},
                        status=statuses[i % len(statuses)], stage="export",
                        progress={"stage": "export", "step": 1, "total_steps": 1, "eta_s": 0, "metrics": {}},
                        metrics=metrics, clusters=[[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], attempts=1,
                        created_at=now, updated_at=now))
    session.commit()
engine.dispose()
app = create_app(settings, enqueuer=MemoryEnqueuer(), run_reaper=False)
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=cfg["port"], log_level="warning", **options))
profiler = None
if cfg["profile"]:
    import cProfile
    profiler = cProfile.Profile()
    profiler.enable()
try:
    with open(cfg["ready"] + ".tmp", "w") as f:
        json.dump({"key": key.key, "teacher_id": teacher.id, "dataset_id": dataset.id, "ids": ids}, f)
    import os
    os.replace(cfg["ready"] + ".tmp", cfg["ready"])
    server.run()
except KeyboardInterrupt:  # uvicorn re-raises the SIGINT that stopped it
    pass
finally:
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(cfg["profile"])
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_tree(ref: str, dest: Path) -> Path:
    """The tree of git revision `ref` in `dest` (git archive; the working tree is untouched)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref], check=True,
                             capture_output=True).stdout
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tf:
        tf.extractall(dest, filter="data")
    return dest


class Database:
    """A fresh database for one server: a SQLite file, or a new PostgreSQL database dropped afterwards."""

    def __init__(self, kind: str, home: Path, pg_admin_url: str) -> None:
        self.kind, self.admin_url = kind, pg_admin_url
        if kind == "sqlite":
            self.url = f"sqlite:///{home / 'bench.db'}"
        else:
            import sqlalchemy

            self.name = f"skillkd_bench_{secrets.token_hex(4)}"
            admin = sqlalchemy.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{self.name}"'))
            admin.dispose()
            self.url = pg_admin_url.rsplit("/", 1)[0] + f"/{self.name}"

    def drop(self) -> None:
        if self.kind != "sqlite":
            import sqlalchemy

            admin = sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            admin.dispose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(url: str, key: str, requests: int, concurrency: int, make_request, server_pid: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    per_thread = requests // concurrency

    def worker(seed_: int) -> None:
        nonlocal errors
        rng = random.Random(seed_)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            make_request(client, rng)  # warm the connection
            for _ in range(per_thread):
                start = time.perf_counter()
                r = make_request(client, rng)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if r.status_code >= 400:
                        errors += 1

    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds(server_pid)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - start
    cpu = cpu_seconds(server_pid) - cpu_before
    latencies.sort()
    return {
        "requests": len(latencies), "errors": errors, "concurrency": concurrency,
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        # CPU the server process spent per request (warm-up requests included): what the service costs,
        # much less sensitive to the other jobs on a shared machine than the wall-clock figures
        "server_cpu_ms_per_request": round(1000 * cpu / (len(latencies) + concurrency), 3),
    }


class Server:
    """One API server process on a fresh, seeded database."""

    def __init__(self, tree: Path, kind: str, args: argparse.Namespace, profile: Path | None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="skillkd-bench-"))
        self.db = Database(kind, self.home, args.pg_admin_url)
        port = free_port()
        cfg = {"tree": str(tree), "home": str(self.home), "database_url": self.db.url, "port": port,
               "jobs": args.jobs, "ready": str(self.home / "ready.json"), "profile": str(profile) if profile else ""}
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLKD_")}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(cfg)], cwd=tree, env=env)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        ready = self.home / "ready.json"
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the {tree.name} server did not start on {kind}")
            time.sleep(0.1)
        self.info = json.loads(ready.read_text())
        import httpx

        while True:
            try:
                httpx.get(f"{self.url}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)

    def measure(self, args: argparse.Namespace) -> dict:
        ids, key = self.info["ids"], self.info["key"]
        result = {}
        for c in args.concurrency:
            result[f"get_job_c{c}"] = drive(self.url, key, args.requests, c,
                                            lambda cl, rng: cl.get(f"/v1/jobs/{rng.choice(ids)}"), self.proc.pid)
        body = {"teacher_id": self.info["teacher_id"], "dataset_id": self.info["dataset_id"],
                "spec": {"preset": "quick"}}
        result["create_job"] = drive(self.url, key, args.creates, max(args.concurrency),
                                     lambda cl, rng: cl.post("/v1/jobs", json=body), self.proc.pid)
        return result

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.db.drop()
        shutil.rmtree(self.home, ignore_errors=True)


def medians(rounds: list[dict]) -> dict:
    """Per measurement, the median over rounds of each figure."""
    out: dict = {}
    for name in rounds[0]:
        out[name] = {k: round(statistics.median(r[name][k] for r in rounds), 3)
                     for k in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request")}
        out[name]["errors"] = sum(r[name]["errors"] for r in rounds)
    return out


def print_profile(path: Path, limit: int = 30) -> str:
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(limit)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="33c1efa", help="git revision of the 'before' figures ('' to skip)")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--creates", type=int, default=400)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8],
                        help="client threads, comma-separated (each is one GET measurement)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating before/after measurements")
    parser.add_argument("--profile", type=Path, default=None,
                        help="directory for a cProfile of each 'after' server (top functions printed)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api_load.json")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="skillkd-bench-trees-"))
    trees = {"after": REPO}
    if args.before:
        trees = {"before": export_tree(args.before, scratch / "before"), "after": REPO}
    result: dict = {"before_revision": args.before or None,
                    "after_revision": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                                     capture_output=True, text=True).stdout.strip() + " + working tree",
                    "jobs_in_db": args.jobs, "results": {}}
    try:
        # Both servers of a database run side by side and are measured in alternation, round after round, so
        # that before and after see the same machine load as far as a shared machine allows; the summary is
        # the median over rounds.
        for kind in args.databases.split(","):
            servers = {}
            try:
                for label, tree in trees.items():
                    profile = args.profile / f"{label}-{kind}.prof" if args.profile and label == "after" else None
                    if profile is not None:
                        args.profile.mkdir(parents=True, exist_ok=True)
                    servers[label] = Server(tree, kind, args, profile)
                rounds: dict[str, list[dict]] = {label: [] for label in servers}
                for r in range(args.rounds):
                    for label, server in servers.items():
                        print(f"{kind} round {r + 1}/{args.rounds}: {label} ...", file=sys.stderr, flush=True)
                        rounds[label].append(server.measure(args))
                result["results"][kind] = {label: {"median": medians(rs), "rounds": rs} for label, rs in rounds.items()}
            finally:
                for server in servers.values():
                    server.stop()
            if args.profile:
                for prof in sorted(args.profile.glob(f"*-{kind}.prof")):
                    print(print_profile(prof), file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                         "note": "shared with other jobs; see loadavg_1min_before_after of each measurement"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
