"""Teacher and dataset uploads: happy paths, and every bad input answers 4xx leaving nothing behind."""

from __future__ import annotations

import io
import itertools
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import delete, func, select

from service import crud
from service.models import Dataset, Teacher
from tests.utils.servicekit import (
    make_audio,
    make_teacher,
    safetensors_bytes,
    tar_dir,
    tar_with,
    zip_dir,
    zip_entries,
)


def post(client, kind, body, headers, **params):
    return client.post(
        f"/v1/{kind}",
        content=body,
        params=params,
        headers={**headers, "Content-Type": "application/octet-stream"},
    )


def assert_nothing_left(app, settings):
    assert list((settings.storage / "tmp").iterdir()) == []
    assert list((settings.storage / "teachers").iterdir()) == []
    assert list((settings.storage / "datasets").iterdir()) == []
    with app.state.services.factory() as s:
        assert s.scalar(select(func.count()).select_from(Teacher)) == 0
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0


def test_teacher_upload_answers_architecture_and_params(client, alice, teacher_zip, settings):
    r = post(client, "teachers", teacher_zip, alice, name="mini")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["architecture"] == "hubert" and body["num_params"] == 32 * 32 + 32
    assert body["name"] == "mini" and len(body["sha256"]) == 64
    assert (settings.storage / "teachers" / body["id"] / "config.json").is_file()
    assert list((settings.storage / "tmp").iterdir()) == []


@pytest.mark.parametrize("packer", ["zip_top_folder", "tar_gz", "tar_top_folder"])
def test_teacher_archive_layouts(client, alice, tmp_path, packer):
    src = make_teacher(tmp_path / "t")
    body = {
        "zip_top_folder": lambda: zip_dir(src, top="hubert-mini/"),
        "tar_gz": lambda: tar_dir(src),
        "tar_top_folder": lambda: tar_dir(src, top="x/", mode="w"),
    }[packer]()
    r = post(client, "teachers", body, alice)
    assert r.status_code == 201, r.text


def _teacher_variant(tmp_path, kind):
    src = make_teacher(tmp_path / kind)
    if kind == "truncated_safetensors":
        data = (src / "model.safetensors").read_bytes()
        (src / "model.safetensors").write_bytes(data[:-10])
    elif kind == "corrupt_safetensors":
        (src / "model.safetensors").write_bytes(b"\xff" * 64)
    elif kind == "bad_architecture":
        (src / "config.json").write_text('{"model_type": "bert"}')
    elif kind == "no_weights":
        (src / "model.safetensors").unlink()
    elif kind == "bad_config":
        (src / "config.json").write_text("{not json")
    return zip_dir(src)


@pytest.mark.parametrize(
    "kind", ["truncated_safetensors", "corrupt_safetensors", "bad_architecture", "no_weights", "bad_config"]
)
def test_invalid_teacher_is_422_teacher_invalid(client, alice, tmp_path, app, settings, kind):
    r = post(client, "teachers", _teacher_variant(tmp_path, kind), alice)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "teacher_invalid"
    assert r.json()["error"]["message"]
    assert_nothing_left(app, settings)


