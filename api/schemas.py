"""Request and response bodies: one schema family per entity (`JobCreate`, `JobPublic`, ...).

The job spec is `core.spec.CompressionSpec` itself: the same type the engine and the CLI use.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.spec import CompressionSpec
from service.models import ID_PATTERN, Dataset, Job, JobStatus


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class TeacherPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    sha256: str
    size_bytes: int
    architecture: str
    layout: str
    num_layers: int
    hidden_size: int
    num_params: int
    sample_rate: int
    created_at: datetime


class TeacherList(BaseModel):
    items: list[TeacherPublic]
    next_cursor: str | None = None


class DatasetRegister(BaseModel):
    """Register audio already on the server (admins only)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, max_length=4096, description="absolute directory path on the server")
    name: str = Field(default="", max_length=200)


class DatasetPublic(BaseModel):
    id: str
    name: str
    source: Literal["upload", "server_path"]
    sha256: str | None
    size_bytes: int
    files: int
    hours: float
    sample_rates: list[int]
    skipped: dict[str, int]
    examples: dict[str, list[str]]
    created_at: datetime

    @classmethod
    def from_row(cls, row: Dataset) -> DatasetPublic:
        summary = row.summary or {}
        return cls(
            id=row.id,
            name=row.name,
            source=row.source,  # type: ignore[arg-type]
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            files=row.files,
            hours=row.hours,
            sample_rates=summary.get("sample_rates", []),
            skipped=summary.get("skipped", {}),
            examples=summary.get("examples", {}),
            created_at=row.created_at,
        )


class DatasetList(BaseModel):
    items: list[DatasetPublic]
    next_cursor: str | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher_id: str = Field(pattern=ID_PATTERN)
    dataset_id: str = Field(pattern=ID_PATTERN)
    calibration_dataset_id: str | None = Field(default=None, pattern=ID_PATTERN)
    spec: CompressionSpec = Field(default_factory=CompressionSpec)


def stored_spec(data: dict[str, Any]) -> CompressionSpec:
    """A job's spec as stored. One stored before a bound of today's spec existed (e.g. a seed of 2^64, refused
    since issue 22; its job could not run) is shown as it was rather than failing every read of its owner's
    jobs."""
    try:
        return CompressionSpec.model_validate(data)
    except ValidationError:
        return CompressionSpec.model_construct(**data)


class JobProgress(BaseModel):
    stage: str | None = None
    step: int = 0
    total_steps: int = 0
    eta_s: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    stage: str | None
    progress: JobProgress | None
    metrics: dict[str, Any]
    clusters: Any | None
    error: ErrorDetail | None
    attempts: int
    spec: CompressionSpec
    teacher_id: str
    dataset_id: str
    calibration_dataset_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, job: Job | Any) -> JobPublic:
        """From the ORM object or a Core row of the jobs table (the same attribute names)."""
        return cls(
            id=job.id,
            status=job.status,  # type: ignore[arg-type]
            stage=job.stage,
            progress=JobProgress(**job.progress) if job.progress else None,
            metrics=job.metrics or {},
            clusters=job.clusters,
            error=ErrorDetail(code=job.error_code, message=job.error_message or "")
            if job.error_code
            else None,
            attempts=job.attempts,
            spec=stored_spec(job.spec),
            teacher_id=job.teacher_id,
            dataset_id=job.dataset_id,
            calibration_dataset_id=job.calibration_dataset_id,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
        )


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = None


class JobEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    kind: str
    stage: str
    step: int
    total: int
    eta_s: float | None
    duration_s: float | None
    metrics: dict[str, Any]
    message: str


class JobEventList(BaseModel):
    items: list[JobEventPublic]
    next_cursor: int | None = None


class ArtifactPublic(BaseModel):
    name: str
    filename: str = Field(description="the file name a download is saved under (Content-Disposition)")
    media_type: str
    sha256: str
    size_bytes: int
    url: str


class ArtifactList(BaseModel):
    items: list[ArtifactPublic]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


__all__ = [
    "ErrorDetail",
    "ErrorBody",
    "TeacherPublic",
    "TeacherList",
    "DatasetRegister",
    "DatasetPublic",
    "DatasetList",
    "JobCreate",
    "JobProgress",
    "JobPublic",
    "JobList",
    "JobEventPublic",
    "JobEventList",
    "ArtifactPublic",
    "ArtifactList",
    "Health",
    "JobStatus",
]
