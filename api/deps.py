"""FastAPI dependencies, all in one place: `ServicesDep`, `SessionDep`, `CurrentOwner`, `AdminOwner`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from service.engine import Engine, load_engine
from service.keys import hash_key
from service.models import ApiKey, Owner, utcnow
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
    engine: Engine | None = None
    extra: dict = field(default_factory=dict)

    def get_engine(self) -> Engine:
        if self.engine is None:
            self.engine = load_engine(self.settings)
        return self.engine


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_session(services: ServicesDep) -> Iterator[Session]:
    with services.factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer skd_...`")


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


def get_current_owner(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Owner:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    row = session.query(ApiKey).filter(ApiKey.key_hash == hash_key(credentials.credentials),
                                       ApiKey.revoked_at.is_(None)).one_or_none()
    if row is None:
        raise Unauthorized("unknown or revoked API key")
    owner = session.get(Owner, row.owner_id)
    if owner is None:
        raise Unauthorized("unknown or revoked API key")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):  # throttled write
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        session.commit()
    return owner


CurrentOwner = Annotated[Owner, Depends(get_current_owner)]


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


def get_admin(owner: CurrentOwner) -> Owner:
    if not owner.is_admin:
        raise Forbidden("this needs an admin key")
    return owner


AdminOwner = Annotated[Owner, Depends(get_admin)]

__all__ = ["Services", "ServicesDep", "SessionDep", "CurrentOwner", "AdminOwner", "get_services"]
