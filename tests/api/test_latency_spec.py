"""The API takes the speed fields (issue 25: the latency budget's, int8-aware training's) as it takes the MACs
ones: a good spec is accepted, a bad one is a 422 naming the field, at creation and in the dry run alike."""

from __future__ import annotations

import pytest


def post_job(client, headers, teacher, dataset, spec, *, dry_run=False):
    return client.post(
        "/v1/jobs" + ("?dry_run=true" if dry_run else ""),
        json={"teacher_id": teacher["id"], "dataset_id": dataset["id"], "spec": spec},
        headers=headers,
    )


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"target_speedup": 1.0}, "target_speedup"),
        ({"target_speedup": 2.0, "target_macs": 10**4}, "target_speedup"),
        ({"target_speedup": 2.0, "speed_target": "tpu"}, "speed_target"),
        ({"target_speedup": 2.0, "speed_threads": 0}, "speed_threads"),
        ({"int8_aware_consistency": 0.5}, "int8_aware_consistency"),  # needs int8_aware
        ({"int8_aware": True, "int8_aware_consistency": -0.1}, "int8_aware_consistency"),
    ],
)
def test_a_bad_latency_spec_is_422_naming_the_field(client, alice, teacher, dataset, enqueuer, spec, field):
    for dry_run in (True, False):
        r = post_job(client, alice, teacher, dataset, spec, dry_run=dry_run)
        assert r.status_code == 422, r.text
        assert field in r.json()["error"]["message"] and "Traceback" not in r.text
    assert enqueuer.ids == []


def test_a_latency_spec_is_accepted(client, alice, teacher, dataset, enqueuer):
    spec = {"target_speedup": 2.0, "speed_threads": 2, "sparsity": 0.5, "speed_target": "onnx-int8"}
    r = post_job(client, alice, teacher, dataset, spec)
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["target_speedup"] == 2.0 and r.json()["spec"]["speed_threads"] == 2
    assert r.json()["spec"]["speed_target"] == "onnx-int8"


def test_a_cuda_target_is_the_workers_to_time(client, alice, teacher, dataset, enqueuer):
    """The API takes the cuda target: the GPU worker that runs the job times it (a machine without one
    fails the job as spec_invalid on speed_target: tests/core/test_latency.py)."""
    r = post_job(client, alice, teacher, dataset, {"target_speedup": 2.0, "speed_target": "cuda"})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["speed_target"] == "cuda"


def test_an_int8_aware_spec_takes_a_consistency_weight(client, alice, teacher, dataset, enqueuer):
    r = post_job(client, alice, teacher, dataset, {"int8_aware": True, "int8_aware_consistency": 0.5})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["int8_aware_consistency"] == 0.5
