"""The README's main job, `skillkd demo`: embedded service round trip on the bundled demo (shortened)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_round_trip_downloads_and_loads_a_smaller_student(tmp_path: Path) -> None:
    from core.models import load_student

    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "demo",
            "--home",
            str(tmp_path / "home"),
            "--out",
            str(out),
            "--stage1-steps",
            "3",
            "--stage2-steps",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sha256 verified" in proc.stdout
    student = load_student(out / "student")
    assert 0 < student.num_params() < 11_120_128
    assert (out / "student" / "report.json").exists()
    assert not _processes_with_home(tmp_path / "home"), "the demo left its service or worker running"


def _processes_with_home(home: Path) -> list[int]:
    marker = f"SKILLKD_HOME={home.resolve()}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found
