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


def test_presets_need_a_key(client) -> None:
    assert client.get("/v1/presets").status_code == 401
