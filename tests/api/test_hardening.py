"""Regression tests of issue 11 §2: each defect found by attacking the running service, one test each (every
one of them fails on the code before the fix)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import threading
import time
import wave
import zipfile
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import insert

from api.app import create_app
from api.archives import ArchiveLimits, ArchiveTooLarge, extract
from api.http import uvicorn_options
from core.errors import TeacherError
from service.engine import FakeEngine
from service.keys import create_key
from service.models import JobEvent


def create(client, headers, teacher, dataset, spec=None):
    return client.post(
        "/v1/jobs",
        json={
            "teacher_id": teacher["id"],
            "dataset_id": dataset["id"],
            "spec": spec if spec is not None else {"stage1_steps": 3},
        },
        headers=headers,
    )


# -- every spec error a worker could find is found at POST /v1/jobs ------------------------------------------
def test_overlapping_explicit_clusters_are_422_naming_the_field(client, alice, teacher, dataset, enqueuer):
    r = create(client, alice, teacher, dataset, {"clusters": [[0, 1], [1, 2]]})
    assert r.status_code == 422, r.text
    assert "body.spec.clusters" in r.json()["error"]["fields"] and "overlap" in r.json()["error"]["message"]
    assert enqueuer.ids == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("stage1_steps", 10**12),
        ("stage2_steps", 10**12),
        ("calibration_utterances", 10**9),
        ("batch_seconds", 1e9),
    ],
)
def test_spec_counts_have_upper_bounds(client, alice, teacher, dataset, enqueuer, field, value):
    r = create(client, alice, teacher, dataset, {field: value})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "spec_invalid" and f"spec.{field}" in r.json()["error"]["message"]
    assert enqueuer.ids == []


def test_target_macs_not_below_the_teachers_is_422_at_post(client, alice, teacher, dataset, enqueuer):
    """The teacher's MACs depend on the spec's reference length, so they are counted at POST, not stored."""
    r = create(client, alice, teacher, dataset, {"target_macs": "1000T"})
    assert r.status_code == 422, r.text  # '1000T' is not a count the spec reads
    r = create(client, alice, teacher, dataset, {"target_macs": 10**15})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "spec_invalid" and "spec.target_macs" in r.json()["error"]["message"]
    assert "not smaller" in r.json()["error"]["message"] and enqueuer.ids == []
    assert create(client, alice, teacher, dataset, {"target_macs": 10**4}).status_code == 202


# -- 64-bit event ids and counters; bounded cursors --------------------------------------------------------
def test_event_cursor_and_last_event_id_are_bounded_and_validated(client, alice, teacher, dataset):
    job = create(client, alice, teacher, dataset).json()
    url = f"/v1/jobs/{job['id']}/events"
    assert client.get(url, params={"after": 2**63}, headers=alice).status_code == 422
    for bad in ("abc", "-1", str(2**63)):
        r = client.get(url, headers={**alice, "Accept": "text/event-stream", "Last-Event-ID": bad})
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", (bad, r.text)


@pytest.mark.services
def test_postgres_event_ids_and_steps_beyond_32_bits(postgres_app, tmp_path):
    from tests.utils.servicekit import make_audio, make_teacher, zip_dir

    client, alice, factory = postgres_app.client, postgres_app.alice, postgres_app.app.state.services.factory
    zip_headers = {**alice, "Content-Type": "application/zip"}
    teacher = client.post("/v1/teachers", content=zip_dir(make_teacher(tmp_path / "t")), headers=zip_headers)
    dataset = client.post("/v1/datasets", content=zip_dir(make_audio(tmp_path / "a")), headers=zip_headers)
    job = create(client, alice, teacher.json(), dataset.json()).json()
    with factory() as session:  # a long-lived service's event ids and a long job's step counts
        session.execute(
            insert(JobEvent).values(
                id=3_000_000_000,
                job_id=job["id"],
                kind="progress",
                stage="distill_prune",
                step=10**12,
                total=2 * 10**12,
                metrics={},
                message="",
            )
        )
        session.commit()
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=alice)  # terminal: the stream ends
    url_events = f"/v1/jobs/{job['id']}/events"
    page = client.get(url_events, params={"after": 2_999_999_999}, headers=alice)
    assert page.status_code == 200, page.text
    assert page.json()["items"][0]["step"] == 10**12
    assert client.get(url_events, params={"after": 3_000_000_000}, headers=alice).status_code == 200
    with client.stream(
        "GET", url_events, headers={**alice, "Accept": "text/event-stream", "Last-Event-ID": "3000000000"}
    ) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert "event: end" in text and "id: 3000000000" not in text


# -- archive guard
# --------------------------------------------------------------------------------------------
NUL_URLS = [
    "/v1/jobs/%00%27%3B--",
    "/v1/jobs/%00/events",
    "/v1/teachers/%00",
    "/v1/datasets/%00",
    "/v1/jobs?after=%00",
]


def _assert_nul_urls_are_400(client, headers) -> None:
    for url in NUL_URLS:
        r = client.get(url, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", (url, r.text)
        assert "NUL" in r.json()["error"]["message"]


def test_a_nul_character_in_the_url_is_400(client, alice):
    _assert_nul_urls_are_400(client, alice)


@pytest.mark.services
def test_postgres_a_nul_character_in_the_url_is_400_not_a_database_error(postgres_app, caplog):
    """PostgreSQL text cannot hold a NUL: every id route answered 500 (DataError) for /v1/jobs/%00."""
    _assert_nul_urls_are_400(postgres_app.client, postgres_app.alice)
    assert "unhandled error" not in caplog.text


def silent_wav_zip(seconds: float = 5.0) -> bytes:
    raw = io.BytesIO()
    with wave.open(raw, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * int(16000 * seconds))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("silence.wav", raw.getvalue())
    return buf.getvalue()


def test_a_small_archive_of_silence_is_not_a_bomb(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(silent_wav_zip())
    assert archive.stat().st_size * 200 < 160_000  # above the ratio limit, but small
    limits = ArchiveLimits(max_entries=10, max_total_bytes=10**9, max_ratio=200.0)
    assert extract(archive, tmp_path / "x", limits).total_bytes == 160_044


def test_a_bomb_is_refused_on_its_declared_sizes_before_anything_is_written(tmp_path):
    archive = tmp_path / "bomb.zip"
    with (
        zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open("zeros.bin", "w", force_zip64=True) as f,
    ):
        chunk = b"\x00" * (1 << 20)
        for _ in range(96):  # 96 MiB of zeros, ~100 KB compressed
            f.write(chunk)
    dest = tmp_path / "x"
    limits = ArchiveLimits(max_entries=10, max_total_bytes=10**12, max_ratio=200.0, ratio_floor_bytes=1 << 20)
    with pytest.raises(ArchiveTooLarge, match="declares"):
        extract(archive, dest, limits)
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) == 0
    small = ArchiveLimits(max_entries=10, max_total_bytes=10 << 20, max_ratio=10**6)
    with pytest.raises(ArchiveTooLarge, match="declares more than"):
        extract(archive, tmp_path / "y", small)
    assert sum(p.stat().st_size for p in (tmp_path / "y").rglob("*") if p.is_file()) == 0


# -- error messages: no server paths, no SQL -----------------------------------------------------------------
class PathLeakingEngine(FakeEngine):
    """Raises what the real engine raised for a teacher archive without config.json: a message with the
    path."""

    def inspect_teacher(self, path: Path):
        raise TeacherError(f"config.json not found in {path}")

    def run(self, *args, **kwargs):
        raise RuntimeError(
            "(psycopg.errors.NumericValueOutOfRange) integer out of range\n"
            "[SQL: INSERT INTO job_events (job_id, step) VALUES (%(job_id)s, %(step)s)]"
        )


def test_errors_show_no_server_paths_and_no_sql(settings, enqueuer, tmp_path, caplog):
    from fastapi.testclient import TestClient

    from tests.utils.servicekit import make_audio, make_teacher, zip_dir
    from worker.runner import JobRunner

    engine = PathLeakingEngine(steps=3)
    app = create_app(settings, enqueuer=enqueuer, engine=engine, run_reaper=False)
    with TestClient(app) as client, app.state.services.factory() as session:
        alice = {"Authorization": f"Bearer {create_key(session, owner_name='alice').key}"}
        session.commit()
        r = client.post(
            "/v1/teachers",
            content=zip_dir(make_teacher(tmp_path / "t")),
            headers={**alice, "Content-Type": "application/zip"},
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "teacher_invalid"
        message = r.json()["error"]["message"]
        assert "/" not in message and str(settings.storage) not in message, message
        # a job whose engine fails with a database error: the client gets the code, the log the details
        app.state.services.engine = FakeEngine(steps=3)
        zh = {**alice, "Content-Type": "application/zip"}
        teacher = client.post(
            "/v1/teachers", content=zip_dir(make_teacher(tmp_path / "t2")), headers=zh
        ).json()
        dataset = client.post("/v1/datasets", content=zip_dir(make_audio(tmp_path / "a")), headers=zh).json()
        job = create(client, alice, teacher, dataset).json()
        s = app.state.services
        runner = JobRunner(
            factory=s.factory,
            storage=s.storage,
            engine=engine,
            enqueuer=enqueuer,
            settings=s.settings,
            worker="w1",
        )
        with caplog.at_level(logging.ERROR):
            assert runner.run(job["id"]) == "failed: internal"
        error = client.get(f"/v1/jobs/{job['id']}", headers=alice).json()["error"]
        assert error["code"] == "internal"
        assert "SQL" not in error["message"] and "psycopg" not in error["message"]
        assert "INSERT INTO job_events" in caplog.text


# -- the HTTP layer: disconnects, JSON for every error, keep-alive after a 500 ----------------------------
def test_client_disconnect_mid_upload_is_499_without_a_traceback(app, keys, caplog):
    import asyncio

    headers = [
        (b"authorization", keys["alice"]["Authorization"].encode()),
        (b"content-type", b"application/zip"),
        (b"content-length", b"100000"),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/teachers",
        "raw_path": b"/v1/teachers",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    messages = [
        {"type": "http.request", "body": b"PK\x03\x04" + b"x" * 1000, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    async def lifespan_and_call():
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    with caplog.at_level(logging.INFO):
        asyncio.run(lifespan_and_call())
    assert not [m for m in sent if m["type"] == "http.response.start" and m["status"] >= 500]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text
    metrics = app.state.metrics.registry
    assert (
        metrics.get_sample_value(
            "skillkd_http_requests_total", {"method": "POST", "route": "/v1/teachers", "status": "499"}
        )
        == 1
    )
    assert (
        metrics.get_sample_value(
            "skillkd_http_requests_total", {"method": "POST", "route": "/v1/teachers", "status": "500"}
        )
        is None
    )
    tmp = app.state.services.settings.storage / "tmp"
    assert not list(tmp.iterdir())


@contextlib.contextmanager
def live_server(app, http: str = "auto"):
    """The app behind a real uvicorn (the service's protocol options) on a free port, in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", **uvicorn_options(http))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def http_exchange(conn: socket.socket, request: bytes) -> bytes:
    """Send one request on `conn` and read one whole response (Content-Length framed)."""
    conn.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


PROTOCOLS = pytest.mark.parametrize("http", ["auto", "h11"])  # httptools where installed, and h11


@PROTOCOLS
def test_oversized_authorization_header_gets_the_json_envelope(settings, enqueuer, http):
    app = create_app(settings, enqueuer=enqueuer, engine=FakeEngine(steps=3), run_reaper=False)
    with live_server(app, http) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        response = http_exchange(
            conn, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 200_000 + b"\r\n\r\n"
        )
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"application/json" in head
    assert json.loads(body)["error"]["code"] == "bad_request"


class ExplodingEngine(FakeEngine):
    def inspect_teacher(self, path: Path):
        raise RuntimeError("a bug")


@PROTOCOLS
def test_keep_alive_survives_a_500(settings, enqueuer, http):
    app = create_app(settings, enqueuer=enqueuer, engine=ExplodingEngine(steps=3), run_reaper=False)
    with app.state.services.factory() as session:
        key = create_key(session, owner_name="alice").key
        session.commit()
    archive = silent_wav_zip(0.1)
    upload = (
        f"POST /v1/teachers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/zip\r\nContent-Length: {len(archive)}\r\n\r\n"
    ).encode() + archive
    get = f"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    with live_server(app, http) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        first = http_exchange(conn, upload)
        assert first.startswith(b"HTTP/1.1 500"), first[:200]
        assert json.loads(first.partition(b"\r\n\r\n")[2])["error"]["code"] == "internal"
        assert b"connection: close" not in first.lower()
        second = http_exchange(conn, get)  # the same connection still serves
        assert second.startswith(b"HTTP/1.1 200"), second[:200]


class LabelCountingEngine(FakeEngine):
    """Reports, like CoreEngine, how many items carry phone labels."""

    labelled = 0

    def scan_audio(self, source: Path):
        return {**super().scan_audio(source), "phone_labelled": self.labelled}


def _with_comment(archive: bytes) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO(archive)
    with zipfile.ZipFile(buffer, "a") as z:
        z.comment = b"another upload"
    return buffer.getvalue()


def test_evaluate_without_phone_labels_is_422_at_post(client, alice, teacher, app, audio_zip, enqueuer):
    engine = LabelCountingEngine(steps=3)
    app.state.services.engine = engine
    headers = {**alice, "Content-Type": "application/zip"}
    unlabelled = client.post("/v1/datasets", content=audio_zip, headers=headers).json()
    r = create(client, alice, teacher, unlabelled, {"evaluate": True})
    assert r.status_code == 422 and "spec.evaluate" in r.json()["error"]["message"], r.text
    engine.labelled = 3
    # other bytes (an archive comment), so not the same upload as the unlabelled one (issue 22 item 9)
    labelled = client.post("/v1/datasets", content=_with_comment(audio_zip), headers=headers).json()
    assert create(client, alice, teacher, labelled, {"evaluate": True}).status_code == 202
    assert create(client, alice, teacher, unlabelled, {"evaluate": False}).status_code == 202


# -- artifacts per RFC 9110
# -----------------------------------------------------------------------------------
def test_artifact_ranges_conditionals_and_head_follow_rfc_9110(client, alice, teacher, dataset, drain):
    job = create(client, alice, teacher, dataset).json()
    assert drain() == ["succeeded"]
    url = f"/v1/jobs/{job['id']}/artifacts/model"
    full = client.get(url, headers=alice)
    assert full.status_code == 200 and full.headers["accept-ranges"] == "bytes"
    size, etag = len(full.content), full.headers["etag"]
    for ignored in (
        "bytes=5-2",
        "bytes=abc",
        "items=0-9",
        "bytes=0-1,4-5",
    ):  # invalid or unsupported: ignored
        r = client.get(url, headers={**alice, "Range": ignored})
        assert r.status_code == 200 and r.content == full.content, ignored
    r = client.get(url, headers={**alice, "Range": "bytes=-4"})
    assert r.status_code == 206 and r.content == full.content[-4:]
    assert r.headers["content-range"] == f"bytes {size - 4}-{size - 1}/{size}"
    r = client.get(url, headers={**alice, "Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    assert r.json()["error"]["code"] == "range_not_satisfiable"
    assert client.get(url, headers={**alice, "If-None-Match": "*"}).status_code == 304
    assert client.get(url, headers={**alice, "If-None-Match": f'"x", W/{etag}'}).status_code == 304
    r = client.get(url, headers={**alice, "Range": "bytes=0-3", "If-Range": '"another-version"'})
    assert r.status_code == 200 and r.content == full.content
    head = client.head(url, headers=alice)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(size) and head.headers["etag"] == etag
    assert client.head(f"/v1/jobs/{job['id']}/artifacts/nope", headers=alice).status_code == 404
