"""The README's stable imports: `from core import run, CompressionSpec, load_student, ...` resolve to the
engine's own objects, and `import core` alone loads no torch (the names load on first use)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import core


def test_the_stable_names_are_the_engine_objects() -> None:
    from core.errors import SkillkdError
    from core.models import load_model, load_student
    from core.pipeline import PipelineResult, run
    from core.spec import CompressionSpec

    assert core.run is run and core.PipelineResult is PipelineResult
    assert core.CompressionSpec is CompressionSpec and core.SkillkdError is SkillkdError
    assert core.load_student is load_student and core.load_model is load_model
    assert sorted(core.__all__) == sorted(
        [
            "CompressionSpec",
            "PipelineResult",
            "SkillkdError",
            "__version__",
            "load_model",
            "load_student",
            "run",
        ]
    )


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'export_for_everyone'"):
        core.export_for_everyone  # noqa: B018


def test_import_core_alone_loads_no_torch() -> None:
    code = "import sys, core; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
