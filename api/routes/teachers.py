"""POST/GET /v1/teachers: upload a Hugging Face teacher directory as an archive; validated at once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.archives import Extracted, content_root
from api.deps import CurrentOwner, ServicesDep, SessionDep
from api.errors import NotFound, UnprocessableInput
from api.models import Teacher, new_id
from api.routes._common import ARCHIVE_BODY, ERRORS, MAX_PAGE, owned, page
from api.schemas import TeacherList, TeacherPublic
from api.uploads import Received, ingest_archive
from core.errors import SkillkdError

router = APIRouter(prefix="/v1/teachers", tags=["teachers"], responses=ERRORS)

_REQUIRED = ("architecture", "layout", "num_layers", "hidden_size", "num_params", "sample_rate")


@router.post("", status_code=201, response_model=TeacherPublic, openapi_extra=ARCHIVE_BODY,
             summary="Upload a teacher (zip/tar of a Hugging Face model directory)")
async def upload_teacher(
    request: Request, services: ServicesDep, owner: CurrentOwner,
    name: Annotated[str, Query(max_length=200)] = "",
) -> Teacher:
    teacher_id = new_id("tch")

    def prepare(received: Received, extracted: Extracted, folder: Path) -> tuple[Path, Teacher]:
        root = content_root(folder)
        try:
            info = services.get_engine().inspect_teacher(root)
        except SkillkdError as exc:
            raise UnprocessableInput(exc.message, code=exc.code) from exc
        missing = [k for k in _REQUIRED if k not in info]
        if missing:
            raise UnprocessableInput(f"teacher inspection lacks {missing}", code="teacher_invalid")
        return root, Teacher(id=teacher_id, owner_id=owner.id, name=name, sha256=received.sha256,
                             size_bytes=received.size, **{k: info[k] for k in _REQUIRED})

    return await ingest_archive(request, services, services.storage.teacher_dir(teacher_id), prepare)


@router.get("", response_model=TeacherList)
def list_teachers(session: SessionDep, owner: CurrentOwner,
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
                  after: Annotated[str | None, Query(max_length=64)] = None) -> TeacherList:
    rows, cursor = page(session, Teacher, owner, limit, after)
    return TeacherList(items=[TeacherPublic.model_validate(r) for r in rows], next_cursor=cursor)


@router.get("/{teacher_id}", response_model=TeacherPublic)
def get_teacher(teacher_id: str, session: SessionDep, owner: CurrentOwner) -> Teacher:
    row = owned(session, Teacher, teacher_id, owner)
    if row is None:
        raise NotFound(f"teacher {teacher_id} not found")
    return row
