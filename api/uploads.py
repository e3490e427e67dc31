"""Receiving an upload: streamed to a temp file with a size limit, sha256 computed while streaming."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from api.errors import PayloadTooLarge, UnprocessableInput


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


__all__ = ["receive", "Received"]
