"""POST/GET/DELETE /v1/teachers: upload a Hugging Face teacher directory as an archive (validated at once),
list, get, delete (409 while an unfinished job uses it; finished jobs keep its id)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.archives import Extracted, content_root
from api.deps import CurrentOwner, ServicesDep, SessionDep
from api.errors import Conflict, NotFound, UnprocessableInput
from api.routes.common import ARCHIVE_BODY, ERRORS, MAX_PAGE, SHA256_FILTER
from api.schemas import TeacherList, TeacherPublic
from api.uploads import Received, ingest_archive, input_error
from core.errors import SkillkdError
from service import crud
from service.models import Teacher, new_id

router = APIRouter(prefix="/v1/teachers", tags=["teachers"], responses=ERRORS)

_SAME_UPLOAD = (
    "an archive with the same content (sha256) as one this owner already uploaded: that teacher, unchanged "
    "(its name included); 201 is a new one"
)
_REQUIRED = ("architecture", "layout", "num_layers", "hidden_size", "num_params", "sample_rate")


@router.post(
    "",
    status_code=201,
    response_model=TeacherPublic,
    openapi_extra=ARCHIVE_BODY,
    summary="Upload a teacher (zip/tar of a Hugging Face model directory)",
    responses={200: {"model": TeacherPublic, "description": _SAME_UPLOAD}},
)
async def upload_teacher(
    request: Request,
    response: Response,
    services: ServicesDep,
    owner: CurrentOwner,
    name: Annotated[str, Query(max_length=200)] = "",
) -> Teacher:
    teacher_id = new_id("tch")

    def prepare(received: Received, extracted: Extracted, folder: Path) -> tuple[Path, Teacher]:
        root = content_root(folder)
        try:
            info = services.get_engine().inspect_teacher(root)
        except SkillkdError as exc:
            raise input_error(exc, folder) from exc
        missing = [k for k in _REQUIRED if k not in info]
        if missing:
            raise UnprocessableInput(f"teacher inspection lacks {missing}", code="teacher_invalid")
        return root, Teacher(
            id=teacher_id,
            owner_id=owner.id,
            name=name,
            sha256=received.sha256,
            size_bytes=received.size,
            **{k: info[k] for k in _REQUIRED},
        )

    row, created = await ingest_archive(
        request, services, services.storage.teacher_dir(teacher_id), prepare, model=Teacher, owner_id=owner.id
    )
    if not created:
        response.status_code = 200
    return row


@router.get("", response_model=TeacherList)
def list_teachers(
    session: SessionDep,
    owner: CurrentOwner,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    after: Annotated[str | None, Query(max_length=64)] = None,
    sha256: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$", description=SHA256_FILTER)] = None,
) -> TeacherList:
    where = [Teacher.sha256 == sha256] if sha256 else None
    rows, cursor = crud.page(session, model=Teacher, owner_id=owner.id, limit=limit, after=after, where=where)
    return TeacherList(items=[TeacherPublic.model_validate(r) for r in rows], next_cursor=cursor)


@router.get("/{teacher_id}", response_model=TeacherPublic)
def get_teacher(teacher_id: str, session: SessionDep, owner: CurrentOwner) -> Teacher:
    row = crud.owned(session, model=Teacher, row_id=teacher_id, owner_id=owner.id)
    if row is None:
        raise NotFound(f"teacher {teacher_id} not found")
    return row


@router.delete(
    "/{teacher_id}",
    status_code=204,
    summary="Delete a teacher and its files (409 while an unfinished job uses it)",
)
def delete_teacher(
    teacher_id: str, services: ServicesDep, session: SessionDep, owner: CurrentOwner
) -> Response:
    if crud.owned(session, model=Teacher, row_id=teacher_id, owner_id=owner.id) is None:
        raise NotFound(f"teacher {teacher_id} not found")
    users = crud.delete_resource(session, model=Teacher, row_id=teacher_id)
    if users:
        raise Conflict(in_use_message(f"teacher {teacher_id}", users), code="teacher_in_use")
    services.storage.remove(services.storage.teacher_dir(teacher_id))
    return Response(status_code=204)


def in_use_message(what: str, job_ids: list[str]) -> str:
    shown = ", ".join(job_ids[:5]) + (f" and {len(job_ids) - 5} more" if len(job_ids) > 5 else "")
    return (
        f"{what} is used by unfinished job(s) {shown}; it can be deleted once they have finished "
        "(a paused job still needs it: resume or cancel it)"
    )
