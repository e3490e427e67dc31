"""API load benchmark: requests/s and p50/p99 latency of GET /v1/jobs/{id} and of job creation, with
1000 jobs already in the database.

    python bench/api_load.py                                  # SQLite (embedded default), in-memory queue
    python bench/api_load.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench

The API runs in uvicorn (one process) on a free port and is driven over real HTTP by `--concurrency`
client threads. The queue is in-memory so the numbers measure the API and the database, not the broker.
Writes bench/results/api_load.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from api.app import create_app  # noqa: E402
from service.db import make_engine, make_sessionmaker, upgrade  # noqa: E402
from service.keys import create_key  # noqa: E402
from service.models import Dataset, Job, Teacher, new_id, utcnow  # noqa: E402
from service.queue import MemoryEnqueuer  # noqa: E402
from service.settings import Settings  # noqa: E402


def seed(settings: Settings, n_jobs: int) -> tuple[str, str, str, list[str]]:
    engine = make_engine(settings.database_url)
    factory = make_sessionmaker(engine)
    with factory() as session:
        key = create_key(session, owner_name=f"bench-{new_id('own')}")
        teacher = Teacher(id=new_id("tch"), owner_id=key.owner_id, name="t", sha256="0" * 64, size_bytes=1,
                          architecture="hubert", layout="base", num_layers=12, hidden_size=768,
                          num_params=94_000_000, sample_rate=16000)
        dataset = Dataset(id=new_id("ds"), owner_id=key.owner_id, name="d", source="upload", files=1, hours=1.0,
                          summary={})
        session.add_all([teacher, dataset])
        session.flush()
        now = utcnow()
        ids = []
        statuses = ["succeeded"] * 8 + ["failed", "cancelled"]
        for i in range(n_jobs):
            job_id = new_id("job")
            ids.append(job_id)
            session.add(Job(id=job_id, owner_id=key.owner_id, teacher_id=teacher.id, dataset_id=dataset.id,
                            spec={"sparsity": 0.75}, status=statuses[i % len(statuses)], stage="export",
                            progress={"stage": "export", "step": 1, "total_steps": 1, "eta_s": 0, "metrics": {}},
                            metrics={"loss": 0.1}, attempts=1, created_at=now, updated_at=now))
        session.commit()
    engine.dispose()
    return key.key, teacher.id, dataset.id, ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(url: str, key: str, requests: int, concurrency: int, make_request) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    per_thread = requests // concurrency

    def worker(seed_: int) -> None:
        nonlocal errors
        rng = random.Random(seed_)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            for _ in range(per_thread):
                start = time.perf_counter()
                r = make_request(client, rng)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if r.status_code >= 400:
                        errors += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies), "errors": errors, "concurrency": concurrency,
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--creates", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api_load.json")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="skillkd-bench-"))
    settings = Settings(home=home, database_url=args.database_url, max_jobs_in_flight=10**9)
    upgrade(settings.database_url)
    key, teacher_id, dataset_id, ids = seed(settings, args.jobs)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, enqueuer=MemoryEnqueuer(), run_reaper=False),
                                           host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"

    get = drive(url, key, args.requests, args.concurrency,
                lambda c, rng: c.get(f"/v1/jobs/{rng.choice(ids)}"))
    body = {"teacher_id": teacher_id, "dataset_id": dataset_id, "spec": {"preset": "quick"}}
    create = drive(url, key, args.creates, args.concurrency, lambda c, rng: c.post("/v1/jobs", json=body))
    server.should_exit = True
    thread.join(timeout=10)

    result = {
        "database": settings.database_url.split(":", 1)[0], "jobs_in_db": args.jobs,
        "get_job": get, "create_job": create,
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                    "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
