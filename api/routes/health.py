"""/healthz (process alive), /readyz (database and broker reachable, the engine loaded; under `skillkd serve`,
also its worker process alive), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import ServicesDep
from api.schemas import Health
from service.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(services: ServicesDep) -> Response:
    def check_db() -> None:
        ping(services.factory)

    checks: dict[str, str] = {}
    pid_file = services.settings.embedded_worker_pid_file
    if pid_file is not None:
        checks["worker"] = embedded_worker_check(pid_file)
    for name, check in (("database", check_db), ("broker", services.enqueuer.depth)):
        try:
            await asyncio.wait_for(run_in_threadpool(check), timeout=5)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    if services.engine_state is not None:
        checks["engine"] = (
            "loading: the compression engine's imports (torch) are not done yet; a job created now waits "
            "for them"
            if services.engine_state == "loading"
            else services.engine_state
        )
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def embedded_worker_check(pid_file: Path) -> str:
    """'ok' while the worker process `skillkd serve` started is alive (its supervisor writes its id to
    `pid_file` and removes the file when it exits); otherwise why not: queued jobs would wait."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return (
            "error: the job worker of this server is not running (it is restarted automatically; the "
            "server's log says why it stopped); new jobs wait queued until it runs"
        )
    return "ok"


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    data = await run_in_threadpool(request.app.state.metrics.collect)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
