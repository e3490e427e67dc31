"""The FastAPI application: `create_app(settings)`.

Startup runs the reaper once (jobs lost by a broker or API restart are re-enqueued) and then every
`reaper_interval_s` in a background task. Migrations are not run here: `skillkd serve` and the compose
`migrate` service apply them first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine as SqlEngine
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.deps import KeyCache, Services
from api.dropped_connections import ReadRetryMiddleware
from api.errors import ApiError
from api.http import ErrorMiddleware
from api.metrics import Metrics, MetricsMiddleware
from api.reaper import reap
from api.routes import datasets, health, jobs, presets, teachers
from service.db import make_async_reads_engine, make_engine, make_sessionmaker
from service.engine import Engine
from service.queue import CeleryEnqueuer, Enqueuer
from service.settings import Settings, get_settings
from service.storage import LocalStorage

log = logging.getLogger(__name__)


def _field(loc) -> str:
    return ".".join(str(p) for p in loc)


def reads_engine(db_engine: SqlEngine, settings: Settings) -> SqlEngine | AsyncEngine:
    """`Services.reads`, the engine of GET /v1/jobs/{id}'s one SELECT. PostgreSQL: an asyncio engine
    (psycopg's async driver) with a pool of its own whose connections are in autocommit from the start (a read
    needs no BEGIN and no ROLLBACK round trip, and nothing is switched per checkout) and are not pinged before
    use (a read on a connection the server has closed runs again instead: api.dropped_connections): one round
    trip per read instead of four, awaited on the event loop instead of a thread-pool call (whose hop cost 0.8
    ms of CPU per request, more than the query; issue 11). SQLite: the same engine, read on the event loop as
    well (WAL mode: a reader never waits for a writer; the lookup takes ~80 µs), as its driver opens no
    transaction for a SELECT, and switching its connections to autocommit and back cost more than the query
    (100 µs against 80)."""
    if db_engine.dialect.name == "sqlite":
        return db_engine
    return make_async_reads_engine(settings.database_url, pool_size=settings.db_pool_size)


def create_app(
    settings: Settings | None = None,
    *,
    enqueuer: Enqueuer | None = None,
    engine: Engine | None = None,
    run_reaper: bool = True,
) -> FastAPI:
    settings = settings or get_settings()
    settings.ensure_dirs()
    storage = LocalStorage(settings.storage)
    storage.ensure()
    # A pool as large as the requests that run at once under load: SQLAlchemy's default (5) made every request
    # beyond the fifth open and close a connection (on SQLite with its PRAGMAs; on PostgreSQL a new server
    # process), a tenth of the CPU of GET /v1/jobs/{id} with 8 clients (py-spy, issue 11).
    db_engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    if enqueuer is None:  # publishes by task name: the API never imports the worker
        enqueuer = CeleryEnqueuer.from_settings(settings)
    services = Services(
        settings=settings,
        factory=make_sessionmaker(db_engine),
        storage=storage,
        enqueuer=enqueuer,
        reads=reads_engine(db_engine, settings),
        engine=engine,
        owners=KeyCache(settings.auth_cache_s),
    )

    async def reap_once(**kwargs) -> None:
        try:
            await run_in_threadpool(reap, services.factory, services.enqueuer, settings, storage, **kwargs)
        except Exception as exc:
            log.warning("reaper failed: %s", exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # What exists now (modules, the app, its routes and schemas: some 100k objects) lives as long as the
        # process: out of the cyclic collector's reach, a full collection no longer walks it (80 ms each on
        # this
        # 2-core machine). Under 8 clients the objects of the requests in flight are promoted often enough to
        # set off a full collection every few hundred requests: the p99 of GET /v1/jobs/{id} (issue 11).
        gc.collect()
        gc.freeze()
        if settings.warm_engine:
            # the engine's imports in the background: /healthz answers at once, /readyz once they are done
            warmer = threading.Thread(target=services.warm_engine, name="skillkd-warm-engine", daemon=True)
            app.state.engine_warmer = warmer
            warmer.start()
        task = None
        if run_reaper:
            await reap_once(queued_age_s=0)

            async def loop() -> None:
                while True:
                    await asyncio.sleep(settings.reaper_interval_s)
                    await reap_once()

            task = asyncio.create_task(loop())
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        db_engine.dispose()
        if isinstance(services.reads, AsyncEngine):
            await services.reads.dispose()

    app = FastAPI(
        title="skillkd",
        version="0.1.0",
        lifespan=lifespan,
        description="Compress speech SSL encoders (WavLM, HuBERT, wav2vec 2.0) as a service. "
        "Every /v1 request needs `Authorization: Bearer <API key>`. "
        'Errors answer `{"error": {"code", "message"}}`.',
    )
    app.state.services = services
    app.state.metrics = Metrics(services)
    app.add_middleware(ReadRetryMiddleware)  # innermost: a read on a dropped connection runs again, or 503
    app.add_middleware(ErrorMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: sees ErrorMiddleware's 500s

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts = [f"{_field(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:5]]
        body = {
            "error": {
                "code": "validation_error",
                "message": "; ".join(parts) or "invalid request",
                "fields": [_field(e.get("loc", ())) for e in errors],
            }
        }
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            {"error": {"code": code, "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    for module in (health, teachers, datasets, jobs, presets):
        app.include_router(module.router)
    from api.ui import (
        mount_dashboard,  # the web dashboard at /ui (static files; it calls /v1 like any client)
    )

    mount_dashboard(app)
    return app


__all__ = ["create_app"]
