"""Cancel storm (issue 22, item 3): N create-then-cancel requests, then one real job: how long it waits.

    python -m bench.cancel_storm                                   # this checkout, 100 cancels, embedded
    python -m bench.cancel_storm --tree /tmp/before --label before  # a `git worktree` of an older commit
    python -m bench.cancel_storm --broker redis                    # a private redis-server as the broker

Each run starts `skillkd serve` of the tree under test (API + its one worker, as a user runs it; the fake
engine, `SKILLKD_FAKE_STEPS` steps of 0 s, so the job itself costs nothing), uploads the bundled demo teacher
and audio, sends N times `POST /v1/jobs` then `POST /v1/jobs/{id}/cancel` (one owner, one at a time), then
creates one more job and polls it until it leaves `queued`. The queue wait is the job's `started_at -
created_at` as the server recorded them; the wall time from its POST to the first poll that saw it running is
printed beside it. The load average is recorded before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def zip_dir(source: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(source).as_posix())
    return buf.getvalue()


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run(tree: Path, cancels: int, broker: str, work: Path) -> dict:
    home = work / "home"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLKD_")}
    env.update(
        PYTHONPATH=str(tree),
        SKILLKD_HOME=str(home),
        SKILLKD_ENGINE="service.engine:FakeEngine",
        SKILLKD_FAKE_STEPS="2",
        SKILLKD_BROKER_POLL_INTERVAL_S="0.5",
    )
    redis = None
    if broker == "redis":
        redis_port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        env["SKILLKD_BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    log = open(work / "serve.log", "wb")  # noqa: SIM115 (the server's lifetime)
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port)],
        cwd=tree,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"server did not start: {(work / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.3)
        key = (home / "admin.key").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            assets = tree / "core" / "assets"
            teacher = client.post("/v1/teachers", content=zip_dir(assets / "demo-teacher")).json()["id"]
            dataset = client.post("/v1/datasets", content=zip_dir(assets / "demo-audio")).json()["id"]
            body = {"teacher_id": teacher, "dataset_id": dataset, "spec": {"preset": "quick"}}
            load_before = os.getloadavg()
            t0 = time.monotonic()
            for _ in range(cancels):
                r = client.post("/v1/jobs", json=body)
                assert r.status_code == 202, r.text
                c = client.post(f"/v1/jobs/{r.json()['id']}/cancel")
                assert c.status_code == 200 and c.json()["status"] == "cancelled", c.text
            storm_s = time.monotonic() - t0
            posted = time.monotonic()
            r = client.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            while True:
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["status"] != "queued":
                    seen_s = time.monotonic() - posted
                    break
                if time.monotonic() - posted > 3600:
                    raise SystemExit("the job waited over an hour")
                time.sleep(0.2)
            wait_s = parse_time(job["started_at"]) - parse_time(job["created_at"])
            load_after = os.getloadavg()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        if redis is not None:
            redis.terminate()
            redis.wait()
    return {
        "cancels": cancels,
        "broker": broker,
        "storm_s": round(storm_s, 1),
        "queue_wait_s": round(wait_s, 2),
        "seen_running_after_s": round(seen_s, 2),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", type=Path, default=REPO, help="the checkout to run (default: this one)")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--cancels", type=int, default=100)
    parser.add_argument("--broker", choices=("embedded", "redis"), default="embedded")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server log)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cancel-storm-"))
    try:
        measured = run(args.tree.resolve(), args.cancels, args.broker, work)
        result = {"label": args.label, "tree": str(args.tree), **measured}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory: {work}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
