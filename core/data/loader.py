"""Background loading of training batches: worker processes decode, resample and crop the next batches while
the accelerator runs the current step, and a pinned-memory thread makes their copy to the GPU asynchronous.

`BatchLoader` wraps a `TrainBatches` stream without changing what it serves: batch `i` of the stream is a pure
function of the plan (`TrainBatches.serve(i)`), so workers can serve any batch in any order and the
`DataLoader` delivers them in order. The wrapped stream's position advances only when the training loop
*receives* a batch, so a checkpoint taken after step n records n consumed batches whatever was prefetched,
and resuming is as exact as without workers.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from core.data import Batch


class BatchStream(Protocol):
    """What the loader (and `train_stage`) need of a stream; `TrainBatches` is the real one."""

    @property
    def consumed(self) -> int: ...

    def seek(self, consumed: int) -> None: ...

    def serve(self, index: int) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _Indexed(Dataset[Batch]):
    def __init__(self, batches: BatchStream) -> None:
        self.batches = batches

    def __getitem__(self, index: int) -> Batch:
        return self.batches.serve(index)


class _From(Sampler[int]):
    """start, start + 1, ...: the stream is endless."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def default_workers(device: torch.device, ranks: int = 1) -> int:
    """Loader worker processes per rank: none on CPU (they would compete with the compute for the same
    cores), otherwise up to 4, leaving one core per rank for its training process."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores // max(1, ranks) - 1))


class BatchLoader:
    """Iterate `batches` from where it stands, with `workers` processes (0: in this process) and, with
    `pin_memory`, page-locked batches. `close()` stops the workers; so does the end of the iteration."""

    def __init__(
        self, batches: BatchStream, *, workers: int = 0, pin_memory: bool = False, prefetch: int = 2
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.batches = batches
        self.workers = workers
        self.pin_memory = pin_memory
        self.prefetch = prefetch
        self._iterator: Any = None

    def __iter__(self) -> Iterator[Batch]:
        self.close()
        start = self.batches.consumed
        workers = self.workers
        if workers and multiprocessing.current_process().daemon:
            workers = 0  # a daemonic process may not start children: load in this process instead
        if workers == 0 and not self.pin_memory:
            for index in itertools.count(start):
                batch = self.batches.serve(index)
                self.batches.seek(index + 1)
                yield batch
        loader = DataLoader(
            _Indexed(self.batches),
            batch_size=None,
            sampler=_From(start),
            num_workers=workers,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch if workers else None,
            collate_fn=_identity,
            multiprocessing_context="fork" if workers and _can_fork() else None,
            # Its own generator: the DataLoader draws worker seeds from it, and drawing them from the global
            # one would change the training's random numbers (mask samples) with the number of workers.
            generator=torch.Generator().manual_seed(0),
        )
        self._iterator = iter(loader)
        for index in itertools.count(start):
            batch = next(self._iterator)
            self.batches.seek(index + 1)
            yield batch

    def close(self) -> None:
        """Stop the worker processes (if any); the stream keeps its position."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _identity(batch: Any) -> Any:
    return batch


def _can_fork() -> bool:
    """fork is fast and shares the decoded-waveform cache copy-on-write; it is safe here because the workers
    never touch CUDA. Where it is unavailable, the platform default (spawn) pickles the stream instead."""
    return "fork" in multiprocessing.get_all_start_methods()


__all__ = ["BatchLoader", "BatchStream", "default_workers"]
