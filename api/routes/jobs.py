"""/v1/jobs: create (202, Idempotency-Key), list (cursor), get, events (paginated or SSE), cancel, pause,
resume, delete, artifacts (Range, ETag / If-Match / If-None-Match, HEAD, X-Content-SHA256). Data access is
service.jobstore's; what a creation checks, api.job_checks'; the RFC 9110 header rules, api.ranges'."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from api.deps import CurrentOwner, Services, ServicesDep, SessionDep
from api.dropped_connections import dropped_connection
from api.errors import ApiError, Conflict, NotFound, TooManyRequests, UnprocessableInput
from api.job_checks import check_job, check_references
from api.ranges import (
    UNSATISFIABLE,
    byte_range,
    file_chunks,
    precondition_failed,
    range_applies,
    strong_match,
    weak_match,
)
from api.routes.common import ERRORS, MAX_EVENT_ID, MAX_PAGE
from api.schemas import (
    ArtifactList,
    ArtifactPublic,
    JobCreate,
    JobEventList,
    JobEventPublic,
    JobList,
    JobPublic,
    JobStatus,
)
from api.uploads import input_error
from core.errors import SkillkdError
from service import crud, jobstore
from service.models import TERMINAL_STATUSES, Job, JobEvent, Owner

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERRORS)


def owned_job(session: Session, owner: Owner, job_id: str) -> Job:
    job = crud.owned(session, model=Job, row_id=job_id, owner_id=owner.id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def _same_request(job: Job, body: JobCreate) -> bool:
    return (job.teacher_id, job.dataset_id, job.calibration_dataset_id, job.spec) == (
        body.teacher_id,
        body.dataset_id,
        body.calibration_dataset_id,
        body.spec.model_dump(mode="json"),
    )


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    summary="Create a compression job",
    responses={
        200: {
            "description": "dry_run=true: the estimate; nothing was created",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
def create_job(
    body: JobCreate,
    response: Response,
    services: ServicesDep,
    session: SessionDep,
    owner: CurrentOwner,
    idempotency_key: Annotated[str | None, Header(max_length=200, pattern=r"^[\x21-\x7e]+$")] = None,
    dry_run: Annotated[
        bool,
        Query(
            description="check the job as a run would and estimate its sizes, work and "
            "time (a few timed steps on this host); create nothing"
        ),
    ] = False,
) -> Any:
    if dry_run:
        return _dry_run(body, services, session, owner)
    if idempotency_key:
        existing = jobstore.by_idempotency_key(session, owner_id=owner.id, key=idempotency_key)
        if existing is not None:
            return _replay(existing, body, response)
    check_job(body, services, session, owner)
    _check_room(services, session, owner)
    try:
        job = jobstore.create_job(
            session,
            owner_id=owner.id,
            teacher_id=body.teacher_id,
            dataset_id=body.dataset_id,
            calibration_dataset_id=body.calibration_dataset_id,
            spec=body.spec.model_dump(mode="json"),
            idempotency_key=idempotency_key,
        )
    except IntegrityError:
        existing = (
            jobstore.by_idempotency_key(session, owner_id=owner.id, key=idempotency_key)
            if idempotency_key
            else None
        )
        if existing is None:
            check_references(session, owner, body)  # the teacher or a dataset was deleted meanwhile: 422
            raise
        return _replay(existing, body, response)
    _enqueue(services, job.id)
    return JobPublic.from_row(job)


def _dry_run(body: JobCreate, services: Services, session: Session, owner: Owner) -> JSONResponse:
    """POST /v1/jobs?dry_run=true: the same checks as a job creation, then the engine's estimate
    (core.estimate); no row, no file, no queue message."""
    teacher = check_job(body, services, session, owner)

    def audio_path(dataset_id: str) -> Path:
        return crud.dataset_path(session, storage=services.storage, dataset_id=dataset_id)

    calibration = audio_path(body.calibration_dataset_id) if body.calibration_dataset_id else None
    try:
        result = services.get_engine().estimate(
            body.spec,
            services.storage.teacher_dir(teacher.id),
            audio_path(body.dataset_id),
            calibration_audio=calibration,
        )
    except SkillkdError as exc:
        raise input_error(exc, services.storage.root) from exc
    result.get("teacher", {}).pop("path", None)  # a server path
    return JSONResponse({**result, "teacher_id": teacher.id, "dataset_id": body.dataset_id}, status_code=200)


def _check_room(services: Services, session: Session, owner: Owner) -> None:
    """429 when the owner already has max_jobs_in_flight jobs queued or running."""
    limit = services.settings.max_jobs_in_flight
    if jobstore.count_in_flight(session, owner_id=owner.id) >= limit:
        raise TooManyRequests(f"{limit} jobs already queued or running; wait for one to finish or cancel one")


def _enqueue(services: Services, job_id: str) -> None:
    try:  # after COMMIT: a worker never sees an id whose row is not there
        services.enqueuer.enqueue(job_id)
    except Exception as exc:  # the row is queued; the reaper re-enqueues it once the broker is back
        log.warning("enqueue of %s failed (%s); the reaper will retry", job_id, exc)


def _replay(existing: Job, body: JobCreate, response: Response) -> JobPublic:
    if not _same_request(existing, body):
        raise Conflict(
            "Idempotency-Key was already used with a different request", code="idempotency_key_reused"
        )
    response.headers["Idempotent-Replayed"] = "true"
    return JobPublic.from_row(existing)


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    owner: CurrentOwner,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    after: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page")] = None,
) -> JobList:
    rows, cursor = crud.page(
        session,
        model=Job,
        owner_id=owner.id,
        limit=limit,
        after=after,
        where=[Job.status == status] if status else None,
    )
    return JobList(items=[JobPublic.from_row(r) for r in rows], next_cursor=cursor)


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, services: ServicesDep, owner: CurrentOwner) -> Response:
    # The hot path of clients polling a job: no thread-pool call (its hop cost 0.8 ms of CPU per request, more
    # than everything else the route does; issue 11). PostgreSQL: the SELECT is awaited (asyncio engine).
    # SQLite: the SELECT runs on the event loop: a primary-key lookup of ~80 µs in a database in WAL mode,
    # where a reader never waits for a writer (api.app.reads_engine). Serialized here by pydantic's encoder: a
    # returned model would be validated again and encoded by FastAPI (`response_model` still documents the
    # body).
    if isinstance(services.reads, AsyncEngine):
        row = await jobstore.owned_job_row_async(services.reads, job_id=job_id, owner_id=owner.id)
    else:
        row = jobstore.owned_job_row(services.reads, job_id=job_id, owner_id=owner.id)
    if row is None:
        raise NotFound(f"job {job_id} not found")
    return Response(JobPublic.from_row(row).model_dump_json(), media_type="application/json")


@router.get(
    "/{job_id}/events",
    response_model=JobEventList,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    summary="Job events: a page of JSON, or Server-Sent Events with `Accept: text/event-stream`",
)
async def job_events(
    job_id: str,
    request: Request,
    services: ServicesDep,
    owner: CurrentOwner,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="id of the last event seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[
        str | None, Header(max_length=20, description="SSE resume point (an event id)")
    ] = None,
):
    start = after
    if last_event_id is not None and last_event_id.strip():
        value = last_event_id.strip()
        if not value.isdigit() or int(value) > MAX_EVENT_ID:
            raise UnprocessableInput(
                f"header.last-event-id: expected an event id between 0 and {MAX_EVENT_ID}",
                code="validation_error",
            )
        start = int(value)

    def first_page() -> list[JobEvent]:
        with services.factory() as session:
            owned_job(session, owner, job_id)
            return jobstore.events_page(session, job_id=job_id, after=start, limit=limit)

    rows = await run_in_threadpool(first_page)  # 404 before a stream starts
    if "text/event-stream" not in request.headers.get("accept", ""):
        return JobEventList(
            items=[JobEventPublic.model_validate(r) for r in rows],
            next_cursor=rows[-1].id if len(rows) == limit else None,
        )
    return StreamingResponse(
        _sse(request, services, job_id, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(request: Request, services: Services, job_id: str, last: int, poll_s: float = 0.5):
    def poll(after: int) -> tuple[list[JobEvent], str | None]:
        with services.factory() as session:
            return (
                jobstore.events_page(session, job_id=job_id, after=after, limit=500),
                jobstore.status_of(session, job_id=job_id),
            )

    quiet = 0.0
    while True:
        try:
            rows, status = await run_in_threadpool(poll, last)
        except Exception as exc:  # the answer has started: it cannot be repeated, the poll can
            if not dropped_connection(exc):
                raise
            log.warning("events of %s: database connection lost, polling again", job_id)
            rows, status = [], ""
        for row in rows:
            data = JobEventPublic.model_validate(row).model_dump_json()
            yield f"id: {row.id}\nevent: {row.kind}\ndata: {data}\n\n"
            last = row.id
        if not rows and (status is None or status in TERMINAL_STATUSES or status == "paused"):  # "": unknown
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if rows:
            quiet = 0.0
        else:
            quiet += poll_s
            if quiet >= 15:
                quiet = 0.0
                yield ": keep-alive\n\n"
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll_s)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    summary="Cancel: a queued or paused job ends cancelled at once; a running one becomes cancelling",
)
def cancel_job(job_id: str, services: ServicesDep, session: SessionDep, owner: CurrentOwner) -> JobPublic:
    job = owned_job(session, owner, job_id)
    reached = jobstore.cancel(session, job=job)
    if reached == "cancelled":
        services.storage.remove(services.storage.job_dir(job_id))
    elif reached is None and job.status in TERMINAL_STATUSES:
        raise Conflict(f"job {job_id} already {job.status}", code="job_finished")
    return JobPublic.from_row(job)


@router.post(
    "/{job_id}/pause",
    response_model=JobPublic,
    summary="Pause: a queued job is paused at once; a running one stops at its next checkpoint (pausing "
    "-> paused) and frees its worker",
)
def pause_job(job_id: str, session: SessionDep, owner: CurrentOwner) -> JobPublic:
    job = owned_job(session, owner, job_id)
    if jobstore.pause(session, job=job) is None:  # already paused or pausing too: 409, as documented
        raise Conflict(
            f"job {job_id} is {job.status}; only queued or running jobs can be paused",
            code="job_not_pausable",
        )
    return JobPublic.from_row(job)


@router.post(
    "/{job_id}/resume",
    response_model=JobPublic,
    summary="Resume a paused job: queued again, it continues from its last checkpoint",
)
def resume_job(job_id: str, services: ServicesDep, session: SessionDep, owner: CurrentOwner) -> JobPublic:
    job = owned_job(session, owner, job_id)
    if job.status != "paused":
        raise Conflict(
            f"job {job_id} is {job.status}; only paused jobs can be resumed", code="job_not_paused"
        )
    _check_room(services, session, owner)
    if jobstore.resume(session, job=job) == "queued":
        _enqueue(services, job_id)
    return JobPublic.from_row(job)


@router.delete("/{job_id}", status_code=204, summary="Delete a finished job and its files")
def delete_job(job_id: str, services: ServicesDep, session: SessionDep, owner: CurrentOwner) -> Response:
    job = owned_job(session, owner, job_id)
    if not jobstore.delete_finished(session, job=job):
        raise Conflict(f"job {job_id} is {job.status}; cancel it first", code="job_active")
    services.storage.remove(services.storage.job_dir(job_id))
    return Response(status_code=204)


@router.get("/{job_id}/artifacts", response_model=ArtifactList)
def list_artifacts(job_id: str, session: SessionDep, owner: CurrentOwner) -> ArtifactList:
    owned_job(session, owner, job_id)
    return ArtifactList(
        items=[
            ArtifactPublic(
                name=r.name,
                filename=Path(r.path).name,
                media_type=r.media_type,
                sha256=r.sha256,
                size_bytes=r.size_bytes,
                url=f"/v1/jobs/{job_id}/artifacts/{r.name}",
            )
            for r in jobstore.artifacts(session, job_id=job_id)
        ]
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        206: {"description": "partial content (Range)"},
        304: {"description": "not modified"},
        412: {"description": "If-Match names no current version"},
        416: {"description": "range not satisfiable"},
    },
    summary="Download an artifact (Range, ETag / If-Match / If-None-Match, HEAD, X-Content-SHA256)",
)
def download_artifact(
    job_id: str, name: str, request: Request, services: ServicesDep, session: SessionDep, owner: CurrentOwner
) -> Response:
    owned_job(session, owner, job_id)
    row = jobstore.artifact(session, job_id=job_id, name=name)
    if row is None:
        raise NotFound(f"artifact {name!r} not found for job {job_id}")
    path = services.storage.absolute(row.path)
    try:
        size = os.stat(path).st_size
    except OSError:
        raise NotFound(f"artifact {name!r} is gone from storage") from None
    etag = f'"{row.sha256}"'
    headers = {
        "ETag": etag,
        "X-Content-SHA256": row.sha256,
        "Cache-Control": "private, max-age=0",
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{path.name}"',
    }
    if_match = request.headers.get("if-match")  # RFC 9110 §13.2.2: If-Match first, then If-None-Match
    if if_match is not None and not strong_match(if_match, etag):
        raise precondition_failed(f"artifact {name!r}", etag)
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and weak_match(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    wanted = byte_range(request.headers.get("range"), size)
    if not range_applies(request.headers.get("if-range"), etag):
        wanted = None  # the client's copy is another version: send it all
    if wanted == UNSATISFIABLE:
        raise ApiError(
            f"range {request.headers.get('range')!r} starts beyond the artifact's {size} bytes",
            code="range_not_satisfiable",
            status_code=416,
            headers={"Content-Range": f"bytes */{size}"},
        )
    first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
    length = last - first + 1 if size else 0
    status = 206 if isinstance(wanted, tuple) else 200
    headers["Content-Length"] = str(length)
    if status == 206:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=row.media_type)
    return StreamingResponse(
        file_chunks(path, first, length), status_code=status, headers=headers, media_type=row.media_type
    )


router.add_api_route(
    "/{job_id}/artifacts/{name}", download_artifact, methods=["HEAD"], include_in_schema=False
)
