"""Issue 24: `--gpus N` on one machine starts each training stage through torch's elastic launcher API. A
rank that dies makes the agent restart the group, which resumes from the stage's last checkpoint and finishes
once; a run stopped on 2 processes resumes on 1, accumulating 2 batches per step to keep its global batch,
and gives the student of a run never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.errors import StopRequested
from core.events import Event
from core.models import load_student
from core.pipeline import run
from core.spec import CompressionSpec
from tests.utils.audio import write_noise
from tests.utils.models import save_tiny_teacher
from tests.utils.paths import REPO

pytestmark = pytest.mark.slow

JOB = dict(stage1_steps=24, stage2_steps=2, batch_seconds=2.0, checkpoint_every=4, device="cpu")


def _same_student(a_dir: Path, b_dir: Path) -> None:
    a, b = load_student(a_dir), load_student(b_dir)
    assert a.config.to_dict() == b.config.to_dict()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-5), name


def _workers(pid: int) -> list[int]:
    """The rank processes the elastic agent (a thread of process `pid`) spawned."""
    children = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in children.iterdir() if children.exists() else []:
        kids = task / "children"
        found += [int(c) for c in kids.read_text().split()] if kids.exists() else []
    ranks = []
    for child in found:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            ranks.append(child)
    return ranks


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The teacher, the audio, and the student of an uninterrupted 2-process run."""
    root = tmp_path_factory.mktemp("elastic")
    teacher, audio = save_tiny_teacher(root / "teacher"), write_noise(root / "audio")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run(CompressionSpec(**JOB, gpus=2), teacher, audio, root / "whole")
    return teacher, audio, root / "whole" / "student"


def test_a_run_stopped_on_two_processes_resumes_on_one_with_the_same_global_batch(
    tmp_path: Path, inputs: tuple[Path, Path, Path]
) -> None:
    teacher, audio, whole = inputs
    seen: list[Event] = []

    def stop_after_a_checkpoint() -> bool:  # the ranks look every 5 steps: stop at step 5
        return any(e.stage == "distill_prune" and e.kind == "stage_started" for e in seen)

    out = tmp_path / "run"
    with pytest.raises(StopRequested):
        run(
            CompressionSpec(**JOB, gpus=2),
            teacher,
            audio,
            out,
            on_event=seen.append,
            should_stop=stop_after_a_checkpoint,
        )
    events: list[Event] = []
    run(CompressionSpec(**JOB, gpus=1), teacher, audio, out, on_event=events.append)
    resumed = [e.message or "" for e in events if (e.message or "").startswith("resumed at step")]
    assert resumed == [
        "resumed at step 5 on 1 process(es) x 2 accumulated batch(es) per step (saved on 2 x 1: the same "
        "global batch)"
    ]
    assert json.loads((out / "job.json").read_text())["batches_per_step"] == 2
    _same_student(whole, out / "student")


def _kill_a_rank_of_gpus_2(
    teacher: Path, audio: Path, out: Path, restarts: int, flag: str
) -> tuple[int, str]:
    """`skillkd compress --gpus 2 FLAG` of the job; SIGKILL one of its 2 ranks once stage 1 wrote its first
    checkpoint. Returns the command's exit code and output."""
    options = [f"--{k.replace('_', '-')}={v}" for k, v in JOB.items()]
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "compress", str(teacher), str(audio), *options, "--gpus", "2", flag]
        + ["--out", str(out)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "SKILLKD_MAX_RESTARTS": str(restarts)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoint = out / "distill_prune" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    ranks = _workers(process.pid)
    assert checkpoint.exists() and len(ranks) == 2, ("no checkpoint, or not 2 ranks", ranks)
    os.kill(max(ranks), signal.SIGKILL)
    output = process.communicate(timeout=600)[0]
    return process.returncode, output


def test_a_rank_killed_mid_stage_restarts_the_group_which_resumes_and_finishes_once(
    tmp_path: Path, inputs: tuple[Path, Path, Path]
) -> None:
    teacher, audio, whole = inputs
    out = tmp_path / "killed"
    code, output = _kill_a_rank_of_gpus_2(teacher, audio, out, restarts=1, flag="--json")
    assert code == 0, output[-4000:]
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith('{"event"')]
    resumed = [e for e in events if (e.get("message") or "").startswith("resumed at step")]
    assert len(resumed) == 1 and resumed[0]["stage"] == "distill_prune", resumed
    assert 4 <= resumed[0]["step"] < 24  # from a checkpoint of stage 1, not from its start
    assert sum(1 for e in events if e["kind"] == "stage_finished" and e["stage"] == "final_distill") == 1
    _same_student(whole, out / "student")


def test_a_rank_that_keeps_dying_fails_the_run_with_the_reason_and_keeps_the_checkpoint(
    tmp_path: Path, inputs: tuple[Path, Path, Path]
) -> None:
    teacher, audio, _ = inputs
    out = tmp_path / "dies"
    code, output = _kill_a_rank_of_gpus_2(teacher, audio, out, restarts=0, flag="--quiet")
    assert code == 1, output[-4000:]
    assert "a training process died" in output and "killed by SIGKILL" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert (out / "distill_prune" / "checkpoint.pt").exists()
