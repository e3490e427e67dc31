"""FastAPI dependencies, all in one place: `ServicesDep`, `SessionDep`, `CurrentOwner`, `AdminOwner`."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine as SqlEngine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from service.engine import Engine, load_engine
from service.keys import authenticate, hash_key
from service.models import Owner
from service.queue import Enqueuer
from service.settings import Settings
from service.storage import LocalStorage


@dataclass
class Services:
    """What the routes use; built once per app by `create_app`."""

    settings: Settings
    factory: sessionmaker[Session]
    storage: LocalStorage
    enqueuer: Enqueuer
    # single reads without an ORM session (GET /v1/jobs/{id}): on PostgreSQL an asyncio engine with a pool of
    # autocommit connections of its own, on SQLite the same engine (api.app.reads_engine)
    reads: SqlEngine | AsyncEngine
    engine: Engine | None = None
    extra: dict = field(default_factory=dict)
    owners: KeyCache = field(default_factory=lambda: KeyCache(5.0))

    # None until `warm_engine` starts; then "loading", "ok", or "error: ..." (/readyz's `engine` check)
    engine_state: str | None = None
    _engine_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get_engine(self) -> Engine:
        with self._engine_lock:
            if self.engine is None:
                self.engine = load_engine(self.settings)
            return self.engine

    def warm_engine(self) -> None:
        """Load the engine and what its job checks import (torch, transformers: seconds) before the first
        job creation needs them, instead of in that request (6.5 s on the 2-core machine, busy). Run in a
        thread at startup; a request meanwhile waits for the same imports, no longer."""
        self.engine_state = "loading"
        try:
            engine = self.get_engine()
            warm = getattr(engine, "warm", None)
            if warm is not None:
                warm()
        except Exception as exc:
            self.engine_state = f"error: {type(exc).__name__}: {exc}"[:300]
        else:
            self.engine_state = "ok"


class KeyCache:
    """API key digest -> its owner, for `ttl_s` seconds: a request with a key seen recently costs no database
    round trip for authentication (the profile of GET /v1/jobs/{id} showed two queries of the three were the
    key and its owner). A revoked key stops working within `ttl_s` (the `auth_cache_s` setting)."""

    def __init__(self, ttl_s: float, max_size: int = 10_000) -> None:
        self.ttl_s, self.max_size = ttl_s, max_size
        self._items: dict[str, tuple[float, Owner]] = {}

    def get(self, digest: str) -> Owner | None:
        item = self._items.get(digest)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def put(self, digest: str, owner: Owner) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._items) >= self.max_size:
            self._items.clear()
        self._items[digest] = (time.monotonic() + self.ttl_s, owner)


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_session(services: ServicesDep) -> AsyncIterator[Session]:
    """A session for the request. Creating it does no I/O, so this runs on the event loop (no thread hop);
    the route's queries run in the route's own thread."""
    session = services.factory()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer skd_...`")


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


async def get_current_owner(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Owner:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    if len(credentials.credentials) > 200:
        raise Unauthorized("unknown or revoked API key")
    digest = hash_key(credentials.credentials)
    owner = services.owners.get(digest)
    if owner is None:

        def lookup() -> Owner | None:
            with services.factory() as session:
                return authenticate(session, key_hash=digest)

        owner = await run_in_threadpool(lookup)
        if owner is None:
            raise Unauthorized("unknown or revoked API key")
        services.owners.put(digest, owner)
    return owner


CurrentOwner = Annotated[Owner, Depends(get_current_owner)]


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


async def get_admin(owner: CurrentOwner) -> Owner:
    if not owner.is_admin:
        raise Forbidden("this needs an admin key")
    return owner


AdminOwner = Annotated[Owner, Depends(get_admin)]

__all__ = ["Services", "ServicesDep", "SessionDep", "CurrentOwner", "AdminOwner", "get_services"]
