"""The latency distribution of GET /v1/jobs/{id} under wrk (p50 ... p99.9 and max), for one server of
`bench.api_load` (a tree, a database, a number of API processes); what `bench.api_load` summarises as p50/p99:

    flock /tmp/bench.lock python -m bench.api_tail --database postgresql --workers 2 --connections 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from bench import api_load

PERCENTILES = (50, 90, 95, 99, 99.5, 99.9)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", type=Path, default=api_load.REPO)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()

    server = api_load.Server(args.tree, args.database, args, None, args.workers)
    script = server.home / "tail.lua"
    wanted = ", ".join(str(p) for p in PERCENTILES)
    script.write_text(
        api_load.WRK_SCRIPT.replace(
            "  local e = summary.errors\n",
            f"  for _, p in ipairs({{{wanted}}}) do io.write('p', p, '=', latency:percentile(p) / 1000, 'ms "
            "') end\n"
            "  io.write('max=', latency.max / 1000, 'ms ', summary.requests * 1e6 / summary.duration, ' "
            "req/s\\n')\n"
            "  local e = summary.errors\n",
        )
    )
    env = {
        **os.environ,
        "BENCH_IDS": str(server.home / "ids.txt"),
        "BENCH_KEY": server.info["key"],
        "BENCH_BODY": "",
        "BENCH_SEED": "1",
    }
    try:
        for _ in range(args.runs):
            load = os.getloadavg()[0]
            out = subprocess.run(
                ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "-s", str(script), server.url],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            line = next(x for x in out.splitlines() if x.startswith("p50="))
            print(
                f"{args.database} workers={args.workers} c={args.connections} load={load:.2f}: {line}",
                flush=True,
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
