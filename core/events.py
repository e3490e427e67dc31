"""Progress events: what the engine tells its caller (CLI progress bar, worker -> job_events rows)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

EventKind = Literal["stage_started", "progress", "stage_finished", "clusters", "log", "skipped_audio"]
STAGES = ("calibrate", "distill_prune", "finalize", "final_distill", "export", "evaluate")


@dataclass
class Event:
    kind: EventKind
    stage: str
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


OnEvent = Callable[[Event], None]
ShouldStop = Callable[[], bool]


def ignore_event(event: Event) -> None:
    """Default sink."""


def never_stop() -> bool:
    return False