HOSTILE = {
    "not_an_archive": (b"hello, this is not an archive" * 10, "archive_invalid"),
    "truncated_zip": (None, "archive_invalid"),
    "zip_traversal": (zip_entries({"../evil.txt": b"x"}), "archive_unsafe_entry"),
    "zip_absolute": (zip_entries({"/etc/evil": b"x"}), "archive_unsafe_entry"),
    "zip_symlink": (zip_entries({"a.txt": b"x"}, symlink="link"), "archive_unsafe_entry"),
    "tar_symlink": (tar_with("symlink"), "archive_unsafe_entry"),
    "tar_hardlink": (tar_with("hardlink"), "archive_unsafe_entry"),
    "tar_device": (tar_with("device"), "archive_unsafe_entry"),
    "tar_traversal": (tar_with("traversal"), "archive_unsafe_entry"),
    "tar_absolute": (tar_with("absolute"), "archive_unsafe_entry"),
    "zip_bomb": (zip_entries({"zeros.bin": b"\0" * (8 * 1024 * 1024)}), "archive_too_large"),
    "too_many_entries": (zip_entries({f"f{i}.txt": b"x" for i in range(60)}), "archive_too_large"),
    "empty_archive": (zip_entries({}), "archive_invalid"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("resource", ["teachers", "datasets"])
def test_hostile_archives_are_refused(client, alice, app, settings, teacher_zip, kind, resource):
    body, code = HOSTILE[kind]
    if body is None:
        body = teacher_zip[: len(teacher_zip) // 2]
    r = post(client, resource, body, alice)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code, r.json()
    assert_nothing_left(app, settings)
    assert not (settings.storage.parent / "evil.txt").exists()


def test_oversize_upload_is_413(client, alice, app, settings):
    r = post(client, "teachers", b"\0" * (settings.max_upload_bytes + 1), alice)
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"
    assert_nothing_left(app, settings)


def test_oversize_upload_without_content_length_is_413(client, alice, app, settings):
    def chunks():
        for _ in range(5):
            yield b"\0" * (1024 * 1024)

    r = client.post("/v1/datasets", content=chunks(), headers=alice)
    assert r.status_code == 413
    assert_nothing_left(app, settings)


def test_empty_upload_is_422(client, alice):
    r = post(client, "datasets", b"", alice)
    assert r.status_code == 422 and r.json()["error"]["code"] == "upload_empty"


def test_dataset_upload_reports_counts_and_rejections(client, alice, tmp_path, settings):
    src = make_audio(tmp_path / "a", n=3)
    (src / "notes.txt").write_text("not audio")
    (src / "broken.wav").write_bytes(b"RIFF....garbage")
    make_audio(tmp_path / "short", n=1, seconds=0.2)
    (tmp_path / "short" / "u0.wav").rename(src / "short.wav")
    r = post(client, "datasets", zip_dir(src), alice)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["files"] == 3 and body["sample_rates"] == [16000]
    assert abs(body["hours"] - 3 / 3600) < 1e-6
    assert body["skipped"] == {"not_audio": 1, "unreadable": 1, "too_short": 1}
    assert body["examples"]["not_audio"] == ["notes.txt"]


def test_non_audio_dataset_is_422_audio_invalid(client, alice, app, settings):
    body = zip_entries({"a.txt": b"hello", "b.csv": b"1,2"})
    r = post(client, "datasets", body, alice)
    assert r.status_code == 422 and r.json()["error"]["code"] == "audio_invalid"
    assert_nothing_left(app, settings)


def test_server_path_dataset_is_admin_only(client, keys, tmp_path, settings):
    settings.server_dataset_roots = [tmp_path]  # registering is off until the operator names roots
    src = make_audio(tmp_path / "server-audio", n=2)
    r = client.post("/v1/datasets", json={"path": str(src)}, headers=keys["alice"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = client.post("/v1/datasets", json={"path": str(src), "name": "srv"}, headers=keys["root"])
    assert r.status_code == 201, r.text
    assert r.json()["source"] == "server_path" and r.json()["files"] == 2
    r = client.post("/v1/datasets", json={"path": "relative/dir"}, headers=keys["root"])
    assert r.status_code == 422 and r.json()["error"]["code"] == "dataset_path_invalid"
    r = client.post("/v1/datasets", json={"paht": "/x"}, headers=keys["root"])
    assert r.status_code == 422 and "path" in r.json()["error"]["message"]


def test_uploads_need_a_key(client, teacher_zip):
    r = client.post("/v1/teachers", content=teacher_zip)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = client.post("/v1/teachers", content=teacher_zip, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_teacher_and_dataset_owner_isolation(client, keys, teacher, dataset):
    assert client.get(f"/v1/teachers/{teacher['id']}", headers=keys["alice"]).status_code == 200
    assert client.get(f"/v1/teachers/{teacher['id']}", headers=keys["bob"]).status_code == 404
    assert client.get(f"/v1/datasets/{dataset['id']}", headers=keys["bob"]).status_code == 404
    assert client.get("/v1/teachers", headers=keys["bob"]).json()["items"] == []
    assert [t["id"] for t in client.get("/v1/teachers", headers=keys["alice"]).json()["items"]] == [
        teacher["id"]
    ]


def test_pickle_only_teacher_is_refused(client, alice, tmp_path):
    src = make_teacher(tmp_path / "t")
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    r = post(client, "teachers", zip_dir(src), alice)
    assert r.status_code == 422 and r.json()["error"]["code"] == "teacher_invalid"


def test_zip_with_duplicate_entries_is_refused(client, alice):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("config.json", "{}")
        with pytest.warns(UserWarning):
            zf.writestr("config.json", "{}")
    r = post(client, "teachers", buf.getvalue(), alice)
    assert r.status_code == 422 and r.json()["error"]["code"] == "archive_unsafe_entry"


def test_safetensors_builder_sanity():
    assert len(safetensors_bytes({"w": [2]})) > 8


@pytest.mark.parametrize("kind", ["teachers", "datasets"])
def test_same_content_again_is_the_same_upload_per_owner(
    client, keys, settings, teacher_zip, audio_zip, kind
):
    """Issue 22, item 9: an owner's upload of an archive (sha256) they already uploaded answers 200 with the
    existing teacher or dataset (201 for a new one), so `skillkd submit` run twice uses one teacher id and the
    dashboard can compare its jobs; another owner's upload of the same bytes is theirs alone."""
    body = teacher_zip if kind == "teachers" else audio_zip
    alice, bob = keys["alice"], keys["bob"]
    first = post(client, kind, body, alice, name="first")
    assert first.status_code == 201, first.text
    again = post(client, kind, body, alice, name="second")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()  # the same row, its name unchanged
    listed = client.get(f"/v1/{kind}", headers=alice).json()["items"]
    assert [item["id"] for item in listed] == [first.json()["id"]]
    assert len(list((settings.storage / kind).iterdir())) == 1  # nothing extracted the second time
    digest = first.json()["sha256"]
    found = client.get(f"/v1/{kind}", params={"sha256": digest}, headers=alice).json()["items"]
    assert [item["id"] for item in found] == [first.json()["id"]]

    assert client.get(f"/v1/{kind}", params={"sha256": digest}, headers=bob).json()["items"] == []
    theirs = post(client, kind, body, bob)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    assert client.get(f"/v1/{kind}", params={"sha256": "0" * 64}, headers=alice).json()["items"] == []
    assert client.get(f"/v1/{kind}", params={"sha256": "x"}, headers=alice).status_code == 422

    assert client.delete(f"/v1/{kind}/{first.json()['id']}", headers=alice).status_code == 204
    assert post(client, kind, body, alice).status_code == 201  # a deleted upload is not resurrected


def test_submit_twice_uses_one_teacher_and_sends_it_once(cli_as_alice, settings, tmp_path):
    """Issue 22, item 9: `skillkd submit TEACHER AUDIO` run twice: both jobs name the same teacher and dataset
    (the dashboard's Compare groups by teacher id), and the second run asks before uploading (GET
    ?sha256=), so the archives are not sent again."""
    from click.testing import CliRunner

    from cli import skillkd

    teacher, audio = make_teacher(tmp_path / "teacher"), make_audio(tmp_path / "audio")
    posts: list[str] = []
    cli_as_alice.event_hooks["request"].append(
        lambda request: posts.append(request.url.path) if request.method == "POST" else None
    )
    runs = [CliRunner().invoke(skillkd, ["submit", str(teacher), str(audio)]) for _ in range(2)]
    assert [r.exit_code for r in runs] == [0, 0], [r.output for r in runs]
    jobs = [cli_as_alice.get(f"/v1/jobs/{r.stdout.strip()}").json() for r in runs]
    assert jobs[0]["teacher_id"] == jobs[1]["teacher_id"] and jobs[0]["dataset_id"] == jobs[1]["dataset_id"]
    assert "already uploaded" not in runs[0].stderr
    assert runs[1].stderr.count("(already uploaded: not sent again)") == 2, runs[1].stderr
    assert posts == ["/v1/teachers", "/v1/datasets", "/v1/jobs", "/v1/jobs"]
    assert len(cli_as_alice.get("/v1/teachers").json()["items"]) == 1


# -- issue 22, item 9: concurrent identical uploads by one owner resolve to one teacher or dataset ----------
MODELS = {"teachers": Teacher, "datasets": Dataset}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def upload_app(request):
    """(app, client, alice's headers) on SQLite, and on PostgreSQL (skipped when it is not reachable)."""
    if request.param == "sqlite":
        return (
            request.getfixturevalue("app"),
            request.getfixturevalue("client"),
            request.getfixturevalue("alice"),
        )
    live = request.getfixturevalue("postgres_app")
    return live.app, live.client, live.alice


def rows_of(app, kind) -> list[str]:
    with app.state.services.factory() as s:
        return list(s.scalars(select(MODELS[kind].id)))


def stored(app, kind) -> list[str]:
    return sorted(p.name for p in (app.state.services.storage.root / kind).iterdir())


def leftover_tmp(app) -> list[str]:
    return [p.name for p in (app.state.services.storage.root / "tmp").iterdir()]


@pytest.mark.parametrize("kind", ["teachers", "datasets"])
def test_concurrent_identical_uploads_resolve_to_one_object(
    upload_app, teacher_zip, audio_zip, monkeypatch, kind
):
    """N identical uploads by one owner at once: each of them passes the dedupe check before any inserts (a
    barrier holds the first N checks until all have looked and found nothing, the race at its worst). One
    insert wins (201), the unique index refuses the others, which answer 200 with the winner: one id, one row,
    one directory, no temporary folder left."""
    app, client, alice = upload_app
    body = teacher_zip if kind == "teachers" else audio_zip
    n = 6
    barrier = threading.Barrier(n, timeout=60)
    checks = itertools.count()
    real = crud.same_upload

    def all_look_first(session, **kwargs):
        found = real(session, **kwargs)
        if next(checks) < n:
            barrier.wait()
        return found

    monkeypatch.setattr(crud, "same_upload", all_look_first)
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda i: post(client, kind, body, alice, name=f"u{i}"), range(n)))
    assert sorted(r.status_code for r in answers) == [200] * (n - 1) + [201], [r.text for r in answers]
    ids = {r.json()["id"] for r in answers}
    assert len(ids) == 1
    (winner,) = [r.json() for r in answers if r.status_code == 201]
    assert all(r.json() == winner for r in answers)
    assert rows_of(app, kind) == list(ids)
    assert stored(app, kind) == list(ids)
    assert leftover_tmp(app) == []


@pytest.mark.parametrize("kind", ["teachers", "datasets"])
def test_an_insert_refused_by_the_unique_index_answers_the_existing_object(
    upload_app, teacher_zip, audio_zip, monkeypatch, kind
):
    """The IntegrityError branch, deterministically: the check misses the first upload (as when both run at
    once), so the second one is extracted and its insert collides; it answers 200 with the first, its own
    extracted directory removed, and no SQL or server path in the answer."""
    app, client, alice = upload_app
    body = teacher_zip if kind == "teachers" else audio_zip
    first = post(client, kind, body, alice, name="first")
    assert first.status_code == 201, first.text
    storage = app.state.services.storage
    checks: list[dict] = []
    removed: list = []
    real_check, real_remove = crud.same_upload, storage.remove

    def blind_once(session, **kwargs):
        checks.append(kwargs)
        return None if len(checks) == 1 else real_check(session, **kwargs)

    def remove(path):
        removed.append(path)
        real_remove(path)

    monkeypatch.setattr(crud, "same_upload", blind_once)
    monkeypatch.setattr(storage, "remove", remove)
    again = post(client, kind, body, alice, name="second")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert len(checks) == 2  # the miss, then the lookup after the refused insert
    losers = [p for p in removed if p.parent == storage.root / kind]
    assert len(losers) == 1 and losers[0].name != first.json()["id"] and not losers[0].exists()
    assert rows_of(app, kind) == [first.json()["id"]]
    assert stored(app, kind) == [first.json()["id"]]
    assert leftover_tmp(app) == []
    for leak in ("INSERT", "UNIQUE", "unique", "IntegrityError", str(storage.root)):
        assert leak not in again.text


@pytest.mark.parametrize("kind", ["teachers", "datasets"])
def test_an_insert_refused_by_a_row_deleted_since_is_a_new_upload(
    upload_app, teacher_zip, audio_zip, monkeypatch, kind
):
    """The insert collided, but the row it collided with is deleted before the lookup that follows: the
    upload is a new one again (201, inserted on the second try), not a 500."""
    app, client, alice = upload_app
    body = teacher_zip if kind == "teachers" else audio_zip
    first = post(client, kind, body, alice).json()
    model = MODELS[kind]
    calls = itertools.count()
    real = crud.same_upload

    def miss_then_delete(session, **kwargs):
        if next(calls) == 0:
            return None  # the check misses the first upload
        with app.state.services.factory() as other:  # the lookup after the collision: deleted just before
            other.execute(delete(model).where(model.id == first["id"]))
            other.commit()
        return real(session, **kwargs)

    monkeypatch.setattr(crud, "same_upload", miss_then_delete)
    again = post(client, kind, body, alice)
    assert again.status_code == 201, again.text
    assert again.json()["id"] != first["id"]
    assert rows_of(app, kind) == [again.json()["id"]]
    assert leftover_tmp(app) == []
