"""Smoke test of `python -m bench.api_load`: one tiny run on SQLite of this tree, with the httpx client and,
when wrk is installed, with wrk and a two-process server (`skillkd serve --workers 2`'s layout), so the
benchmark keeps working as the service changes. Figures are not checked: only that every request was
answered."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils.paths import REPO


@pytest.mark.parametrize(
    "client",
    [
        "httpx",
        pytest.param(
            "wrk", marks=pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
        ),
    ],
)
def test_api_load_runs_tiny(tmp_path: Path, client: str) -> None:
    out = tmp_path / "api_load.json"
    workers = "1,2" if client == "wrk" else "1"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.api_load",
            "--databases",
            "sqlite",
            "--before",
            "",
            "--client",
            client,
            "--workers",
            workers,
            "--jobs",
            "20",
            "--requests",
            "20",
            "--creates",
            "4",
            "--seconds",
            # 1 s was too short under load: with three compressions beside the suite, wrk completed no
            # job creation within it (0 requests/s, no errors); this is a smoke test, not a figure
            "2",
            "--concurrency",
            "2",
            "--rounds",
            "1",
            "--out",
            str(out),
        ],
        check=True,
        timeout=300,
        capture_output=True,
        cwd=REPO,
    )
    results = json.loads(out.read_text())["results"]["sqlite"]
    assert set(results) == ({"after", "after_w2"} if client == "wrk" else {"after"})
    for variant in results.values():
        for name, figures in variant["median"].items():
            assert figures["errors"] == 0 and figures["requests_per_s"] > 0, (name, figures)
