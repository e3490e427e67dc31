"""GET /v1/presets: each preset's resolved recipes, for the dashboard's new-job form."""

from __future__ import annotations

from core.spec import PRESETS, CompressionSpec


def test_presets_are_each_stages_resolved_recipe(client, alice) -> None:
    r = client.get("/v1/presets", headers=alice)
    assert r.status_code == 200, r.text
    body = r.json()["presets"]
    assert set(body) == set(PRESETS)
    for name in PRESETS:
        spec = CompressionSpec(preset=name)
        assert body[name]["stage1"] == spec.recipe(1).model_dump(mode="json")
        assert body[name]["stage2"] == spec.recipe(2).model_dump(mode="json")
    assert body["quick"]["stage1"]["steps"] == 200


def test_presets_say_which_options_lengthen_stage_2(client, alice) -> None:
    """The form's default for stage2_steps is not the preset's alone: an int8-aware run and a latency budget
    run longer (CompressionSpec.recipe)."""
    body = client.get("/v1/presets", headers=alice).json()["presets"]
    for name in PRESETS:
        base = PRESETS[name][2]["steps"]
        with_ = body[name]["stage2_steps_with"]
        assert with_["int8_aware"] == CompressionSpec(preset=name, int8_aware=True).recipe(2).steps
        assert with_["target_speedup"] == CompressionSpec(preset=name, target_speedup=3.0).recipe(2).steps
        assert with_["int8_aware"] == 2 * base
    assert body["quick"]["stage2_steps_with"]["target_speedup"] == 2 * PRESETS["quick"][2]["steps"]


def test_presets_need_a_key(client) -> None:
    assert client.get("/v1/presets").status_code == 401
