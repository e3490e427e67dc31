"""Reads that survive a database connection the server has dropped (a PostgreSQL restart, a failover,
`pg_terminate_backend`): one mechanism for every read route instead of a retry in each.

    ReadRetryMiddleware    a GET or HEAD that failed on a lost connection before its answer started runs
                           again, once, on a new connection (SQLAlchemy has discarded the lost one and, on a
                           disconnect, the pool's older ones); if that fails the same way, 503
                           `database_unavailable` with `Retry-After: 1`, never a 500
    dropped_connection     whether an exception is such a lost connection (SQLAlchemy's DBAPIError with
                           `connection_invalidated`), also when wrapped in an exception group or as a cause

Why the whole request: a read route holds no state between its statements that a second run could not
rebuild (GET and HEAD change nothing here), and the lost connection may be met anywhere on the way: the API
key's lookup, the route's queries, the first page of an event stream. Writes are not repeated (a COMMIT may
have reached the server before the connection went). A stream that has started is not repeated either: the
events stream (api/routes/jobs.py) polls again on its next tick instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD"})
UNAVAILABLE = json.dumps(
    {
        "error": {
            "code": "database_unavailable",
            "message": "the service's database is not answering (a restart or failover); retry in a moment",
        }
    }
).encode()


def dropped_connection(exc: BaseException) -> bool:
    """True when `exc`, a member of it (exception groups) or its cause is a lost database connection."""
    pending, seen = [exc], set()
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        pending.extend(getattr(error, "exceptions", ()))  # BaseExceptionGroup (anyio task groups)
        if error.__cause__ is not None:
            pending.append(error.__cause__)
    return False


class ReadRetryMiddleware:
    """Pure ASGI, inside `api.http.ErrorMiddleware` (which answers any other failure 500)."""

    def __init__(self, app: Any, retries: int = 1) -> None:
        self.app, self.retries = app, retries

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in READ_METHODS:
            await self.app(scope, receive, send)
            return
        started = False
        received: list[Any] = []  # the request's body messages, replayed to a repeated run

        async def send_wrapper(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        for attempt in range(self.retries + 1):
            try:
                await self.app(scope, _replaying(receive, received), send_wrapper)
                return
            except Exception as exc:
                if started or not dropped_connection(exc):
                    raise
                log.warning(
                    "%s %s: database connection lost (%s), %s",
                    scope["method"],
                    scope.get("path"),
                    type(exc).__name__,
                    "reading again on a new one" if attempt < self.retries else "answering 503",
                )
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(UNAVAILABLE)).encode()),
                    (b"retry-after", b"1"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": UNAVAILABLE})


def _replaying(receive: Any, received: list[Any]) -> Any:
    """`receive` that first hands out the body messages an earlier run received (and records new ones)."""
    replay = list(received)

    async def receive_wrapper() -> Any:
        if replay:
            return replay.pop(0)
        message = await receive()
        if message["type"] == "http.request":
            received.append(message)
        return message

    return receive_wrapper


__all__ = ["ReadRetryMiddleware", "dropped_connection", "READ_METHODS"]
