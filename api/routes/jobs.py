"""/v1/jobs: create (202, Idempotency-Key), list (cursor), get, events (paginated or SSE), cancel, delete,
artifacts (Range, ETag, X-Content-SHA256)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import CurrentOwner, ServicesDep, SessionDep
from api.errors import Conflict, NotFound, TooManyRequests, UnprocessableInput
from api.jobstore import add_event, count_in_flight, transition
from api.models import TERMINAL_STATUSES, Artifact, Dataset, Job, JobEvent, Owner, Teacher, new_id, utcnow
from api.routes._common import ERRORS, MAX_PAGE, owned, page
from api.schemas import (
    ArtifactList,
    ArtifactPublic,
    ErrorDetail,
    JobCreate,
    JobEventList,
    JobEventPublic,
    JobList,
    JobProgress,
    JobPublic,
    JobStatus,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERRORS)


def job_public(job: Job) -> JobPublic:
    return JobPublic(
        id=job.id, status=job.status, stage=job.stage,
        progress=JobProgress(**job.progress) if job.progress else None,
        metrics=job.metrics or {}, clusters=job.clusters,
        error=ErrorDetail(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        attempts=job.attempts, spec=job.spec, teacher_id=job.teacher_id, dataset_id=job.dataset_id,
        calibration_dataset_id=job.calibration_dataset_id, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at, updated_at=job.updated_at,
    )


def owned_job(session: Session, owner: Owner, job_id: str) -> Job:
    job = owned(session, Job, job_id, owner)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def _same_request(job: Job, body: JobCreate) -> bool:
    return (job.teacher_id, job.dataset_id, job.calibration_dataset_id, job.spec) == (
        body.teacher_id, body.dataset_id, body.calibration_dataset_id, body.spec.model_dump(mode="json"))


def _check_references(session: Session, owner: Owner, body: JobCreate) -> Teacher:
    teacher = owned(session, Teacher, body.teacher_id, owner)
    if teacher is None:
        raise UnprocessableInput(f"teacher_id: teacher {body.teacher_id} not found", code="teacher_not_found")
    for field in ("dataset_id", "calibration_dataset_id"):
        value = getattr(body, field)
        if value is None:
            continue
        dataset = owned(session, Dataset, value, owner)
        if dataset is None:
            raise UnprocessableInput(f"{field}: dataset {value} not found", code="dataset_not_found")
    spec = body.spec
    try:
        spec.target_sparsity(teacher.num_params)
    except ValueError as exc:
        raise UnprocessableInput(f"spec.target_params: {exc}", code="spec_invalid") from exc
    if isinstance(spec.clusters, list):
        bad = [i for group in spec.clusters for i in group if i > teacher.num_layers]
        if bad:
            raise UnprocessableInput(
                f"spec.clusters: layer indices {bad} above the teacher's {teacher.num_layers} layers",
                code="spec_invalid")
    elif isinstance(spec.clusters, int) and spec.clusters > teacher.num_layers + 1:
        raise UnprocessableInput(
            f"spec.clusters: {spec.clusters} clusters for {teacher.num_layers + 1} layer outputs", code="spec_invalid")
    return teacher


@router.post("", status_code=202, response_model=JobPublic, summary="Create a compression job")
def create_job(
    body: JobCreate, response: Response, services: ServicesDep, session: SessionDep, owner: CurrentOwner,
    idempotency_key: Annotated[str | None, Header(max_length=200, pattern=r"^[\x21-\x7e]+$")] = None,
) -> JobPublic:
    if idempotency_key:
        existing = session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key))
        if existing is not None:
            return _replay(existing, body, response)
    _check_references(session, owner, body)
    if count_in_flight(session, owner_id=owner.id) >= services.settings.max_jobs_in_flight:
        raise TooManyRequests(f"{services.settings.max_jobs_in_flight} jobs already queued or running; "
                              "wait for one to finish or cancel one")
    now = utcnow()
    job = Job(id=new_id("job"), owner_id=owner.id, teacher_id=body.teacher_id, dataset_id=body.dataset_id,
              calibration_dataset_id=body.calibration_dataset_id, spec=body.spec.model_dump(mode="json"),
              status="queued", progress={}, metrics={}, attempts=0, idempotency_key=idempotency_key,
              enqueued_at=now, created_at=now, updated_at=now)
    session.add(job)
    add_event(session, job_id=job.id, kind="status", message="queued")
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return _replay(existing, body, response)
    try:  # after COMMIT: a worker never sees an id whose row is not there
        services.enqueuer.enqueue(job.id)
    except Exception as exc:  # the row is queued; the reaper re-enqueues it once the broker is back
        log.warning("enqueue of %s failed (%s); the reaper will retry", job.id, exc)
    return job_public(job)


def _replay(existing: Job, body: JobCreate, response: Response) -> JobPublic:
    if not _same_request(existing, body):
        raise Conflict("Idempotency-Key was already used with a different request", code="idempotency_key_reused")
    response.headers["Idempotent-Replayed"] = "true"
    return job_public(existing)


@router.get("", response_model=JobList)
def list_jobs(session: SessionDep, owner: CurrentOwner, status: JobStatus | None = None,
              limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
              after: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page")] = None,
              ) -> JobList:
    rows, cursor = page(session, Job, owner, limit, after, [Job.status == status] if status else None)
    return JobList(items=[job_public(r) for r in rows], next_cursor=cursor)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep, owner: CurrentOwner) -> JobPublic:
    return job_public(owned_job(session, owner, job_id))


def _events_page(session: Session, job_id: str, after: int, limit: int) -> list[JobEvent]:
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
                                .order_by(JobEvent.id).limit(limit)))


@router.get("/{job_id}/events", response_model=JobEventList,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
            summary="Job events: a page of JSON, or Server-Sent Events with `Accept: text/event-stream`")
async def job_events(
    job_id: str, request: Request, services: ServicesDep, owner: CurrentOwner,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
):
    def first_page() -> list[JobEvent]:
        with services.factory() as session:
            owned_job(session, owner, job_id)
            return _events_page(session, job_id, after, limit)

    if "text/event-stream" not in request.headers.get("accept", ""):
        rows = await run_in_threadpool(first_page)
        return JobEventList(items=[JobEventPublic.model_validate(r) for r in rows],
                            next_cursor=rows[-1].id if len(rows) == limit else None)
    await run_in_threadpool(first_page)  # 404 before the stream starts
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
    return StreamingResponse(_sse(request, services, job_id, start), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(request: Request, services, job_id: str, last: int, poll_s: float = 0.5):
    def poll(after: int) -> tuple[list[JobEvent], str | None]:
        with services.factory() as session:
            rows = _events_page(session, job_id, after, 500)
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            return rows, status

    quiet = 0.0
    while True:
        rows, status = await run_in_threadpool(poll, last)
        for row in rows:
            data = JobEventPublic.model_validate(row).model_dump_json()
            yield f"id: {row.id}\nevent: {row.kind}\ndata: {data}\n\n"
            last = row.id
        if not rows and (status is None or status in TERMINAL_STATUSES):
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


@router.post("/{job_id}/cancel", response_model=JobPublic,
             summary="Cancel: a queued job ends cancelled at once; a running one becomes cancelling")
def cancel_job(job_id: str, services: ServicesDep, session: SessionDep, owner: CurrentOwner) -> JobPublic:
    job = owned_job(session, owner, job_id)
    if transition(session, job_id=job_id, from_statuses=("queued",), status="cancelled", finished_at=utcnow()):
        add_event(session, job_id=job_id, kind="status", message="cancelled while queued")
        session.commit()
        services.storage.remove(services.storage.job_dir(job_id))
    elif transition(session, job_id=job_id, from_statuses=("running",), status="cancelling"):
        add_event(session, job_id=job_id, kind="status", message="cancelling")
        session.commit()
    else:
        session.rollback()
        session.refresh(job)
        if job.status in TERMINAL_STATUSES:
            raise Conflict(f"job {job_id} already {job.status}", code="job_finished")
    session.refresh(job)
    return job_public(job)


@router.delete("/{job_id}", status_code=204, summary="Delete a finished job and its files")
def delete_job(job_id: str, services: ServicesDep, session: SessionDep, owner: CurrentOwner) -> Response:
    job = owned_job(session, owner, job_id)
    if job.status not in TERMINAL_STATUSES:
        raise Conflict(f"job {job_id} is {job.status}; cancel it first", code="job_active")
    session.execute(delete(Artifact).where(Artifact.job_id == job_id))
    session.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id))
    session.commit()
    services.storage.remove(services.storage.job_dir(job_id))
    return Response(status_code=204)


@router.get("/{job_id}/artifacts", response_model=ArtifactList)
def list_artifacts(job_id: str, request: Request, session: SessionDep, owner: CurrentOwner) -> ArtifactList:
    owned_job(session, owner, job_id)
    rows = session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name))
    return ArtifactList(items=[
        ArtifactPublic(name=r.name, media_type=r.media_type, sha256=r.sha256, size_bytes=r.size_bytes,
                       url=f"/v1/jobs/{job_id}/artifacts/{r.name}") for r in rows])


@router.get("/{job_id}/artifacts/{name}", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                       206: {"description": "partial content (Range)"}, 304: {"description": "not modified"}},
            summary="Download an artifact (Range, ETag / If-None-Match, X-Content-SHA256)")
def download_artifact(job_id: str, name: str, request: Request, services: ServicesDep, session: SessionDep,
                      owner: CurrentOwner) -> Response:
    owned_job(session, owner, job_id)
    row = session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
    if row is None:
        raise NotFound(f"artifact {name!r} not found for job {job_id}")
    path = services.storage.absolute(row.path)
    if not path.is_file():
        raise NotFound(f"artifact {name!r} is gone from storage")
    etag = f'"{row.sha256}"'
    headers = {"ETag": etag, "X-Content-SHA256": row.sha256, "Cache-Control": "private, max-age=0"}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type=row.media_type, filename=path.name, headers=headers)
