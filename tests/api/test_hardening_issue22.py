"""Regression tests of issue 22: the defects found by attacking the running service and by using the CLI as a
new user would, one test (or a few) each; every one of them fails on the code before its fix."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.errors import AudioError
from core.spec import CompressionSpec
from service.db import upgrade
from service.engine import CoreEngine, FakeEngine
from service.keys import create_key
from service.queue import MemoryEnqueuer
from tests.utils.models import save_tiny_teacher
from tests.utils.servicefixtures import small_settings
from tests.utils.servicekit import make_audio, zip_dir


def post_job(client, headers, teacher, dataset, spec, *, dry_run=False):
    return client.post(
        "/v1/jobs" + ("?dry_run=true" if dry_run else ""),
        json={"teacher_id": teacher["id"], "dataset_id": dataset["id"], "spec": spec},
        headers=headers,
    )


# -- 1, 2: every spec error a worker could find is a 422 at creation (and in the dry run) naming the field ---
OUT_OF_RANGE = [
    ({"seed": 2**64}, "body.spec.seed"),
    ({"macs_reference_seconds": 1e-300}, "body.spec.macs_reference_seconds"),
    ({"device": "cuda:99999999999999999999"}, "body.spec.device"),
]


@pytest.mark.parametrize("spec, field", OUT_OF_RANGE)
def test_out_of_range_spec_values_are_422_naming_the_field(
    client, alice, teacher, dataset, enqueuer, spec, field
):
    for dry_run in (True, False):
        r = post_job(client, alice, teacher, dataset, spec, dry_run=dry_run)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "validation_error" and field in err["fields"] and field in err["message"]
    assert enqueuer.ids == []


def test_the_spec_bounds_hold_for_the_cli_too():
    """The bounds are CompressionSpec's (CLI, API, worker alike); the largest values inside them pass."""
    for bad in (
        {"seed": 2**63},
        {"macs_reference_seconds": 0.5},
        {"device": "cuda:64"},
        {"device": "cuda:٣"},
    ):
        with pytest.raises(ValueError):
            CompressionSpec(**bad)
    spec = CompressionSpec(seed=2**63 - 1, macs_reference_seconds=1.0, device="cuda:63")
    assert (spec.seed, spec.device) == (2**63 - 1, "cuda:63")


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"target_macs": 1}, "target_macs"),  # the fake engine's smallest student: 1% of the teacher's MACs
        ({"macs_sparsity": 0.999}, "macs_sparsity"),
        ({"macs_sparsity": 0.5, "sparsity": 0.999}, "sparsity"),
        ({"macs_sparsity": 0.5, "target_params": 1}, "target_params"),
        ({"target_params": 1}, "target_params"),  # parameters alone: the worker used to be the one to refuse
        ({"sparsity": 0.995}, "sparsity"),
    ],
)
def test_a_target_below_the_smallest_student_is_422_at_creation(
    client, alice, teacher, dataset, enqueuer, spec, field
):
    real = post_job(client, alice, teacher, dataset, spec)
    dry = post_job(client, alice, teacher, dataset, spec, dry_run=True)
    assert real.status_code == dry.status_code == 422, real.text
    assert real.json()["error"] == dry.json()["error"]
    assert real.json()["error"]["code"] == "spec_invalid"
    assert real.json()["error"]["message"].startswith(f"spec.{field}: the target")
    assert "smallest student" in real.json()["error"]["message"] and enqueuer.ids == []
    assert post_job(client, alice, teacher, dataset, {"target_macs": 10**4}).status_code == 202


def test_a_stored_spec_outside_todays_bounds_is_still_shown(client, alice, teacher, dataset, app):
    """A job created before a bound was added (its spec no longer validates) must not fail its owner's
    reads. A guard of fix 2, not one of the issue's defects: it passes before the fix as well."""
    from sqlalchemy import update

    from service.models import Job

    job = post_job(client, alice, teacher, dataset, {"stage1_steps": 3}).json()
    with app.state.services.factory() as session:
        session.execute(
            update(Job).where(Job.id == job["id"]).values(spec={"seed": 2**64, "stage1_steps": 3})
        )
        session.commit()
    r = client.get("/v1/jobs", headers=alice)
    assert r.status_code == 200 and r.json()["items"][0]["spec"]["seed"] == 2**64
    r = client.get(f"/v1/jobs/{job['id']}", headers=alice)
    assert r.status_code == 200 and r.json()["spec"]["seed"] == 2**64


