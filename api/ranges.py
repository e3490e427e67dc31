"""Range requests and conditional requests for artifact downloads (RFC 9110), as pure functions of the
request's header values, plus the chunked file reader that serves a range.

    byte_range(Range, size)           §14.1.2, §14.2: one satisfiable byte range, None (ignore the header:
                                      send it all) or UNSATISFIABLE (416)
    weak_match(If-None-Match, etag)   §13.1.2: `*` or a list of entity tags, weak comparison (§8.8.3.2)
    strong_match(If-Match, etag)      §13.1.1: `*` or a list of entity tags, strong comparison (§8.8.3.2)
    range_applies(If-Range, etag)     §13.1.5: a Range is honoured only for the representation named
    file_chunks(path, first, length)  the bytes of a range, read in chunks for a streaming response

    precondition_failed(what, etag)   the 412 answer of an If-Match that names no current version

The artifact download (api/routes/jobs.py) evaluates, in the order of §13.2.2: If-Match (412), If-None-Match
(304), then Range with If-Range (206, 416 or the whole content); the dashboard's static files (api/ui)
evaluate If-Match before Starlette's own If-None-Match.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal

from api.errors import ApiError

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
UNSATISFIABLE: Final = "unsatisfiable"


def byte_range(header: str | None, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """The Range header (§14.2) against a representation of `size` bytes.

    (first, last), both inclusive, of a satisfiable single range, `last` cut to the end (§14.1.2); a suffix
    range `bytes=-N` is the last N bytes. None when the header is absent, malformed, of another unit
    (§14.1), invalid (`last < first`) or a list of several ranges: a server may ignore a Range (§14.2), and
    then sends the whole content. UNSATISFIABLE when it is well-formed but no byte of it exists (it starts at
    or beyond the end, a zero-length suffix, or any range of empty content): 416 (§15.5.17).
    """
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    first_s, last_s = m.groups()
    if not first_s:  # suffix range: the last N bytes
        n = int(last_s)
        if n == 0:
            return UNSATISFIABLE
        return (max(0, size - n), size - 1) if size else UNSATISFIABLE
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if last_s and last < first:
        return None  # invalid: ignored
    if first >= size:
        return UNSATISFIABLE
    return first, min(last, size - 1)


def _tags(header: str) -> list[str]:
    """The members of an entity-tag list (`If-Match`, `If-None-Match`), `*` included, as sent."""
    return [t.strip() for t in header.split(",")]


def weak_match(header: str, etag: str) -> bool:
    """If-None-Match (§13.1.2): true when the header is `*` or lists a tag equal to `etag` under the weak
    comparison (§8.8.3.2: opaque tags equal whether either is weak, `W/"x"` matches `"x"`). For GET and HEAD a
    true answer is 304 Not Modified."""
    tags = _tags(header)
    return "*" in tags or etag in [t[2:] if t.startswith("W/") else t for t in tags]


def strong_match(header: str, etag: str) -> bool:
    """If-Match (§13.1.1): true when the header is `*` (a current representation exists) or lists a tag equal
    to `etag` under the strong comparison (§8.8.3.2: neither tag weak, so `W/"x"` matches nothing). A false
    answer is 412 Precondition Failed. `etag` is a strong tag (`"..."`)."""
    tags = _tags(header)
    return "*" in tags or etag in tags


def precondition_failed(what: str, etag: str) -> ApiError:
    """412 Precondition Failed (§15.5.13) for an If-Match naming no current version of `what`; the answer
    carries the current ETag so the client can fetch that version."""
    return ApiError(
        f"If-Match names no current version of {what} (its ETag is {etag})",
        code="precondition_failed",
        status_code=412,
        headers={"ETag": etag},
    )


def range_applies(if_range: str | None, etag: str) -> bool:
    """If-Range (§13.1.5): whether a Range is honoured. Without the header, yes; with it, only when it names
    the current representation by a strong comparison with `etag` (a weak tag never does). A date never
    matches here: artifacts send no Last-Modified. Otherwise the client's copy is another version and the
    whole content is sent (200)."""
    return if_range is None or if_range.strip() == etag


def file_chunks(path: Path, first: int, length: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """`length` bytes of `path` from byte `first`, at most `chunk` at a time (fewer if the file is
    shorter): the body of a 200 or of a 206 Partial Content answer (§15.3.7)."""
    with open(path, "rb") as f:
        f.seek(first)
        while length > 0:
            data = f.read(min(chunk, length))
            if not data:
                return
            length -= len(data)
            yield data


__all__ = [
    "UNSATISFIABLE",
    "byte_range",
    "weak_match",
    "strong_match",
    "precondition_failed",
    "range_applies",
    "file_chunks",
]
