"""API keys: shown once at creation, stored as sha256; the first characters (prefix) identify a key."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.models import ApiKey, Owner, new_id, utcnow

KEY_PREFIX = "skd_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    owner_id: str
    key_id: str
    prefix: str
    key: str  # plaintext, never stored


def create_key(session: Session, *, owner_name: str, admin: bool = False, key_name: str = "") -> NewKey:
    """Create the owner if needed (an existing owner keeps its admin flag unless `admin` is True)."""
    owner = session.scalar(select(Owner).where(Owner.name == owner_name))
    if owner is None:
        owner = Owner(id=new_id("own"), name=owner_name, is_admin=admin)
        session.add(owner)
        session.flush()
    elif admin and not owner.is_admin:
        owner.is_admin = True
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key"), owner_id=owner.id, prefix=key[:12], key_hash=hash_key(key), name=key_name)
    session.add(row)
    session.flush()
    return NewKey(owner_id=owner.id, key_id=row.id, prefix=row.prefix, key=key)


def key_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiKey)) or 0


def authenticate(
    session: Session, *, key_hash: str, touch_every: timedelta = timedelta(minutes=1)
) -> Owner | None:
    """The owner of an active key with this digest (None if unknown or revoked); records its use, at most
    once per `touch_every` (a write per request would serialise SQLite)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))
    if row is None:
        return None
    owner = session.get(Owner, row.owner_id)
    now = utcnow()
    if owner is not None and (row.last_used_at is None or now - row.last_used_at > touch_every):
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        session.commit()
    return owner


def owner_for_key(session: Session, *, key: str) -> Owner | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    if row is None:
        return None
    return session.get(Owner, row.owner_id)


def list_keys(session: Session) -> list[tuple[ApiKey, Owner]]:
    return list(
        session.execute(
            select(ApiKey, Owner).join(Owner, Owner.id == ApiKey.owner_id).order_by(ApiKey.created_at)
        ).all()
    )


def revoke_key(session: Session, *, key_id_or_prefix: str) -> int:
    rows = session.scalars(
        select(ApiKey).where(
            (ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix), ApiKey.revoked_at.is_(None)
        )
    ).all()
    for row in rows:
        row.revoked_at = utcnow()
    return len(rows)


__all__ = [
    "authenticate",
    "key_count",
    "create_key",
    "owner_for_key",
    "list_keys",
    "revoke_key",
    "hash_key",
    "NewKey",
]
