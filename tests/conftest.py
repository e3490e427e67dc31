"""Shared fixtures: tiny random-init Hugging Face teachers (milliseconds to build; tests/utils/models.py), and
the process-wide settings of the test run. Plain helpers are in tests/utils/ and imported from there."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# the fixtures' building block; tests/api/test_dry_run.py still imports it from here (new code: tests.utils)
from tests.utils.models import save_tiny_teacher

__all__ = ["save_tiny_teacher"]

# One thread: the tests' models are tiny, and with two OpenMP threads on a 2-core machine that is also running
# worker subprocesses, threads spin-wait on each other and small steps get 10-100x slower (bench/README.md).
torch.set_num_threads(1)
# Every run's report times teacher and student (core.evaluation.speed); on the shared CPU the all-cores passes
# alone take half a minute per run. Tests of the timing itself set this back.
os.environ.setdefault("SKILLKD_SPEED_RUNS", "0")
# A latency budget's cost model is cached (core/calibrate/latency.py): not in the user's ~/.cache from tests.
os.environ.setdefault("SKILLKD_CACHE_DIR", tempfile.mkdtemp(prefix="skillkd-test-cache-"))


@pytest.fixture
def tiny_teacher_dir(tmp_path: Path) -> Path:
    return save_tiny_teacher(tmp_path / "teacher", "hubert")


@pytest.fixture
def tiny_wavlm_dir(tmp_path: Path) -> Path:
    return save_tiny_teacher(tmp_path / "teacher-wavlm", "wavlm")
