"""Issue 24: `skillkd compress` started by torchrun (two node agents on 127.0.0.1, one process each, gloo)
runs the job on the launcher's ranks: rank 0 runs the pipeline and writes everything, rank 1 trains its
shard of each training stage beside it; the student equals the one of `--gpus 2` on one machine (the same
ranks, started by skillkd itself)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from core.models import load_student
from tests.utils.models import save_tiny_teacher
from tests.utils.paths import REPO

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _audio(directory: Path) -> Path:
    directory.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        sf.write(directory / f"u{i}.wav", (0.3 * rng.standard_normal(16000)).astype(np.float32), 16000)
    return directory


def test_torchrun_on_two_nodes_gives_the_student_of_two_local_processes(tmp_path: Path) -> None:
    teacher, audio = save_tiny_teacher(tmp_path / "teacher"), _audio(tmp_path / "audio")
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
    # rank 0 wrote the run; the other rank wrote nothing beside it
    assert sorted(p.name for p in (tmp_path / "torchrun").iterdir()) == sorted(
        p.name for p in (tmp_path / "local").iterdir()
    )
