"""API load benchmark: requests/s and p50/p99 latency of GET /v1/jobs/{id} (and of job creation), with 1000
jobs in the database, for the code *before* a git revision and *after* (this checkout), on SQLite and
PostgreSQL, in one run:

    python -m bench.api_load                          # before = --before (default 33c1efa), after = this tree
    python -m bench.api_load --databases sqlite --before ''     # this tree only
    python -m bench.api_load --workers 1,2            # this tree with 1 and with 2 API processes
    python -m bench.api_load --profile DIR            # also: cProfile of the one-process 'after' server

Each server runs in its own process (uvicorn, the service's own options), seeded through its own code and a
fresh database (SQLite file, or a new PostgreSQL database created via --pg-admin-url); the queue is in memory,
so the numbers measure the API and the database, not the broker. `--workers N` runs this tree's server as
`skillkd serve --workers N` does (uvicorn's supervisor, N processes on one socket). The servers of a database
run side by side and are measured in alternation for `--rounds` rounds (the summary is the median).

The load generator (`--client`): `wrk` (C, one thread, keep-alive connections; a Lua script picks a random
job per request), the default when installed, leaves the CPU to the server on a 2-core machine; `httpx` is
`--concurrency` Python threads of httpx clients in this process, which themselves use about as much CPU per
request as the server. Both generators are closed loops (a connection sends its next request when the answer
arrives). "before" is the tree of `--before` exported with `git archive` (the working tree is not touched).
The machine is shared: the load average before and after each measurement is recorded next to it, and the
server's CPU time per request (all its processes). Writes bench/results/api_load.json.

Which code a server runs: the point of the benchmark is to compare checkouts, so each server is a separate
Python process that imports the service from its tree and from nothing else (`SERVER` below: the tree first
on sys.path, the editable install of skillkd taken off it, so that an old tree cannot pick up modules it lacks
from this checkout). This process imports neither core nor the service; it starts, drives and stops servers.
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

# The server of one tree: run as a file in the server's home (uvicorn's worker processes import
# `bench_server:make_app`). It puts the tree under test (cfg["tree"]: this checkout or a `git archive` of
# --before / --previous) first on sys.path on purpose, as that tree is what it measures, and takes the
# editable install off, which would otherwise supply the modules an old tree lacks (service.*, api.http) from
# this checkout, mixing the two. Knows both layouts: before issue 11 the state lived in api/ (api.db,
# api.models, api.keys), after it in service/.
SERVER = r"""
import json, os, sys
cfg = json.loads(os.environ["BENCH_CFG"])
# The tree under test and nothing else (see the comment above SERVER in bench/api_load.py).
sys.meta_path[:] = [f for f in sys.meta_path
                    if not str(getattr(f, "__module__", "")).startswith("__editable__")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
sys.path.insert(0, cfg["tree"])
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
BASE_CONFIG = {  # HuBERT Base's architecture (transformers' HubertConfig defaults)
    "model_type": "hubert", "architectures": ["HubertModel"], "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "intermediate_size": 3072, "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
}


def make_app():
    from api.app import create_app

    return create_app(settings, enqueuer=MemoryEnqueuer(), run_reaper=False)


def seed():
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        key = create_key(session, owner_name="bench")
        teacher = Teacher(id=new_id("tch"), owner_id=key.owner_id, name="t", sha256="0" * 64, size_bytes=1,
                          architecture="hubert", layout="base", num_layers=12, hidden_size=768,
                          num_params=94_000_000, sample_rate=16000)
        dataset = Dataset(id=new_id("ds"), owner_id=key.owner_id, name="d", source="upload", files=1,
                          hours=1.0, summary={})
        session.add_all([teacher, dataset])
        session.flush()
        # the teacher's config where an upload puts it: job creation asks the engine for its smallest
        # student and its task head from the architecture (no weights read)
        folder = settings.storage_dir / "teachers" / teacher.id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(BASE_CONFIG))
        now, ids, statuses = utcnow(), [], ["succeeded"] * 8 + ["failed", "cancelled"]
        metrics = {"loss": 0.1, "distill": 0.09, "sparsity": 0.75, "lambda1": 0.01,
                   "report": {"k": list(range(40))}}
        clusters = [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
        progress = {"stage": "export", "step": 1, "total_steps": 1, "eta_s": 0, "metrics": {}}
        for i in range(cfg["jobs"]):
            ids.append(new_id("job"))
            session.add(Job(id=ids[-1], owner_id=key.owner_id, teacher_id=teacher.id, dataset_id=dataset.id,
                            spec={"sparsity": 0.75, "clusters": clusters},
                            status=statuses[i % len(statuses)], stage="export", progress=progress,
                            metrics=metrics, clusters=clusters,
                            attempts=1, created_at=now, updated_at=now))
        session.commit()
    engine.dispose()
    return {"key": key.key, "teacher_id": teacher.id, "dataset_id": dataset.id, "ids": ids}


if __name__ == "__main__":
    import uvicorn

    info = seed()
    common = dict(host="127.0.0.1", port=cfg["port"], log_level="warning", **options)
    if cfg["workers"] > 1:
        server = None  # uvicorn's supervisor, as `skillkd serve --workers N` runs it
    else:
        server = uvicorn.Server(uvicorn.Config(make_app(), **common))
    profiler = None
    if cfg["profile"] and server is not None:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        with open(cfg["ready"] + ".tmp", "w") as f:
            json.dump(info, f)
        os.replace(cfg["ready"] + ".tmp", cfg["ready"])
        if server is None:
            uvicorn.run("bench_server:make_app", factory=True, workers=cfg["workers"], **common)
        else:
            server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT that stopped it
        pass
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(cfg["profile"])
"""

# wrk: one Lua state per thread; a random job of the seeded ones per request, or a fixed POST body. done()
# prints one JSON line (latencies in microseconds).
WRK_SCRIPT = r"""
local ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do ids[#ids + 1] = line end
math.randomseed(tonumber(os.getenv("BENCH_SEED")))
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
local body = os.getenv("BENCH_BODY")
if body ~= nil and body ~= "" then
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
request = function()
  if wrk.method == "POST" then return wrk.format(nil, "/v1/jobs") end
  return wrk.format(nil, "/v1/jobs/" .. ids[math.random(#ids)])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_tree(ref: str, dest: Path) -> Path:
    """The tree of git revision `ref` in `dest` (git archive; the working tree is untouched)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref], check=True, capture_output=True
    ).stdout
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
    """User + system CPU time so far of a process and its descendants alive now (Linux /proc): a server with
    worker processes counts all of them."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()
        ]
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(
        cpu_seconds(c) for c in children
    )


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
        "requests": len(latencies),
        "errors": errors,
        "concurrency": concurrency,
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        # CPU the server process spent per request (warm-up requests included): what the service costs,
        # much less sensitive to the other jobs on a shared machine than the wall-clock figures
        "server_cpu_ms_per_request": round(1000 * cpu / (len(latencies) + concurrency), 3),
    }


def drive_wrk(server: Server, seconds: float, concurrency: int, body: dict | None) -> dict:
    """`wrk -t1 -c<concurrency>` for `seconds` (whole seconds): GETs of random seeded jobs, or POSTs of
    `body`."""
    script = server.home / "bench.lua"
    script.write_text(WRK_SCRIPT)
    env = {
        **os.environ,
        "BENCH_IDS": str(server.home / "ids.txt"),
        "BENCH_KEY": server.info["key"],
        "BENCH_BODY": json.dumps(body) if body else "",
        "BENCH_SEED": str(random.randrange(1 << 30)),
    }
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds(server.proc.pid)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            server.url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_seconds(server.proc.pid) - cpu_before
    summary = json.loads(out.strip().splitlines()[-1])
    n = summary["requests"]
    return {
        "requests": n,
        "errors": summary["errors"],
        "concurrency": concurrency,
        "requests_per_s": round(n / (summary["duration_us"] / 1e6), 1),
        "p50_ms": round(summary["p50_us"] / 1000, 2),
        "p99_ms": round(summary["p99_us"] / 1000, 2),
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "server_cpu_ms_per_request": round(1000 * cpu / max(n, 1), 3),
    }


class Server:
    """One API server (one process, or uvicorn's supervisor and `workers` processes) on a fresh, seeded
    database."""

    def __init__(
        self, tree: Path, kind: str, args: argparse.Namespace, profile: Path | None, workers: int = 1
    ) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="skillkd-bench-"))
        self.db = Database(kind, self.home, args.pg_admin_url)
        port = free_port()
        cfg = {
            "tree": str(tree),
            "home": str(self.home),
            "database_url": self.db.url,
            "port": port,
            "jobs": args.jobs,
            "ready": str(self.home / "ready.json"),
            "profile": str(profile) if profile else "",
            "workers": workers,
        }
        script = self.home / "bench_server.py"
        script.write_text(SERVER)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLKD_")}
        env["BENCH_CFG"] = json.dumps(cfg)
        self.proc = subprocess.Popen([sys.executable, str(script)], cwd=tree, env=env)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        ready = self.home / "ready.json"
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the {tree.name} server did not start on {kind}")
            time.sleep(0.1)
        self.info = json.loads(ready.read_text())
        (self.home / "ids.txt").write_text("\n".join(self.info["ids"]) + "\n")
        import httpx

        while True:
            try:
                httpx.get(f"{self.url}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        auth = {"Authorization": f"Bearer {self.info['key']}"}
        for _ in range(4 * workers):  # every process has answered once (imports, the key cache, the pool)
            httpx.get(f"{self.url}/v1/jobs/{self.info['ids'][0]}", timeout=10, headers=auth)
        for _ in range(2 * workers):  # and created a job: the engine (torch) loaded, the teacher's sizes kept
            httpx.post(f"{self.url}/v1/jobs", json=self.create_body(), timeout=120, headers=auth)

    def create_body(self) -> dict:
        return {
            "teacher_id": self.info["teacher_id"],
            "dataset_id": self.info["dataset_id"],
            "spec": {"preset": "quick"},
        }

    def measure(self, args: argparse.Namespace) -> dict:
        ids, key = self.info["ids"], self.info["key"]
        body = self.create_body()
        result = {}
        if args.client == "wrk":
            for c in args.concurrency:
                result[f"get_job_c{c}"] = drive_wrk(self, args.seconds, c, None)
            result["create_job"] = drive_wrk(self, args.seconds / 2, max(args.concurrency), body)
            return result
        for c in args.concurrency:
            result[f"get_job_c{c}"] = drive(
                self.url,
                key,
                args.requests,
                c,
                lambda cl, rng: cl.get(f"/v1/jobs/{rng.choice(ids)}"),
                self.proc.pid,
            )
        result["create_job"] = drive(
            self.url,
            key,
            args.creates,
            max(args.concurrency),
            lambda cl, rng: cl.post("/v1/jobs", json=body),
            self.proc.pid,
        )
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
        out[name] = {
            k: round(statistics.median(r[name][k] for r in rounds), 3)
            for k in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
        }
        out[name]["errors"] = sum(r[name]["errors"] for r in rounds)
    return out


def print_profile(path: Path, limit: int = 30) -> str:
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(str(path), stream=out).sort_stats("tottime").print_stats(limit)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--before", default="33c1efa", help="git revision of the 'before' figures ('' to skip)"
    )
    parser.add_argument("--previous", default="", help="another revision measured alongside ('previous')")
    parser.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1],
        help="API processes of this tree's server, comma-separated (each is one server: "
        "'after' for 1, 'after_wN' for N)",
    )
    parser.add_argument(
        "--client",
        choices=("wrk", "httpx"),
        default="wrk" if shutil.which("wrk") else "httpx",
        help="load generator (default wrk when installed)",
    )
    parser.add_argument(
        "--seconds",
        type=int,
        default=5,
        help="wrk: seconds per GET measurement (half of it for job creation)",
    )
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000, help="httpx: GETs per measurement")
    parser.add_argument("--creates", type=int, default=400, help="httpx: job creations per measurement")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 8],
        help="connections (wrk) or client threads (httpx), comma-separated (each is one GET measurement)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating before/after measurements")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="directory for a cProfile of each 'after' server (top functions printed)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api_load.json")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="skillkd-bench-trees-"))
    variants: dict[str, tuple[Path, int]] = {}  # label -> (tree, API processes)
    if args.before:
        variants["before"] = (export_tree(args.before, scratch / "before"), 1)
    if args.previous:
        variants["previous"] = (export_tree(args.previous, scratch / "previous"), 1)
    for n in args.workers:
        variants["after" if n == 1 else f"after_w{n}"] = (REPO, n)
    command = " ".join(["python", "-m", "bench.api_load", *sys.argv[1:]])
    result: dict = {
        "before_revision": args.before or None,
        "previous_revision": args.previous or None,
        "client": args.client,
        "command": command,
        "after_revision": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        + " + working tree",
        "jobs_in_db": args.jobs,
        "results": {},
    }
    try:
        # Both servers of a database run side by side and are measured in alternation, round after round, so
        # that before and after see the same machine load as far as a shared machine allows; the summary is
        # the median over rounds.
        for kind in args.databases.split(","):
            servers = {}
            try:
                for label, (tree, workers) in variants.items():
                    profile = (
                        args.profile / f"{label}-{kind}.prof" if args.profile and label == "after" else None
                    )
                    if profile is not None:
                        args.profile.mkdir(parents=True, exist_ok=True)
                    servers[label] = Server(tree, kind, args, profile, workers)
                rounds: dict[str, list[dict]] = {label: [] for label in servers}
                for r in range(args.rounds):
                    for label, server in servers.items():
                        print(f"{kind} round {r + 1}/{args.rounds}: {label} ...", file=sys.stderr, flush=True)
                        rounds[label].append(server.measure(args))
                result["results"][kind] = {
                    label: {"median": medians(rs), "rounds": rs} for label, rs in rounds.items()
                }
            finally:
                for server in servers.values():
                    server.stop()
            if args.profile:
                for prof in sorted(args.profile.glob(f"*-{kind}.prof")):
                    print(print_profile(prof), file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "note": "shared with other jobs; see loadavg_1min_before_after of each measurement",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
