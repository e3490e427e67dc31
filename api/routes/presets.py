"""GET /v1/presets: what each training preset resolves to (steps, warmup, learning rates, audio per step),
so a client (the dashboard's new-job form) can show the defaults a spec without overrides gets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CurrentOwner
from api.routes.common import ERRORS
from core.spec import PRESETS, CompressionSpec

router = APIRouter(prefix="/v1/presets", tags=["presets"], responses=ERRORS)


# Options that change stage 2's default length (CompressionSpec.recipe), each with a value that turns it on
STAGE2_STEPS_OPTIONS: dict[str, Any] = {"int8_aware": True, "target_speedup": 2.0}


def preset_recipes() -> dict[str, Any]:
    """{"presets": {name: {"stage1": recipe, "stage2": recipe, "stage2_steps_with": {option: steps}}}}: each
    stage's resolved recipe (CompressionSpec.recipe) for a spec that names only the preset, and stage 2's
    steps when the spec also turns on an option that changes them (int8_aware, target_speedup)."""
    out = {}
    for name in PRESETS:
        spec = CompressionSpec.model_validate({"preset": name})
        out[name] = {
            "stage1": spec.recipe(1).model_dump(mode="json"),
            "stage2": spec.recipe(2).model_dump(mode="json"),
            "stage2_steps_with": {
                option: CompressionSpec.model_validate({"preset": name, option: value}).recipe(2).steps
                for option, value in STAGE2_STEPS_OPTIONS.items()
            },
        }
    return {"presets": out}


@router.get("")
def list_presets(owner: CurrentOwner) -> dict[str, Any]:
    """The training presets and the recipe each resolves to, stage by stage."""
    del owner  # any key may read them
    return preset_recipes()
