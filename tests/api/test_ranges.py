"""api.ranges: RFC 9110 byte ranges and entity tags as pure functions (the HTTP tests cover the wire)."""

from pathlib import Path

import pytest

from api.ranges import UNSATISFIABLE, byte_range, etag_matches, file_chunks


@pytest.mark.parametrize(
    "header, size, expected",
    [
        (None, 10, None),
        ("", 10, None),
        ("bytes=0-4", 10, (0, 4)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=5-100", 10, (5, 9)),  # a last byte beyond the end is cut to the end
        ("bytes=-3", 10, (7, 9)),  # suffix: the last 3 bytes
        ("bytes=-30", 10, (0, 9)),
        ("bytes=-0", 10, UNSATISFIABLE),
        ("bytes=10-", 10, UNSATISFIABLE),  # starts beyond the end
        ("bytes=-3", 0, UNSATISFIABLE),
        ("bytes=4-2", 10, None),  # invalid: ignored, the whole content is sent
        ("bytes=0-1,4-5", 10, None),  # several ranges: ignored
        ("items=0-4", 10, None),  # another unit
        ("bytes=-", 10, None),
        (" bytes=1-2 ", 10, (1, 2)),
    ],
)
def test_byte_range(header: str | None, size: int, expected: object) -> None:
    assert byte_range(header, size) == expected


@pytest.mark.parametrize(
    "header, matches",
    [
        ('"abc"', True),
        ('W/"abc"', True),  # If-None-Match compares weakly
        ('"x", W/"abc"', True),
        ("*", True),
        ('"abcd"', False),
        ('"x", "y"', False),
    ],
)
def test_etag_matches(header: str, matches: bool) -> None:
    assert etag_matches(header, '"abc"') is matches


def test_file_chunks_read_the_range_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(100)))
    chunks = list(file_chunks(path, 10, 25, chunk=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert b"".join(chunks) == bytes(range(10, 35))
    assert b"".join(file_chunks(path, 90, 50)) == bytes(range(90, 100))  # the file ends first
