"""Receiving an upload: streamed to a temp file with a size limit, sha256 computed while streaming; and the
whole archive flow shared by teachers and datasets (`ingest_archive`)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import make_transient

from api.archives import ArchiveLimits, Extracted, extract
from api.errors import PayloadTooLarge, UnprocessableInput
from core.errors import SkillkdError
from service import crud
from service.storage import public_message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    path: Path
    sha256: str
    size: int


async def receive(chunks: AsyncIterator[bytes], dest: Path, *, limit: int, declared: str | None) -> Received:
    """Write `chunks` to `dest`; 413 as soon as more than `limit` bytes arrive (or are declared)."""
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            declared_size = -1
        if declared_size > limit:
            raise PayloadTooLarge(f"upload of {declared_size} bytes is above the limit of {limit} bytes")
    digest = hashlib.sha256()
    size = 0
    with open(dest, "xb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"upload is above the limit of {limit} bytes")
            digest.update(chunk)
            out.write(chunk)
    if size == 0:
        raise UnprocessableInput("empty upload: send the archive as the request body", code="upload_empty")
    return Received(path=dest, sha256=digest.hexdigest(), size=size)


def input_error(exc: SkillkdError, folder: Path, *, label: str = "the archive") -> UnprocessableInput:
    """The engine's verdict on an upload, for the client: its stable code and a message about their input,
    with no server path in it (`folder` reads `label`: the extraction folder "the archive", a registered
    server directory "the registered directory"); the full message goes to the log."""
    log.info("input refused (%s): %s", exc.code, exc.message)
    message = exc.message.replace(str(folder.resolve()), label).replace(str(folder), label)
    return UnprocessableInput(public_message(message), code=exc.code)


def limits_of(services: Any) -> ArchiveLimits:
    s = services.settings
    return ArchiveLimits(
        max_entries=s.max_archive_entries,
        max_total_bytes=s.max_extracted_bytes,
        max_ratio=s.max_compression_ratio,
        ratio_floor_bytes=s.archive_ratio_floor_bytes,
    )


Prepare = Callable[[Received, Extracted, Path], tuple[Path, Any]]


async def ingest_archive(
    request: Request, services: Any, final_dir: Path, prepare: Prepare, *, model: type, owner_id: str
) -> tuple[Any, bool]:
    """Upload flow of an archive resource: stream the body to a private temporary folder (size limit, sha256),
    extract it safely, let `prepare(received, extracted, folder)` validate it and return (the directory to
    keep, the database row), move that directory to `final_dir` and insert the row. Returns (row, True).

    An archive whose sha256 the owner has already uploaded as a `model` row (and not deleted) is not
    extracted again: returns (that row, False), so re-submitting the same directory resolves to the same
    teacher or dataset. Another owner's uploads are never looked at. Concurrent identical uploads by one owner
    resolve to one row too: the unique index on (owner_id, sha256) refuses every insert but the first, and
    each of the others removes its files and returns (the first's row, False).

    All or nothing: on any error, including a client disconnect, no row is written and neither the temporary
    folder nor `final_dir` is left behind. The blocking part runs in a worker thread."""
    storage = services.storage
    tmp = storage.new_tmp()
    moved = False
    try:
        received = await receive(
            request.stream(),
            tmp / "upload",
            limit=services.settings.max_upload_bytes,
            declared=request.headers.get("content-length"),
        )

        def known() -> Any:
            with services.factory() as session:
                return crud.same_upload(session, model=model, owner_id=owner_id, sha256=received.sha256)

        def insert(row: Any) -> Any:
            with services.factory() as session:
                return crud.insert(session, row=row)

        def validate_and_store() -> tuple[Any, bool]:
            nonlocal moved
            first = known()
            if first is not None:
                return first, False
            extracted = extract(received.path, tmp / "x", limits_of(services))
            content, row = prepare(received, extracted, tmp / "x")
            final_dir.parent.mkdir(parents=True, exist_ok=True)
            content.rename(final_dir)
            moved = True
            try:
                return insert(row), True
            except IntegrityError:
                # The same owner's upload of the same archive won the race since the check above (the unique
                # index on owner_id, sha256): answer with its row, as the check would have, without our files.
                winner = known()
                if winner is None:  # deleted since it won: this upload is new again, inserted as new
                    make_transient(row)
                    return insert(row), True
            storage.remove(final_dir)
            moved = False
            return winner, False

        return await run_in_threadpool(validate_and_store)
    except BaseException:
        if moved:
            storage.remove(final_dir)
        raise
    finally:
        storage.remove(tmp)


__all__ = ["receive", "Received", "ingest_archive", "limits_of"]
