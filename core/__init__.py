"""skillkd's engine: SKILL / DPHuBERT compression of wav2vec 2.0-family speech encoders.

Its folders follow the pipeline (docs/design.md, "Inside the engine"): data -> calibrate -> distill ->
finalize -> export, with models/ (the encoder and its masks) and evaluation/ (probes, speed) beside them.

The stable public surface, importable from `core` itself:

    from core import run, CompressionSpec, load_student, load_model
    run(spec, teacher_dir, audio_dir, workdir) -> PipelineResult   the whole job (core.pipeline)
    CompressionSpec                                                  what to do (core.spec)
    load_student(export_dir), load_model(path)                       the ways in (core.models)
    SkillkdError and its subclasses                                  what can go wrong (core.errors)

Names load on first use, so `import core` stays light (no torch until a name that needs it is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "run": "core.pipeline",
    "PipelineResult": "core.pipeline",
    "CompressionSpec": "core.spec",
    "load_student": "core.models",
    "load_model": "core.models",
    "SkillkdError": "core.errors",
}
__all__ = [
    "CompressionSpec",
    "PipelineResult",
    "SkillkdError",
    "__version__",
    "load_model",
    "load_student",
    "run",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
