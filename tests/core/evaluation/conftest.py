"""Fixtures for the evaluation tests: a representation model around transformers, and tiny datasets (built
by tests/utils/evaluation.py). The CLI tests go through `core.models.load_model` on a saved tiny teacher.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.utils.evaluation import HFRepresentations, make_tiny_model, write_dataset


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny models gain nothing from intra-op threads, and on a loaded machine the threads' spin-waits make
    these tests 10x slower; the previous setting is restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model() -> HFRepresentations:
    return make_tiny_model()


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")
