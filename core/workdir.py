"""A run's directory and its bookkeeping, so a stopped or crashed run resumes where it was.

    workdir/job.json              the spec and inputs this directory belongs to (a second spec is refused)
    workdir/<stage>/done.json     written when a stage completes: a finished stage is never run again
    workdir/timings.json          wall seconds per stage (each counts the attempt that finished it)

`Workdir.stage(name, work)` is the one place a stage starts: it skips a finished stage, otherwise emits
`stage_started`, runs `work`, records its time and marks it done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import SpecError, StopRequested
from core.events import STAGES, Event, OnEvent, ShouldStop, ignore_event, never_stop
from core.spec import CompressionSpec

# Spec fields that say where and how a run executes, not what it computes: a resumed run may change them.
EXECUTION_FIELDS = {"device", "gpus", "grad_accumulation", "evaluate", "export_onnx"}


def json_default(obj: Any) -> Any:
    """`json.dumps(default=...)` for the numbers and paths the stages return."""
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def write_json(path: Path, value: Any) -> None:
    """Write `value` as indented JSON, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=json_default))
    tmp.replace(path)


class Timings(dict[str, float]):
    """Wall seconds per stage, kept in `workdir/timings.json` so a resumed run still reports the stages an
    earlier attempt finished (each stage counts the attempt that finished it)."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "timings.json"
        super().__init__(json.loads(self.path.read_text()) if self.path.exists() else {})

    def __setitem__(self, stage: str, seconds: float) -> None:
        super().__setitem__(stage, round(seconds, 3))
        self.path.write_text(json.dumps(dict(self), indent=2))

    def report(self) -> dict[str, float]:
        stages = {stage: self[stage] for stage in ("inputs", *STAGES) if stage in self}
        return {**stages, "total": round(sum(stages.values()), 3)}


def _as_now(saved: Any) -> Any:
    """A workdir's saved spec as this version reads it: a field added since (`speed_margin`, say) takes its
    default, so an older run resumes unless something it recorded differs; a spec this version refuses is
    compared as saved (and differs)."""
    try:
        return CompressionSpec.model_validate(saved).model_dump(exclude=EXECUTION_FIELDS)
    except ValueError:  # pydantic's ValidationError is one
        return saved


class Workdir:
    def __init__(
        self, path: Path, emit: OnEvent = ignore_event, should_stop: ShouldStop = never_stop
    ) -> None:
        self.path = path
        self.emit = emit
        self.should_stop = should_stop
        self.path.mkdir(parents=True, exist_ok=True)
        self.timings = Timings(path)

    def claim(self, spec: CompressionSpec, teacher: Path, audio: Path) -> int:
        """A workdir belongs to one job: resuming it with a different spec or input would mix two runs.
        Returns the run's global batch in batches per optimiser step (gpus x grad_accumulation when it
        started): a resumed run keeps it whatever its number of processes, which must divide it."""
        path = self.path / "job.json"
        current: dict[str, Any] = {
            "spec": spec.model_dump(exclude=EXECUTION_FIELDS),
            "teacher": str(teacher.resolve()),
            "audio": str(audio.resolve()),
            "batches_per_step": spec.gpus * (spec.grad_accumulation or 1),
        }
        if not path.exists():
            path.write_text(json.dumps(current, indent=2))
            return int(current["batches_per_step"])
        previous = json.loads(path.read_text())
        if _as_now(previous.get("spec")) != current["spec"]:
            raise SpecError(f"{self.path} holds a run with a different spec; use a new output directory")
        # a run directory written before the global batch was recorded: the resumed run's split is taken
        # (its checkpoints refuse another one)
        per_step = int(previous.get("batches_per_step", current["batches_per_step"]))
        if per_step % spec.gpus:
            raise SpecError(
                f"this run's global batch is {per_step} batches per optimiser step, which {spec.gpus} "
                f"processes cannot share: resume it on a number of processes that divides {per_step}"
            )
        asked = spec.gpus * (spec.grad_accumulation or 0)
        if asked and asked != per_step:
            raise SpecError(
                f"this run's global batch is {per_step} batches per optimiser step; {spec.gpus} "
                f"process(es) x {spec.grad_accumulation} accumulated make {asked}: use grad_accumulation "
                f"{per_step // spec.gpus} or leave it out"
            )
        return per_step

    def done(self, stage: str) -> dict[str, Any] | None:
        """What a finished stage returned, or None if it has not finished."""
        marker = self.path / stage / "done.json"
        return json.loads(marker.read_text()) if marker.exists() else None

    def stage(self, name: str, work: Callable[[], dict[str, Any]], *, again: bool = False) -> dict[str, Any]:
        """Run stage `name` unless it finished before (or `again`: its output is missing); returns its
        info."""
        info = self.done(name)
        if info is None or again:
            start = time.monotonic()
            self.emit(Event("stage_started", name))
            info = work()
            self.timings[name] = time.monotonic() - start
            write_json(self.path / name / "done.json", info)
        return info

    def finished(self, name: str, metrics: dict[str, Any] | None = None) -> None:
        """Tell the caller the stage is over (also a stage skipped because an earlier attempt finished it)."""
        self.emit(Event("stage_finished", name, metrics=metrics or {}))

    def check_stop(self, where: str) -> None:
        if self.should_stop():
            raise StopRequested(f"stopped during {where}")


__all__ = ["EXECUTION_FIELDS", "Timings", "Workdir", "json_default", "write_json"]
