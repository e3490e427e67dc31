"""Database tables (SQLAlchemy 2 typed ORM). Every user-owned row carries `owner_id`.

Ids are strings `<prefix>_<12 hex ms time><16 hex random>` (`ID_PATTERN`): sortable by creation time, so the
id is the pagination cursor.

The job status vocabulary is defined here once (`JobStatus`, a str enum: its members are the strings the
database stores and the API shows); the store, the worker, the reaper, the schemas, the CLI and the metrics
use it:

    queued ──> running ──> succeeded | failed
      │  ▲        │ ├──> cancelling ──> cancelled
      │  │        │ └──> pausing ──> paused ──(resume)──> queued
      │  └────────┴── (I/O error, lost worker: requeued)
      └──> cancelled | paused
"""

from __future__ import annotations

import secrets
import sys
import time
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover

    class StrEnum(str, Enum):
        """enum.StrEnum of Python 3.11: a member is its value, under str() and format() too."""

        __str__ = str.__str__
        __format__ = str.__format__


class JobStatus(StrEnum):
    """A job's status. Members are plain strings (`JobStatus.QUEUED == "queued"`), so the database stores and
    the API shows the same values as ever."""

    QUEUED, RUNNING, CANCELLING, PAUSING, PAUSED, SUCCEEDED, FAILED, CANCELLED = (
        "queued",
        "running",
        "cancelling",
        "pausing",
        "paused",
        "succeeded",
        "failed",
        "cancelled",
    )

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """In a pydantic model or a FastAPI parameter a status is what it was as a `Literal` of these values:
        validated into the plain string, the same JSON schema (inline, no component) and the same 422
        message."""
        from pydantic_core import core_schema

        return core_schema.literal_schema([status.value for status in cls])


JOB_STATUSES: tuple[JobStatus, ...] = tuple(JobStatus)
# count against max_jobs_in_flight
ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.PAUSING)
TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
NON_TERMINAL_STATUSES = tuple(s for s in JOB_STATUSES if s not in TERMINAL_STATUSES)

ID_PATTERN = r"^[a-z]{2,4}_[0-9a-f]{28}$"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on the way out on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


JSONType = JSON().with_variant(JSONB(), "postgresql")
# 64-bit autoincrement keys; SQLite's INTEGER PRIMARY KEY is already 64-bit and autoincrements only under that
# exact type name, hence the variant.
BigIntegerId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Owner(Base):
    __tablename__ = "owners"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Teacher(Base):
    __tablename__ = "teachers"
    # An owner's archive (sha256) is one teacher: concurrent identical uploads cannot both insert, the loser
    # answers with the winner's row (api.uploads.ingest_archive). Rows are deleted outright, so the index
    # covers every row, as crud.same_upload looks at every row.
    __table_args__ = (Index("uq_teachers_owner_sha256", "owner_id", "sha256", unique=True),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    architecture: Mapped[str] = mapped_column(String(32))
    layout: Mapped[str] = mapped_column(String(32))
    num_layers: Mapped[int] = mapped_column(Integer)
    hidden_size: Mapped[int] = mapped_column(Integer)
    num_params: Mapped[int] = mapped_column(BigInteger)
    sample_rate: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    # As for teachers; a registered server directory has no sha256 (NULL), and NULLs are distinct in a unique
    # index on PostgreSQL and SQLite alike, so an owner may register any number of them.
    __table_args__ = (Index("uq_datasets_owner_sha256", "owner_id", "sha256", unique=True),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    source: Mapped[str] = mapped_column(String(16))  # "upload" | "server_path"
    server_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    files: Mapped[int] = mapped_column(BigInteger)
    hours: Mapped[float] = mapped_column(Float)
    summary: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_status", "owner_id", "status"),
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    # The inputs the job was created with, as the API shows them: kept when the teacher or dataset is deleted
    # later (a finished job still says where it came from; GET /v1/teachers/{id} then answers 404).
    teacher_id: Mapped[str] = mapped_column(String(40))
    dataset_id: Mapped[str] = mapped_column(String(40))
    calibration_dataset_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # The same inputs as foreign keys while they exist: the database refuses a job on an input deleted since
    # the route checked it, and deleting an input (allowed once no unfinished job uses it, service.crud)
    # clears them.
    teacher_ref: Mapped[str | None] = mapped_column(
        ForeignKey("teachers.id", ondelete="SET NULL", name="fk_jobs_teacher_ref_teachers"), nullable=True
    )
    dataset_ref: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL", name="fk_jobs_dataset_ref_datasets"), nullable=True
    )
    calibration_dataset_ref: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL", name="fk_jobs_calibration_dataset_ref_datasets"),
        nullable=True,
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    clusters: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigIntegerId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(32), default="")
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    message: Mapped[str] = mapped_column(Text, default="")


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)

    id: Mapped[int] = mapped_column(BigIntegerId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)  # relative to the storage root
    media_type: Mapped[str] = mapped_column(String(100))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


__all__ = [
    "Base",
    "Owner",
    "ApiKey",
    "Teacher",
    "Dataset",
    "Job",
    "JobEvent",
    "Artifact",
    "JobStatus",
    "JOB_STATUSES",
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "NON_TERMINAL_STATUSES",
    "ID_PATTERN",
    "new_id",
    "utcnow",
]
