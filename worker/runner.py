"""Running one delivered job: claim it, call the engine, record the outcome. No Celery here.

Outcomes (job status, error code):
    engine returns            succeeded; artifacts recorded with sha256 and size; checkpoints removed
    StopRequested             cancelled (the job's files removed), or paused when the stop was a pause (the
                              engine saved a checkpoint; the workdir is kept for the resume)
    SkillkdError              failed, the error's stable code (deterministic: not retried)
    OSError                   queued again while attempts remain (I/O is the only thing retried), else failed
                              "io_error"
    anything else             failed "internal"
    worker killed             the job stays running until its heartbeat goes stale; the reaper requeues it
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.errors import SkillkdError, StopRequested
from core.events import Event
from core.spec import CompressionSpec
from service.crud import dataset_path
from service.engine import Engine, EngineResult
from service.jobstore import (
    claim,
    finish_cancelled,
    finish_failed,
    finish_paused,
    finish_succeeded,
    heartbeat,
    record_event,
    record_start,
    requeue,
    stale_cutoff,
    stop_wanted,
)
from service.models import Artifact
from service.queue import Enqueuer
from service.settings import Settings
from service.storage import LocalStorage, public_message

log = logging.getLogger(__name__)

_MEDIA_TYPES = {
    ".zip": "application/zip",
    ".json": "application/json",
    ".png": "image/png",
    ".jsonl": "application/x-ndjson",
    ".onnx": "application/octet-stream",
}
_FILE_NAMES = {
    "model": "model.zip",
    "train_log": "train_log.jsonl",
    "onnx": "model.onnx",
    "onnx_fp16": "model_fp16.onnx",
    "onnx_int8": "model_quantized.onnx",
    "hf": "hf.zip",
}


@dataclass
class JobRunner:
    factory: sessionmaker[Session]
    storage: LocalStorage
    engine: Engine
    enqueuer: Enqueuer
    settings: Settings
    worker: str = "worker"

    def run(self, job_id: str) -> str:
        with self.factory() as session:
            outcome = claim(
                session,
                job_id=job_id,
                worker=self.worker,
                stale_before=stale_cutoff(self.settings.heartbeat_stale_s),
                max_attempts=self.settings.max_attempts,
            )
            if not outcome.run:
                log.info("job %s not run: %s", job_id, outcome.reason)
                return f"skipped: {outcome.reason}"
            job = record_start(session, job_id=job_id, attempts=outcome.attempts)
            spec = CompressionSpec.from_stored(job.spec)
            teacher = self.storage.teacher_dir(job.teacher_id)
            audio = self._dataset_path(session, job.dataset_id)
            calibration = (
                self._dataset_path(session, job.calibration_dataset_id)
                if job.calibration_dataset_id
                else None
            )

        beat = _Heartbeat(self.factory, job_id, self.worker, self.settings.heartbeat_interval_s)
        sink = _EventRecorder(self.factory, job_id, self.worker, self.settings.progress_interval_s)
        stop = _StopFlag(self.factory, job_id, self.worker, self.settings.stop_poll_interval_s, beat)
        workdir = self.storage.job_workdir(job_id)
        beat.start()
        try:
            result = self.engine.run(
                spec, teacher, audio, workdir, calibration_audio=calibration, on_event=sink, should_stop=stop
            )
            sink.flush()
        except StopRequested:
            sink.flush()
            return self._finish_stopped(job_id)
        except SkillkdError as exc:
            sink.flush()
            log.info("job %s failed (%s): %s", job_id, exc.code, exc.message)
            return self._finish_failed(job_id, exc.code, public_message(exc.message), remove_workdir=True)
        except OSError as exc:
            sink.flush()
            log.warning("job %s: I/O error (attempt %d)", job_id, outcome.attempts, exc_info=True)
            return self._retry_io(job_id, exc, outcome.attempts)
        except Exception:
            # The exception text may hold SQL, parameters or paths: it goes to the log, the client gets the
            # code.
            log.exception("job %s: engine bug", job_id)
            sink.flush()
            return self._finish_failed(
                job_id,
                "internal",
                f"internal error while running the job; the worker's log has the details (job {job_id})",
                remove_workdir=False,
            )
        finally:
            beat.stop()
        return self._finish_succeeded(job_id, result)

    def _dataset_path(self, session: Session, dataset_id: str) -> Path:
        return dataset_path(session, storage=self.storage, dataset_id=dataset_id)

    def _finish_stopped(self, job_id: str) -> str:
        with self.factory() as session:
            if finish_paused(session, job_id=job_id):  # the stop was a pause
                return "paused"
        return self._finish_cancelled(job_id)

    def _finish_cancelled(self, job_id: str) -> str:
        with self.factory() as session:
            if not finish_cancelled(session, job_id=job_id):
                return "lost"  # another worker owns the job now
        self.storage.remove(self.storage.job_dir(job_id))
        return "cancelled"

    def _finish_failed(self, job_id: str, code: str, message: str, *, remove_workdir: bool) -> str:
        with self.factory() as session:
            ok = finish_failed(session, job_id=job_id, code=code, message=message)
        if ok and remove_workdir:
            self.storage.remove(self.storage.job_workdir(job_id))
        return f"failed: {code}"

    def _retry_io(self, job_id: str, exc: OSError, attempts: int) -> str:
        if attempts >= self.settings.max_attempts:
            return self._finish_failed(
                job_id,
                "io_error",
                f"I/O error on the server ({type(exc).__name__}) in "
                f"each of {attempts} attempts; the worker's log has the details",
                remove_workdir=False,
            )
        with self.factory() as session:
            ok = requeue(
                session, job_id=job_id, message=f"requeued after an I/O error ({type(exc).__name__})"
            )
        if ok:
            self.enqueuer.enqueue(job_id, countdown=5)
        return "requeued"

    def _finish_succeeded(self, job_id: str, result: EngineResult) -> str:
        out_dir = self.storage.job_artifacts_dir(job_id)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows: list[Artifact] = []
        for name, source in result.artifacts.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name) or not Path(source).exists():
                continue
            target = out_dir / _FILE_NAMES.get(name, name if Path(source).is_file() else f"{name}.zip")
            digest, size = _materialise(Path(source), target)
            rows.append(
                Artifact(
                    job_id=job_id,
                    name=name,
                    path=self.storage.relative(target),
                    media_type=_MEDIA_TYPES.get(target.suffix, "application/octet-stream"),
                    sha256=digest,
                    size_bytes=size,
                )
            )
        with self.factory() as session:
            if not finish_succeeded(session, job_id=job_id, report=result.report, artifacts=rows):
                return "lost"
        if not self.settings.keep_workdir:
            self.storage.remove(self.storage.job_workdir(job_id))
        return "succeeded"


def _materialise(source: Path, target: Path) -> tuple[str, int]:
    """Copy a file (or zip a directory) to `target`; return its sha256 and size."""
    tmp = target.with_name(target.name + ".part")
    if source.is_dir():
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    zf.write(path, f"{source.name}/{path.relative_to(source)}")
    else:
        shutil.copyfile(source, tmp)
    digest = hashlib.sha256()
    with open(tmp, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    tmp.replace(target)
    return digest.hexdigest(), target.stat().st_size


class _Heartbeat:
    """Touches jobs.heartbeat_at from a thread while the engine runs; notices if the job was taken away."""

    def __init__(self, factory: sessionmaker[Session], job_id: str, worker: str, interval_s: float) -> None:
        self.factory, self.job_id, self.worker, self.interval_s = factory, job_id, worker, interval_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with self.factory() as session:
                    if not heartbeat(session, job_id=self.job_id, worker=self.worker):
                        self.lost = True
            except Exception as exc:  # a DB hiccup must not kill the job; the next beat retries
                log.warning("heartbeat %s: %s", self.job_id, exc)


class _StopFlag:
    """should_stop(): True once the job is `cancelling` or `pausing` (or taken by another worker). DB read
    throttled."""

    def __init__(
        self, factory: sessionmaker[Session], job_id: str, worker: str, interval_s: float, beat: _Heartbeat
    ) -> None:
        self.factory, self.job_id, self.worker, self.interval_s, self.beat = (
            factory,
            job_id,
            worker,
            interval_s,
            beat,
        )
        self._last = float("-inf")
        self._stop = False

    def __call__(self) -> bool:
        if self._stop or self.beat.lost:
            return True
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            with self.factory() as session:
                self._stop = stop_wanted(session, job_id=self.job_id, worker=self.worker)
        return self._stop


class _EventRecorder:
    """on_event(): job_events rows + jobs.stage/progress/metrics/clusters. Progress writes throttled."""

    def __init__(self, factory: sessionmaker[Session], job_id: str, worker: str, interval_s: float) -> None:
        self.factory, self.job_id, self.worker, self.interval_s = factory, job_id, worker, interval_s
        self._last = float("-inf")
        self._pending: Event | None = None
        self._stage_started: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        now = time.monotonic()
        if event.kind == "progress" and now - self._last < self.interval_s and event.step < event.total:
            self._pending = event
            return
        self._pending = None
        self._last = now
        self._write(event)

    def flush(self) -> None:
        if self._pending is not None:
            event, self._pending = self._pending, None
            try:
                self._write(event)
            except Exception as exc:
                log.warning("job %s: could not write the last progress: %s", self.job_id, exc)

    def _write(self, event: Event) -> None:
        duration = None
        if event.kind == "stage_started":
            self._stage_started[event.stage] = time.monotonic()
        elif event.kind == "stage_finished" and event.stage in self._stage_started:
            duration = time.monotonic() - self._stage_started[event.stage]
        metrics = _jsonable(event.metrics)
        with self.factory() as session:
            record_event(
                session,
                job_id=self.job_id,
                worker=self.worker,
                kind=event.kind,
                stage=event.stage,
                step=event.step,
                total=event.total,
                eta_s=event.eta_s,
                duration_s=duration,
                metrics=metrics,
                message=event.message,
            )


def _jsonable(value: Any) -> Any:
    """Engine metrics may hold numpy/torch scalars or paths; the JSON column needs plain values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        if isinstance(value, float) and value != value:
            return None
        return value
    if hasattr(value, "item"):
        try:
            return _jsonable(value.item())
        except (ValueError, TypeError):
            pass
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)


__all__ = ["JobRunner"]
