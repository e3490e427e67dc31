"""api.ranges: RFC 9110 byte ranges and entity tags as pure functions (the HTTP tests cover the wire:
tests/api/test_hardening.py's artifact test)."""

from pathlib import Path

import pytest

from api.ranges import UNSATISFIABLE, byte_range, file_chunks, range_applies, strong_match, weak_match


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
    "header, size, expected",
    [
        ("bytes=0-0", 1, (0, 0)),  # the one byte
        ("bytes=0-", 0, UNSATISFIABLE),  # no byte of empty content exists
        ("bytes=0-0", 0, UNSATISFIABLE),
        ("bytes=9-9", 10, (9, 9)),
        ("bytes=9-", 10, (9, 9)),
        ("bytes=-10", 10, (0, 9)),  # a suffix as long as the content: all of it
        ("bytes=0-4, 6-8", 10, None),  # a list, however spelled: ignored
        ("bytes=5-1,0-0", 10, None),
        ("bytes=20-30,0-1", 10, None),  # even one a 416 alone would be
        ("bytes=1-2 ", 10, (1, 2)),
        ("bytes= 1-2", 10, None),  # not the grammar of §14.1.2: ignored
        ("Bytes=1-2", 10, None),
        ("bytes=a-2", 10, None),
        ("bytes=1-2-3", 10, None),
        ("bytes=0-99999999999999999999", 10, (0, 9)),  # no overflow
    ],
)
def test_byte_range_edges(header: str, size: int, expected: object) -> None:
    assert byte_range(header, size) == expected


ETAG = '"abc"'


@pytest.mark.parametrize(
    "header, weak, strong",
    [
        ('"abc"', True, True),
        ('W/"abc"', True, False),  # If-None-Match compares weakly, If-Match strongly
        ('"x", W/"abc"', True, False),
        ('"x","abc"', True, True),  # a list, with or without spaces
        ('"x" ,  "abc" ', True, True),
        ("*", True, True),  # any current representation
        ('"x", *', True, True),
        ('"abcd"', False, False),
        ('"ABC"', False, False),  # opaque tags compare case-sensitively
        ("abc", False, False),  # unquoted: not an entity tag
        ('"x", "y"', False, False),
        ('w/"abc"', False, False),  # the weakness indicator is case-sensitive
    ],
)
def test_entity_tag_lists(header: str, weak: bool, strong: bool) -> None:
    assert weak_match(header, ETAG) is weak
    assert strong_match(header, ETAG) is strong


@pytest.mark.parametrize(
    "if_range, applies",
    [
        (None, True),  # no If-Range: the Range applies
        ('"abc"', True),
        (' "abc" ', True),
        ('W/"abc"', False),  # If-Range needs a strong match
        ('"other"', False),  # the client holds another version: the whole content
        ("Sat, 05 Dec 2026 06:00:00 GMT", False),  # a date: artifacts have no Last-Modified
        ("", False),
    ],
)
def test_range_applies(if_range: str | None, applies: bool) -> None:
    assert range_applies(if_range, ETAG) is applies


def test_file_chunks_read_the_range_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(100)))
    chunks = list(file_chunks(path, 10, 25, chunk=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert b"".join(chunks) == bytes(range(10, 35))
    assert b"".join(file_chunks(path, 90, 50)) == bytes(range(90, 100))  # the file ends first
