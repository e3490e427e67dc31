"""HTTP range requests and entity tags for artifact downloads (RFC 9110), as pure functions of the headers.

byte_range(Range, size)      §14.2: one satisfiable byte range, None (ignore: send it all) or "unsatisfiable"
etag_matches(If-None-Match)  §13.1.2: `*` or a list of entity tags, compared weakly
file_chunks(path, first, n)  the bytes of a range, read in chunks for a streaming response
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
UNSATISFIABLE = "unsatisfiable"


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """RFC 9110 §14.2: (first, last) of a satisfiable single byte range; None when the header is absent,
    malformed, of another unit or several ranges (a server then ignores it and sends the whole content);
    "unsatisfiable" when it is well-formed but starts beyond the end."""
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


def etag_matches(header: str, etag: str) -> bool:
    """If-None-Match: `*` or a list of (weak) entity tags, compared weakly (RFC 9110 §13.1.2)."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in [t[2:] if t.startswith("W/") else t for t in tags]


def file_chunks(path: Path, first: int, length: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """`length` bytes of `path` from byte `first`, at most `chunk` at a time (fewer if the file is
    shorter)."""
    with open(path, "rb") as f:
        f.seek(first)
        while length > 0:
            data = f.read(min(chunk, length))
            if not data:
                return
            length -= len(data)
            yield data


__all__ = ["UNSATISFIABLE", "byte_range", "etag_matches", "file_chunks"]