def test_with_the_real_engine_creation_and_dry_run_refuse_what_a_run_would(tmp_path: Path) -> None:
    """The defects as found, on the real engine: the dry run answered 500 for the seed and the MACs reference
    (torch overflowed; no frame to count), creation accepted all four (the worker then failed, or trained
    towards a size no student has)."""
    settings = small_settings(tmp_path / "home", engine="service.engine:CoreEngine")
    upgrade(settings.database_url)
    app = create_app(settings, enqueuer=MemoryEnqueuer(), engine=CoreEngine(), run_reaper=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        with app.state.services.factory() as session:
            alice = {"Authorization": f"Bearer {create_key(session, owner_name='alice').key}"}
            session.commit()
        zipped = {**alice, "Content-Type": "application/zip"}
        teacher = client.post(
            "/v1/teachers", content=zip_dir(save_tiny_teacher(tmp_path / "teacher")), headers=zipped
        ).json()
        dataset = client.post(
            "/v1/datasets", content=zip_dir(make_audio(tmp_path / "audio", n=2, seconds=1.5)), headers=zipped
        ).json()
        for spec, code, where in (
            ({"seed": 2**64}, "validation_error", "body.spec.seed"),
            ({"macs_reference_seconds": 1e-300}, "validation_error", "body.spec.macs_reference_seconds"),
            ({"device": "cuda:99999999999999999999"}, "validation_error", "body.spec.device"),
            ({"target_macs": 1}, "spec_invalid", "spec.target_macs: the target, 1 MACs per audio second"),
        ):
            for dry_run in (True, False):
                r = post_job(client, alice, teacher, dataset, spec, dry_run=dry_run)
                assert r.status_code == 422, (spec, dry_run, r.text)
                assert r.json()["error"]["code"] == code and where in r.json()["error"]["message"]
        teacher_macs = app.state.services.get_engine().teacher_macs(
            settings.storage / "teachers" / teacher["id"], 10.0
        )
        r = post_job(client, alice, teacher, dataset, {"target_macs": int(teacher_macs / 4)})
        assert r.status_code == 202, r.text


# -- 7: pausing a job that is already paused (or pausing) is 409 job_not_pausable ----------------------------
def test_pausing_a_paused_or_pausing_job_is_409(client, alice, teacher, dataset, app):
    from sqlalchemy import update

    from service.models import Job

    job = post_job(client, alice, teacher, dataset, {"stage1_steps": 3}).json()
    assert client.post(f"/v1/jobs/{job['id']}/pause", headers=alice).json()["status"] == "paused"
    r = client.post(f"/v1/jobs/{job['id']}/pause", headers=alice)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_pausable", r.text
    assert "is paused" in r.json()["error"]["message"]
    with app.state.services.factory() as session:  # a running job asked to pause once already
        session.execute(update(Job).where(Job.id == job["id"]).values(status="pausing"))
        session.commit()
    r = client.post(f"/v1/jobs/{job['id']}/pause", headers=alice)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_pausable", r.text


# -- 6: If-Match on a download (RFC 9110 §13.1.1): 412 unless it names the current representation ------------
def test_if_match_on_an_artifact_is_412_unless_it_matches(client, alice, teacher, dataset, drain):
    job = post_job(client, alice, teacher, dataset, {"stage1_steps": 3}).json()
    assert drain() == ["succeeded"]
    url = f"/v1/jobs/{job['id']}/artifacts/report.json"
    full = client.get(url, headers=alice)
    etag = full.headers["etag"]
    for header in ('"another-version"', f"W/{etag}", '"x", "y"'):  # W/: the comparison is strong
        for method in (client.get, client.head):
            r = method(url, headers={**alice, "If-Match": header})
            assert r.status_code == 412, (header, r.status_code)
        r = client.get(url, headers={**alice, "If-Match": header, "Range": "bytes=0-3"})
        assert r.status_code == 412 and r.json()["error"]["code"] == "precondition_failed"
        assert r.headers["etag"] == etag
    for header in (etag, "*", f'"x", {etag}'):
        r = client.get(url, headers={**alice, "If-Match": header})
        assert r.status_code == 200 and r.content == full.content, header
    r = client.get(url, headers={**alice, "If-Match": etag, "Range": "bytes=0-3"})
    assert r.status_code == 206 and r.content == full.content[:4]


def test_if_match_on_a_dashboard_file_is_412_unless_it_matches(client):
    """The other download with an ETag: the dashboard's static files."""
    full = client.get("/ui/index.html")
    assert full.status_code == 200 and full.headers.get("etag")
    r = client.get("/ui/index.html", headers={"If-Match": '"another-version"'})
    assert r.status_code == 412 and r.json()["error"]["code"] == "precondition_failed"
    assert "content-security-policy" in r.headers
    for header in (full.headers["etag"], "*"):
        r = client.get("/ui/index.html", headers={"If-Match": header})
        assert r.status_code == 200 and r.content == full.content


# -- 8: server directories: refused until the operator names roots; errors speak of the directory -----------
def test_server_directories_are_refused_until_roots_are_configured(client, keys, tmp_path):
    src = make_audio(tmp_path / "srv" / "audio", n=2)
    for path in (str(src), "/proc"):
        r = client.post("/v1/datasets", json={"path": path}, headers=keys["root"])
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["code"] == "server_paths_disabled" and "SKILLKD_SERVER_DATASET_ROOTS" in err["message"]
    assert client.get("/v1/datasets", headers=keys["root"]).json()["items"] == []


class PathNamingEngine(FakeEngine):
    """Refuses audio as the real engine does, naming the directory it scanned."""

    def scan_audio(self, source: Path):
        raise AudioError(f"no usable audio in {source}: 2 files skipped (not_audio)")


def test_registered_directories_stay_under_the_roots_and_errors_name_the_directory(settings, tmp_path):
    root = tmp_path / "srv"
    (root / "text").mkdir(parents=True)
    (root / "text" / "a.txt").write_text("hello")
    (root / "escape").symlink_to("/proc", target_is_directory=True)
    settings.server_dataset_roots = [root]
    app = create_app(settings, enqueuer=MemoryEnqueuer(), engine=PathNamingEngine(), run_reaper=False)
    with TestClient(app) as client:
        with app.state.services.factory() as session:
            admin = {"Authorization": f"Bearer {create_key(session, owner_name='root', admin=True).key}"}
            session.commit()
        for outside in ("/proc", str(root / "escape"), str(root / ".." / "srv2")):
            r = client.post("/v1/datasets", json={"path": outside}, headers=admin)
            assert r.status_code == 422 and r.json()["error"]["code"] == "dataset_path_invalid", outside
        r = client.post("/v1/datasets", json={"path": str(root / "text")}, headers=admin)
        assert r.status_code == 422 and r.json()["error"]["code"] == "audio_invalid"
        message = r.json()["error"]["message"]
        assert message.startswith("no usable audio in the registered directory: "), message
        assert "archive" not in message and str(tmp_path) not in message


# -- 5: a read on a database connection the server dropped is repeated on a new one (else 503, never 500) ----
class DroppedConnections:
    """Makes the database answer like one whose connections are being terminated: the next `times`
    statements matching `pattern` fail as a lost connection (SQLAlchemy invalidates it: OperationalError with
    `connection_invalidated`), then statements run again. SQLite stands in for PostgreSQL here."""

    def __init__(self, engine, monkeypatch) -> None:
        self.pattern, self.plan, self.failed = "", [], 0
        dialect = engine.dialect
        execute, no_params, is_disconnect = (
            dialect.do_execute,
            dialect.do_execute_no_params,
            dialect.is_disconnect,
        )

        def check(statement: str) -> None:
            if self.plan and self.pattern in statement and self.plan.pop(0):
                self.failed += 1
                raise sqlite3.OperationalError("server closed the connection unexpectedly (test)")

        def do_execute(cursor, statement, parameters, context=None):
            check(statement)
            return execute(cursor, statement, parameters, context)

        def do_execute_no_params(cursor, statement, context=None):
            check(statement)
            return no_params(cursor, statement, context)

        monkeypatch.setattr(dialect, "do_execute", do_execute)
        monkeypatch.setattr(dialect, "do_execute_no_params", do_execute_no_params)
        monkeypatch.setattr(
            dialect, "is_disconnect", lambda e, c, cur: "(test)" in str(e) or is_disconnect(e, c, cur)
        )

    def drop(self, pattern: str, times: int = 1, plan: list[bool] | None = None) -> None:
        """The next `times` statements matching `pattern` fail; with `plan`, statement i fails if plan[i]."""
        self.pattern, self.plan, self.failed = pattern, list(plan or [True] * times), 0


@pytest.fixture
def dropped(app, monkeypatch) -> DroppedConnections:
    return DroppedConnections(app.state.services.factory.kw["bind"], monkeypatch)


def test_reads_are_repeated_on_a_dropped_connection(client, alice, teacher, dataset, drain, dropped):
    job = post_job(client, alice, teacher, dataset, {"stage1_steps": 3}).json()
    assert drain() == ["succeeded"]
    job_url = f"/v1/jobs/{job['id']}"
    for url, table in (
        ("/v1/teachers", "FROM teachers"),
        (f"/v1/teachers/{teacher['id']}", "FROM teachers"),
        ("/v1/datasets", "FROM datasets"),
        ("/v1/jobs", "FROM jobs"),
        (job_url, "FROM jobs"),
        (f"{job_url}/events", "FROM job_events"),
        (f"{job_url}/artifacts", "FROM artifacts"),
        (f"{job_url}/artifacts/report.json", "FROM artifacts"),
    ):
        dropped.drop(table)
        r = client.get(url, headers=alice)
        assert r.status_code == 200 and dropped.failed == 1, (url, r.status_code, r.text)
    dropped.drop("FROM api_keys")  # the key lookup of an owner not cached yet
    client.app.state.services.owners = type(client.app.state.services.owners)(5.0)
    assert client.get("/v1/teachers", headers=alice).status_code == 200 and dropped.failed == 1


def test_the_event_stream_outlives_a_dropped_connection(client, alice, teacher, dataset, drain, dropped):
    job = post_job(client, alice, teacher, dataset, {"stage1_steps": 3}).json()
    assert drain() == ["succeeded"]
    # the first page fails (the request runs again), then the stream's first poll: it polls again
    dropped.drop("FROM job_events", plan=[True, False, True])
    r = client.get(f"/v1/jobs/{job['id']}/events", headers={**alice, "Accept": "text/event-stream"})
    assert r.status_code == 200 and dropped.failed == 2
    assert "event: end" in r.text and '"status": "succeeded"' in r.text


def test_a_read_while_the_database_stays_unreachable_is_503(client, alice, teacher, dropped):
    dropped.drop("FROM teachers", times=10)
    r = client.get("/v1/teachers", headers=alice)
    assert r.status_code == 503 and r.json()["error"]["code"] == "database_unavailable", r.text
    assert r.headers["retry-after"] == "1" and "SELECT" not in r.text
    assert client.get("/v1/teachers", headers=alice).status_code == 503
    dropped.drop("")
    assert client.get("/v1/teachers", headers=alice).status_code == 200


# -- 11: the CLI fails in one line with its exit code: service down, bad input found by the service ---------
def test_with_the_service_down_client_commands_fail_in_one_line(monkeypatch):
    from click.testing import CliRunner

    from cli import skillkd
    from tests.utils.servicekit import free_port

    monkeypatch.setenv("SKILLKD_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("SKILLKD_API_KEY", "skd_test")
    for args in (["status", "job_x"], ["status"], ["logs", "job_x"], ["logs", "--follow", "job_x"]):
        result = CliRunner().invoke(skillkd, args)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (args, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error [service_unreachable]: cannot reach"), lines
        assert "SKILLKD_URL" in lines[0] and "Traceback" not in result.output


def test_input_the_service_refuses_exits_2(cli_as_alice, tmp_path):
    """README: exit 2 for bad input (teacher, audio, spec), also when the service is the one that finds it."""
    from click.testing import CliRunner

    from cli import skillkd
    from tests.utils.servicekit import make_teacher

    teacher, audio = make_teacher(tmp_path / "teacher"), make_audio(tmp_path / "audio")
    result = CliRunner().invoke(skillkd, ["submit", str(teacher), str(audio), "--target-params", "1G"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.strip().splitlines()[-1].startswith("error [spec_invalid]: spec.target_params")
    (teacher / "config.json").write_text("{}")
    result = CliRunner().invoke(skillkd, ["submit", str(teacher), str(audio)])
    assert result.exit_code == 2 and "error [teacher_invalid]" in result.stderr, result.output
    result = CliRunner().invoke(skillkd, ["cancel", "job_" + "0" * 28])  # not input: another failure
    assert result.exit_code == 1 and "error [not_found]" in result.stderr, result.output


def test_compress_names_a_teacher_file_as_not_a_directory(tmp_path):
    from click.testing import CliRunner

    from cli import skillkd

    readme = Path(__file__).resolve().parents[2] / "README.md"
    audio = make_audio(tmp_path / "audio")
    out = ["--out", str(tmp_path / "out")]
    for args in (
        ["compress", str(readme), str(audio), "--dry-run"],
        ["analyze", str(readme), str(audio), *out],
    ):
        result = CliRunner().invoke(skillkd, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert f"error [teacher_invalid]: teacher {readme} is a file, not a directory" in result.stderr
        assert "does not exist" not in result.stderr
