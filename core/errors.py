"""Errors the engine raises on purpose, each with a stable `code` the service stores and returns.

    SkillkdError
    ├── TeacherError        code "teacher_invalid"      a teacher we cannot import (architecture, key, shape)
    ├── AudioError          code "audio_invalid"        no usable audio, unreadable manifest
    ├── SpecError           code "spec_invalid"         a spec that cannot apply to this teacher
    ├── TrainingError       code "training_diverged"    NaN/inf loss
    ├── CheckpointError     code "checkpoint_invalid"   a checkpoint or export that does not load
    └── StopRequested       code "cancelled"            should_stop() returned True; state was saved

Anything else escaping the engine is a bug and is reported as code "internal".
"""

from __future__ import annotations


class SkillkdError(Exception):
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TeacherError(SkillkdError):
    code = "teacher_invalid"


class AudioError(SkillkdError):
    code = "audio_invalid"


class SpecError(SkillkdError):
    """`field` names the spec field at fault when one is (the service answers it as the error's field)."""

    code = "spec_invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TrainingError(SkillkdError):
    code = "training_diverged"


class CheckpointError(SkillkdError):
    code = "checkpoint_invalid"


class StopRequested(SkillkdError):
    code = "cancelled"


__all__ = [
    "SkillkdError",
    "TeacherError",
    "AudioError",
    "SpecError",
    "TrainingError",
    "CheckpointError",
    "StopRequested",
]
