"""POST/GET /v1/datasets: upload audio as an archive (safe extraction), or register a server path (admin)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from api.archives import Extracted
from api.deps import CurrentOwner, Forbidden, ServicesDep, SessionDep
from api.errors import NotFound, UnprocessableInput
from api.models import Dataset, new_id
from api.routes._common import ARCHIVE_BODY, ERRORS, MAX_PAGE, owned, page
from api.schemas import DatasetList, DatasetPublic, DatasetRegister
from api.uploads import Received, ingest_archive
from core.errors import SkillkdError

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERRORS)

_BODY = {"requestBody": {
    "required": True,
    "description": ARCHIVE_BODY["requestBody"]["description"]
    + "; or, for admins, JSON `{\"path\": ..., \"name\": ...}` registering a directory on the server",
    "content": {**ARCHIVE_BODY["requestBody"]["content"],
                "application/json": {"schema": DatasetRegister.model_json_schema()}},
}}


def public(row: Dataset) -> DatasetPublic:
    summary = row.summary or {}
    return DatasetPublic(
        id=row.id, name=row.name, source=row.source, sha256=row.sha256, size_bytes=row.size_bytes,
        files=row.files, hours=row.hours, sample_rates=summary.get("sample_rates", []),
        skipped=summary.get("skipped", {}), examples=summary.get("examples", {}), created_at=row.created_at,
    )


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
    }


def _scan(services, path: Path) -> dict:
    try:
        summary = services.get_engine().scan_audio(path)
    except SkillkdError as exc:
        raise UnprocessableInput(exc.message, code=exc.code) from exc
    return normalise_summary(summary)


@router.post("", status_code=201, response_model=DatasetPublic, openapi_extra=_BODY,
             summary="Upload audio (zip/tar) or register a server directory (admin)")
async def create_dataset(
    request: Request, services: ServicesDep, owner: CurrentOwner,
    name: Annotated[str, Query(max_length=200)] = "",
) -> DatasetPublic:
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        return await _register(request, services, owner)
    dataset_id = new_id("ds")

    def prepare(received: Received, extracted: Extracted, folder: Path) -> tuple[Path, Dataset]:
        summary = _scan(services, folder)
        return folder, Dataset(id=dataset_id, owner_id=owner.id, name=name, source="upload",
                               sha256=received.sha256, size_bytes=extracted.total_bytes,
                               files=int(summary.get("files", 0)), hours=float(summary.get("hours", 0.0)),
                               summary=summary)

    return public(await ingest_archive(request, services, services.storage.dataset_dir(dataset_id), prepare))


async def _register(request: Request, services, owner) -> DatasetPublic:
    if not owner.is_admin:
        raise Forbidden("registering a server path needs an admin key")
    body = await request.body()
    try:
        reg = DatasetRegister.model_validate_json(body)
    except ValidationError as exc:
        message = "; ".join(f"body.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise UnprocessableInput(message, code="validation_error") from exc
    path = Path(reg.path)
    if not path.is_absolute():
        raise UnprocessableInput("path must be absolute", code="dataset_path_invalid")
    path = path.resolve()
    roots = [r.resolve() for r in services.settings.server_dataset_roots]
    if roots and not any(path.is_relative_to(r) for r in roots):
        raise UnprocessableInput("path is outside SKILLKD_SERVER_DATASET_ROOTS", code="dataset_path_invalid")
    if not path.is_dir():
        raise UnprocessableInput(f"{path} is not a directory on the server", code="dataset_path_invalid")

    def scan_and_store() -> Dataset:
        summary = _scan(services, path)
        row = Dataset(id=new_id("ds"), owner_id=owner.id, name=reg.name, source="server_path",
                      server_path=str(path), size_bytes=0, files=int(summary.get("files", 0)),
                      hours=float(summary.get("hours", 0.0)), summary=summary)
        with services.factory() as session:
            session.add(row)
            session.commit()
        return row

    return public(await run_in_threadpool(scan_and_store))


@router.get("", response_model=DatasetList)
def list_datasets(session: SessionDep, owner: CurrentOwner,
                  limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
                  after: Annotated[str | None, Query(max_length=64)] = None) -> DatasetList:
    rows, cursor = page(session, Dataset, owner, limit, after)
    return DatasetList(items=[public(r) for r in rows], next_cursor=cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep, owner: CurrentOwner) -> DatasetPublic:
    row = owned(session, Dataset, dataset_id, owner)
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return public(row)
