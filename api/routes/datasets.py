"""POST/GET/DELETE /v1/datasets: upload audio as an archive (safe extraction), or register a server path
(admin); delete (409 while an unfinished job uses it; a registered server directory is never removed, only its
row)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from api.archives import Extracted
from api.deps import CurrentOwner, Forbidden, Services, ServicesDep, SessionDep
from api.errors import Conflict, NotFound, UnprocessableInput
from api.routes.common import ARCHIVE_BODY, ERRORS, MAX_PAGE, SHA256_FILTER
from api.routes.teachers import in_use_message
from api.schemas import DatasetList, DatasetPublic, DatasetRegister
from api.uploads import Received, ingest_archive, input_error
from core.errors import SkillkdError
from service import crud
from service.models import Dataset, Owner, new_id

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERRORS)

_BODY = {
    "requestBody": {
        "required": True,
        "description": ARCHIVE_BODY["requestBody"]["description"]
        + '; or, for admins, JSON `{"path": ..., "name": ...}` registering a directory on the server',
        "content": {
            **ARCHIVE_BODY["requestBody"]["content"],
            "application/json": {"schema": DatasetRegister.model_json_schema()},
        },
    }
}


def normalise_summary(summary: dict) -> dict:
    """The engine's AudioCatalog.summary() in the stored shape: rates as a sorted list, examples by reason."""
    rates = summary.get("sample_rates") or []
    examples: dict[str, list[str]] = {}
    for item in summary.get("skipped_examples") or []:
        examples.setdefault(str(item.get("reason", "unknown")), []).append(str(item.get("path", "")))
    return {
        "files": int(summary.get("files", 0)),
        "hours": float(summary.get("hours", 0.0)),
        "sample_rates": sorted(int(r) for r in rates),
        "skipped": {str(k): int(v) for k, v in (summary.get("skipped") or {}).items()},
        "examples": examples,
        **({"phone_labelled": int(summary["phone_labelled"])} if "phone_labelled" in summary else {}),
    }


def _scan(services: Services, path: Path, label: str = "the archive") -> dict:
    try:
        summary = services.get_engine().scan_audio(path)
    except SkillkdError as exc:
        raise input_error(exc, path, label=label) from exc
    return normalise_summary(summary)


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    openapi_extra=_BODY,
    summary="Upload audio (zip/tar) or register a server directory (admin)",
    responses={
        200: {
            "model": DatasetPublic,
            "description": "an archive with the same content (sha256) as one this owner already uploaded: "
            "that dataset, unchanged (its name included); 201 is a new one",
        }
    },
)
async def create_dataset(
    request: Request,
    response: Response,
    services: ServicesDep,
    owner: CurrentOwner,
    name: Annotated[str, Query(max_length=200)] = "",
) -> DatasetPublic:
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        return await _register(request, services, owner)
    dataset_id = new_id("ds")

    def prepare(received: Received, extracted: Extracted, folder: Path) -> tuple[Path, Dataset]:
        summary = _scan(services, folder)
        return folder, Dataset(
            id=dataset_id,
            owner_id=owner.id,
            name=name,
            source="upload",
            sha256=received.sha256,
            size_bytes=extracted.total_bytes,
            files=int(summary.get("files", 0)),
            hours=float(summary.get("hours", 0.0)),
            summary=summary,
        )

    row, created = await ingest_archive(
        request, services, services.storage.dataset_dir(dataset_id), prepare, model=Dataset, owner_id=owner.id
    )
    if not created:
        response.status_code = 200
    return DatasetPublic.from_row(row)


async def _register(request: Request, services: Services, owner: Owner) -> DatasetPublic:
    """An admin registers a directory on the server, only under one of the operator's
    SKILLKD_SERVER_DATASET_ROOTS: with none set (the default) registering is off, so an admin key alone
    cannot make the service read any directory it can (/proc, other services' data)."""
    if not owner.is_admin:
        raise Forbidden("registering a server path needs an admin key")
    roots = [r.resolve() for r in services.settings.server_dataset_roots]
    if not roots:
        raise Forbidden(
            "registering server directories is off on this service: its operator turns it on by setting "
            "SKILLKD_SERVER_DATASET_ROOTS to a JSON list of the directories that may be registered, e.g. "
            "'[\"/srv/audio\"]'; uploading the audio as an archive needs no setting",
            code="server_paths_disabled",
        )
    body = await request.body()
    try:
        reg = DatasetRegister.model_validate_json(body)
    except ValidationError as exc:
        message = "; ".join(
            f"body.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise UnprocessableInput(message, code="validation_error") from exc
    path = Path(reg.path)
    if not path.is_absolute():
        raise UnprocessableInput("path must be absolute", code="dataset_path_invalid")
    path = path.resolve()  # symbolic links followed: a link under a root to elsewhere is outside
    if not any(path.is_relative_to(r) for r in roots):
        raise UnprocessableInput(
            "path is outside the directories this service lets admins register "
            "(SKILLKD_SERVER_DATASET_ROOTS)",
            code="dataset_path_invalid",
        )
    if not path.is_dir():
        raise UnprocessableInput(f"{reg.path} is not a directory on the server", code="dataset_path_invalid")

    def scan_and_store() -> Dataset:
        summary = _scan(services, path, label="the registered directory")
        row = Dataset(
            id=new_id("ds"),
            owner_id=owner.id,
            name=reg.name,
            source="server_path",
            server_path=str(path),
            size_bytes=0,
            files=int(summary.get("files", 0)),
            hours=float(summary.get("hours", 0.0)),
            summary=summary,
        )
        with services.factory() as session:
            return crud.insert(session, row=row)

    return DatasetPublic.from_row(await run_in_threadpool(scan_and_store))


@router.get("", response_model=DatasetList)
def list_datasets(
    session: SessionDep,
    owner: CurrentOwner,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    after: Annotated[str | None, Query(max_length=64)] = None,
    sha256: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$", description=SHA256_FILTER)] = None,
) -> DatasetList:
    where = [Dataset.sha256 == sha256] if sha256 else None
    rows, cursor = crud.page(session, model=Dataset, owner_id=owner.id, limit=limit, after=after, where=where)
    return DatasetList(items=[DatasetPublic.from_row(r) for r in rows], next_cursor=cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep, owner: CurrentOwner) -> DatasetPublic:
    row = crud.owned(session, model=Dataset, row_id=dataset_id, owner_id=owner.id)
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return DatasetPublic.from_row(row)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Delete a dataset and its files (409 while an unfinished job uses it)",
)
def delete_dataset(
    dataset_id: str, services: ServicesDep, session: SessionDep, owner: CurrentOwner
) -> Response:
    row = crud.owned(session, model=Dataset, row_id=dataset_id, owner_id=owner.id)
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found")
    uploaded = row.source == "upload"
    users = crud.delete_resource(session, model=Dataset, row_id=dataset_id)
    if users:
        raise Conflict(in_use_message(f"dataset {dataset_id}", users), code="dataset_in_use")
    if uploaded:  # a registered server directory belongs to the server's admin, not to the service
        services.storage.remove(services.storage.dataset_dir(dataset_id))
    return Response(status_code=204)
