"""Issue 23 on the service: a fine-tuned teacher uploads like any other; at job creation (and in its dry run)
a head the engine cannot keep is 422 unless the spec drops it, and a weighted head with prune_layers is 422
naming that field, before anything is queued."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.utils.models import save_tiny_task_teacher
from tests.utils.servicekit import zip_dir


def upload(client, headers, directory: Path) -> dict:
    r = client.post(
        "/v1/teachers", content=zip_dir(directory), headers={**headers, "Content-Type": "application/zip"}
    )
    assert r.status_code == 201, r.text
    return r.json()


def create(client, headers, teacher, dataset, spec, *, dry_run=False):
    return client.post(
        "/v1/jobs" + ("?dry_run=true" if dry_run else ""),
        json={"teacher_id": teacher["id"], "dataset_id": dataset["id"], "spec": spec},
        headers=headers,
    )


def test_a_ctc_teachers_supervised_term_needs_a_transcript_field_at_creation(
    app, client, alice, dataset, enqueuer, tmp_path
):
    teacher = upload(client, alice, save_tiny_task_teacher(tmp_path / "ctc", "ctc"))
    supervised = {"task_supervised_weight": 1.0}
    _label_values(app, dataset, {"speaker": ["s1"]})
    r = create(client, alice, teacher, dataset, supervised, dry_run=True)
    assert r.status_code == 422 and "no field 'arpabet' / 'phones' / 'text'" in r.json()["error"]["message"]
    r = create(client, alice, teacher, dataset, {**supervised, "task_label_field": "words"})
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("spec.task_label_field:"), r.text
    assert enqueuer.ids == []
    _label_values(app, dataset, {"speaker": ["s1"], "arpabet": None})  # a transcript: too varied to list
    assert create(client, alice, teacher, dataset, supervised).status_code == 202


def test_a_ctc_teacher_is_accepted_and_its_job_keeps_the_head(client, alice, dataset, enqueuer, tmp_path):
    teacher = upload(client, alice, save_tiny_task_teacher(tmp_path / "ctc", "ctc"))
    r = create(client, alice, teacher, dataset, {"stage1_steps": 3})
    assert r.status_code == 202, r.text
    assert create(client, alice, teacher, dataset, {"drop_head": True}).status_code == 202


@pytest.mark.parametrize("dry_run", [False, True])
def test_heads_that_cannot_be_kept_are_422_at_creation(client, alice, dataset, enqueuer, tmp_path, dry_run):
    weighted = save_tiny_task_teacher(tmp_path / "seq", "sequence", weighted=True)
    teacher = upload(client, alice, weighted)
    r = create(client, alice, teacher, dataset, {"prune_layers": True}, dry_run=dry_run)
    assert r.status_code == 422 and r.json()["error"]["code"] == "spec_invalid", r.text
    assert r.json()["error"]["message"].startswith("spec.prune_layers: the teacher's head")

    unknown = save_tiny_task_teacher(tmp_path / "unknown", "sequence")
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(
        json.dumps({**config, "architectures": ["HubertForSpeechTranslation"]})
    )
    teacher = upload(client, alice, unknown)
    r = create(client, alice, teacher, dataset, {}, dry_run=dry_run)
    assert r.status_code == 422 and r.json()["error"]["code"] == "teacher_invalid", r.text
    message = r.json()["error"]["message"]
    assert "a head skillkd does not know" in message and "--drop-head" in message
    assert str(tmp_path) not in message  # no server path
    if not dry_run:
        assert enqueuer.ids == []
        assert create(client, alice, teacher, dataset, {"drop_head": True}).status_code == 202


def _label_values(app, dataset: dict, values: dict) -> None:
    """What the real engine's scan keeps of a dataset's manifest (`label_values`; the fake engine's scan
    reads no manifest)."""
    from service.models import Dataset

    with app.state.services.factory() as session:
        row = session.get(Dataset, dataset["id"])
        row.summary = {**(row.summary or {}), "label_values": values}
        session.commit()


def test_the_supervised_term_without_the_classifiers_labels_is_422_at_creation(
    app, client, alice, dataset, enqueuer, tmp_path
):
    """Issue 23: a classifier teacher (calm, happy, sad) with `task_supervised_weight` on a dataset whose
    manifest holds none of its labels is 422 naming the field the term would read, before anything is
    queued; a field too varied to be listed is left to the run."""
    teacher = upload(client, alice, save_tiny_task_teacher(tmp_path / "seq", "sequence"))
    supervised = {"task_supervised_weight": 1.0}
    _label_values(app, dataset, {"speaker": ["s1", "s2"], "emotion": ["angry"], "text": None})
    r = create(client, alice, teacher, dataset, supervised)
    assert r.status_code == 422 and r.json()["error"]["code"] == "spec_invalid", r.text
    message = r.json()["error"]["message"]
    assert message.startswith("spec.task_supervised_weight: the supervised term needs") and "calm" in message
    r = create(client, alice, teacher, dataset, {**supervised, "task_label_field": "mood"}, dry_run=True)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("spec.task_label_field:"), r.text
    assert enqueuer.ids == []
    # left to the audio (the default), the term is off on such a dataset: no error
    assert create(client, alice, teacher, dataset, {"task_weight": 1.0}).status_code == 202
    _label_values(app, dataset, {"speaker": ["s1"], "emotion": ["calm", "angry"]})
    assert create(client, alice, teacher, dataset, supervised).status_code == 202
    _label_values(app, dataset, {"mood": None})  # more values than kept: the run checks the utterances
    assert (
        create(client, alice, teacher, dataset, {**supervised, "task_label_field": "mood"}).status_code == 202
    )
