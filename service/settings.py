"""Deployment settings: one `Settings` object read from `SKILLKD_*` environment variables.

Embedded defaults (nothing to install): SQLite and a filesystem broker under the data directory
(`SKILLKD_HOME`, default `~/.skillkd`). Distributed: set `SKILLKD_DATABASE_URL=postgresql+psycopg://...`
and `SKILLKD_BROKER_URL=redis://...`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1024**3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKILLKD_", extra="ignore")

    home: Path = Field(default=Path("~/.skillkd"), description="data directory of the embedded mode")
    database_url: str = Field(default="", description="SQLAlchemy URL; default sqlite in `home`")
    broker_url: str = Field(default="", description="Celery broker; default a filesystem broker in `home`")
    storage_dir: Path | None = Field(
        default=None, description="uploads, datasets, job files; default home/storage"
    )
    engine: str = Field(
        default="service.engine:CoreEngine", description="import path of the Engine implementation"
    )
    warm_engine: bool = Field(
        default=True,
        description="import the engine (torch) in the background at API startup, not in the first job "
        "creation; /readyz is 503 until it is done",
    )

    # uploads and archives
    max_upload_bytes: int = Field(default=20 * GiB, gt=0)
    max_archive_entries: int = Field(default=200_000, gt=0)
    max_extracted_bytes: int = Field(default=200 * GiB, gt=0)
    max_compression_ratio: float = Field(default=200.0, gt=1.0)
    archive_ratio_floor_bytes: int = Field(
        default=64 * 1024 * 1024, ge=0, description="the compression ratio is checked above this many bytes"
    )
    server_dataset_roots: list[Path] = Field(
        default_factory=list, description="if set, admin-registered dataset paths must lie under one of these"
    )

    auth_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="an API key's owner is cached this long; a "
        "revoked key stops working within it (0: no cache)",
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="prometheus_client's multiprocess directory (PROMETHEUS_MULTIPROC_DIR, set by "
        "`skillkd serve --workers N`): /metrics then sums the request counters of all API processes",
    )
    db_pool_size: int = Field(
        default=16,
        ge=1,
        le=200,
        description="database connections an API process keeps "
        "open (more are opened, and closed again, while more requests need one at once)",
    )

    # jobs
    max_jobs_in_flight: int = Field(default=4, gt=0, description="queued + running + cancelling per owner")
    max_attempts: int = Field(default=3, gt=0, description="deliveries of a job before too_many_attempts")
    task_time_limit_s: int = Field(default=72 * 3600, gt=0, description="hard limit of one job attempt")
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    heartbeat_stale_s: float = Field(default=90.0, gt=0)
    requeue_queued_after_s: float = Field(default=300.0, gt=0, description="re-enqueue lost queued jobs")
    reaper_interval_s: float = Field(default=30.0, gt=0, description="0 < interval; API runs the reaper")
    progress_interval_s: float = Field(default=1.0, ge=0, description="throttle of progress writes")
    stop_poll_interval_s: float = Field(default=1.0, ge=0, description="throttle of cancel-flag reads")
    keep_workdir: bool = Field(default=False, description="keep checkpoints after a successful job")
    embedded_worker_pid_file: Path | None = Field(
        default=None,
        description="set by `skillkd serve` when it runs the worker itself: the file holding that worker's "
        "process id while it runs; /readyz is 503 while it names no live process",
    )

    # upper bounds of a job spec (POST /v1/jobs answers 422 above them)
    max_stage_steps: int = Field(default=1_000_000, gt=0, description="stage1_steps and stage2_steps")
    max_calibration_utterances: int = Field(default=100_000, gt=0)
    max_batch_seconds: float = Field(default=3600.0, gt=0, description="audio seconds per optimiser step")

    # the fake engine of the tests (service.engine.FakeEngine); read here so a worker subprocess can be
    # steered
    fake_steps: int = Field(default=8, ge=0, description="steps per training stage")
    fake_step_s: float = Field(default=0.0, ge=0, description="sleep per step")
    fake_kill_at: int | None = Field(default=None, description="SIGKILL the own process at this stage-1 step")
    fake_fail: str | None = Field(default=None, description="raise this error code at step 2")
    fake_ledger: Path | None = Field(default=None, description="one line per completed run")
    broker_poll_interval_s: float = Field(default=0.5, gt=0, description="filesystem broker polling")

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.home = self.home.expanduser()
        if self.storage_dir is None:
            self.storage_dir = self.home / "storage"
        self.storage_dir = self.storage_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'skillkd.db'}"
        return self

    @property
    def storage(self) -> Path:
        assert self.storage_dir is not None
        return self.storage_dir

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url or self.broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return self.home / "broker"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    def broker_transport_options(self) -> dict:
        if self.embedded_broker:
            queue = self.broker_dir / "queue"
            return {
                "data_folder_in": str(queue),
                "data_folder_out": str(queue),
                "control_folder": str(self.broker_dir / "control"),
                "processed_folder": str(self.broker_dir / "processed"),
                "store_processed": False,
                "polling_interval": self.broker_poll_interval_s,
            }
        # Redis: a message unacked for this long is redelivered; above the hard limit so a long job
        # is never delivered twice while it still runs.
        return {"visibility_timeout": self.task_time_limit_s + 3600}

    def ensure_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        if self.embedded_broker:
            for name in ("queue", "control", "processed"):
                (self.broker_dir / name).mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    return Settings()


class ClientSettings(BaseSettings):
    """What the client commands (`skillkd submit`, `status`, ...) read from the environment."""

    model_config = SettingsConfigDict(env_prefix="SKILLKD_", extra="ignore")

    url: str = Field(default="http://127.0.0.1:8000", description="the service's base URL")
    api_key: str | None = Field(default=None, description="API key; default the local admin key of `serve`")
    home: Path = Field(default=Path("~/.skillkd"), description="where `skillkd serve` wrote admin.key")


__all__ = ["Settings", "ClientSettings", "get_settings"]
