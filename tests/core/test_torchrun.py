"""Issue 24: `skillkd compress` started by torchrun (two node agents on 127.0.0.1, one process each, gloo)
runs the job on the launcher's ranks: rank 0 runs the pipeline and writes everything, rank 1 trains its
shard of each training stage beside it; the student equals the one of `--gpus 2` on one machine (the same
ranks, started by skillkd itself)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.models import load_student
from tests.utils.audio import write_noise
from tests.utils.models import save_tiny_teacher
from tests.utils.paths import REPO

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_on_two_nodes_gives_the_student_of_two_local_processes(tmp_path: Path) -> None:
    teacher, audio = save_tiny_teacher(tmp_path / "teacher"), write_noise(tmp_path / "audio")
    job = [str(teacher), str(audio), "--stage1-steps", "4", "--stage2-steps", "2", "--batch-seconds", "2"]
    job += ["--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    local = subprocess.run(
        [sys.executable, "-m", "cli", "compress", *job, "--gpus", "2", "--out", str(tmp_path / "local")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert local.returncode == 0, local.stderr[-3000:]

    endpoint = f"127.0.0.1:{_port()}"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    launch += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--max-restarts", "0"]
    command = [*launch, "-m", "cli", "compress", *job, "--out", str(tmp_path / "torchrun")]
    agents = [
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    assert all(agent.returncode == 0 for agent in agents), "\n---\n".join(o[-3000:] for o in outputs)

    a, b = load_student(tmp_path / "local" / "student"), load_student(tmp_path / "torchrun" / "student")
    assert a.config.to_dict() == b.config.to_dict()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-5), name
    # rank 0 wrote the run (and which launch started it); the other rank wrote nothing beside it
    assert sorted(p.name for p in (tmp_path / "torchrun").iterdir()) == sorted(
        [*(p.name for p in (tmp_path / "local").iterdir()), "launch.json"]
    )


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(c) for c in children.read_text().split()] if children.exists() else []
    return found + [d for c in found for d in _descendants(c)]


def _rank_pid(agent: int, rank: int) -> int | None:
    """The worker process of the torchrun agent `agent` that has RANK=`rank` in its environment."""
    for pid in _descendants(agent):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b"".join(environ):
            return pid
    return None


KILL_JOB = ["--stage1-steps", "24", "--stage2-steps", "2", "--batch-seconds", "2", "--checkpoint-every", "4"]
KILL_JOB += ["--device", "cpu"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Teacher, audio, and the student of the kill tests' job run on 2 processes without interruption."""
    root = tmp_path_factory.mktemp("torchrun")
    teacher, audio = save_tiny_teacher(root / "teacher"), write_noise(root / "audio")
    whole = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "compress",
            str(teacher),
            str(audio),
            *KILL_JOB,
            "--quiet",
            "--gpus",
            "2",
        ]
        + ["--out", str(root / "whole")],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    return teacher, audio, root / "whole" / "student"


def _kill_rank_1_after_a_checkpoint(agents: list[subprocess.Popen], out: Path) -> list[str]:
    """SIGKILL rank 1 once stage 1 wrote its first checkpoint; the agents' outputs when they end."""
    import signal
    import time

    checkpoint = out / "distill_prune" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and all(a.poll() is None for a in agents) and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = [pid for a in agents if (pid := _rank_pid(a.pid, 1)) is not None]
    assert checkpoint.exists() and victims, "no checkpoint, or no rank 1, to kill"
    os.kill(victims[0], signal.SIGKILL)
    outputs = [a.communicate(timeout=600)[0] for a in agents]
    assert all(a.returncode == 0 for a in agents), "\n---\n".join(o[-4000:] for o in outputs)
    return outputs


def _resumed_once_with_the_same_student(output: str, out: Path, whole: Path) -> None:
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith('{"event"')]
    resumed = [e for e in events if (e.get("message") or "").startswith("resumed at step")]
    assert len(resumed) == 1 and resumed[0]["stage"] == "distill_prune", resumed
    assert 4 <= resumed[0]["step"] < 24  # from a checkpoint of stage 1, not from its start
    assert sum(1 for e in events if e["kind"] == "stage_finished" and e["stage"] == "final_distill") == 1
    a, b = load_student(whole), load_student(out / "student")
    assert a.config.to_dict() == b.config.to_dict()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-5), name


def test_a_rank_killed_mid_stage_restarts_the_group_which_resumes_and_finishes_once(
    tmp_path: Path, uninterrupted: tuple[Path, Path, Path]
) -> None:
    """torchrun --max-restarts 1: rank 1 is SIGKILLed after stage 1's first checkpoint; the launcher restarts
    both ranks, rank 0 resumes the run from that checkpoint (not from scratch, not refused as a directory
    that holds a run), and the run finishes once, with the student of a run never interrupted."""
    teacher, audio, whole = uninterrupted
    out = tmp_path / "killed"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    agent = subprocess.Popen(  # --json: the events as JSON lines on stdout
        [
            *launch,
            "--max-restarts",
            "1",
            "-m",
            "cli",
            "compress",
            str(teacher),
            str(audio),
            *KILL_JOB,
            "--json",
        ]
        + ["--out", str(out)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = _kill_rank_1_after_a_checkpoint([agent], out)[0]
    assert "resuming the run" in output and output.count("resuming the run") == 1, output[-4000:]
    assert json.loads((out / "launch.json").read_text())["restart"] == 1
    _resumed_once_with_the_same_student(output, out, whole)


def test_a_rank_killed_on_one_of_two_nodes_restarts_both_which_resume_once(
    tmp_path: Path, uninterrupted: tuple[Path, Path, Path]
) -> None:
    """Two node agents (--nnodes 2, one process each, --max-restarts 1): rank 1 is SIGKILLed mid-stage; both
    agents restart their ranks, which meet again under a fresh store prefix (a handshake, not the agents'
    restart counts), and rank 0 resumes the run once, with the student of a run never interrupted."""
    teacher, audio, whole = uninterrupted
    out = tmp_path / "killed"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    launch += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_port()}", "--rdzv-id", "kill-test"]
    command = [*launch, "--max-restarts", "1", "-m", "cli", "compress", str(teacher), str(audio), *KILL_JOB]
    agents = [
        subprocess.Popen(
            [*command, "--json", "--out", str(out)],
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = _kill_rank_1_after_a_checkpoint(agents, out)
    rank0 = [o for o in outputs if '"stage_finished"' in o]
    assert len(rank0) == 1, "one process wrote the run's events"
    _resumed_once_with_the_same_student(rank0[0], out, whole)
