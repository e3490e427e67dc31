"""Pieces the resource routes share: OpenAPI for raw-archive bodies, error responses, pagination."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from api.schemas import ErrorBody

Row = TypeVar("Row")

ARCHIVE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a zip or tar(.gz) archive as the raw request body (streamed; not multipart)",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in ("application/zip", "application/x-tar", "application/gzip", "application/octet-stream")
        },
    }
}

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 429)
}

MAX_PAGE = 200


def owned(session: Session, model: type[Row], row_id: str, owner: Any) -> Row | None:
    """The row with this id if it belongs to `owner`; None otherwise (another owner's row does not exist)."""
    row = session.get(model, row_id)
    return row if row is not None and row.owner_id == owner.id else None  # type: ignore[attr-defined]


def page(session: Session, model: type[Row], owner: Any, limit: int, after: str | None,
         where: list[Any] | None = None) -> tuple[list[Row], str | None]:
    """One page of the owner's rows, newest id first, and the cursor of the next page (None on the last).
    Ids are time-ordered, so `after` (the previous page's last id) is a stable cursor under inserts."""
    column = model.id  # type: ignore[attr-defined]
    query: Select[Any] = select(model).where(model.owner_id == owner.id, *(where or []))  # type: ignore[attr-defined]
    if after:
        query = query.where(column < after)
    rows = list(session.scalars(query.order_by(column.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more else None)  # type: ignore[attr-defined]
