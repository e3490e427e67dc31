"""Safe extraction of uploaded zip and tar(.gz/.bz2/.xz) archives.

Refused, with code `archive_unsafe_entry`: absolute names, `..` components, backslashes or NUL in names,
symlinks, hardlinks, devices, FIFOs, duplicate names. Refused with code `archive_too_large`: more entries
than allowed, more bytes than allowed, or a compression ratio above the limit (zip bombs). Sizes are checked
twice: first the sizes the archive declares (zip central directory, tar headers), before anything is written,
then the bytes actually written (a lying header cannot get past the count). The ratio applies only above a
floor (`ratio_floor_bytes`): a small archive of silence (a 5 s silent wav compresses ~500 times) is fine,
and a bomb has to expand past the floor to do harm. Anything unreadable: `archive_invalid`.

On any error the partly extracted tree is the caller's to remove (it extracts into a private temp dir).
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from api.errors import UnprocessableInput

CHUNK = 1 << 20


class ArchiveError(UnprocessableInput):
    code = "archive_invalid"


class UnsafeEntry(ArchiveError):
    code = "archive_unsafe_entry"


class ArchiveTooLarge(ArchiveError):
    code = "archive_too_large"


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int
    max_total_bytes: int
    max_ratio: float
    ratio_floor_bytes: int = 64 * 1024 * 1024  # below this many extracted bytes the ratio is not checked

    def check_declared(self, sizes: list[tuple[str, int, int | None]], archive_size: int) -> None:
        """Refuse on the sizes the archive declares ((name, size, compressed size or None) per file), before
        anything is extracted."""
        total = 0
        for name, size, compressed in sizes:
            total += max(size, 0)
            if total > self.max_total_bytes:
                raise ArchiveTooLarge(
                    f"the archive declares more than {self.max_total_bytes} bytes when extracted"
                )
            if (
                compressed is not None
                and size > self.ratio_floor_bytes
                and size / max(compressed, 1) > self.max_ratio
            ):
                raise ArchiveTooLarge(f"entry {name!r} declares a compression ratio above {self.max_ratio:g}")
        if total > self.ratio_floor_bytes and total / max(archive_size, 1) > self.max_ratio:
            raise ArchiveTooLarge(f"the archive declares a compression ratio above {self.max_ratio:g}")


@dataclass(frozen=True)
class Extracted:
    files: int
    total_bytes: int


def _safe_name(name: str) -> PurePosixPath:
    if not name or "\x00" in name or "\\" in name:
        raise UnsafeEntry(f"entry {name!r}: empty name, NUL or backslash")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeEntry(f"entry {name!r}: absolute path")
    if any(part == ".." for part in path.parts):
        raise UnsafeEntry(f"entry {name!r}: '..' in path")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise UnsafeEntry(f"entry {name!r}: empty path")
    return PurePosixPath(*parts)


class _Writer:
    """Counts real bytes written across all entries and enforces the limits."""

    def __init__(self, dest: Path, limits: ArchiveLimits, archive_size: int) -> None:
        self.dest = dest.resolve()
        self.limits = limits
        self.archive_size = max(archive_size, 1)
        self.entries = 0
        self.files = 0
        self.total = 0
        self.seen: set[PurePosixPath] = set()

    def count_entry(self, name: PurePosixPath) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveTooLarge(f"more than {self.limits.max_entries} entries")
        if name in self.seen:
            raise UnsafeEntry(f"entry {str(name)!r} appears twice")
        self.seen.add(name)

    def target(self, name: PurePosixPath) -> Path:
        path = (self.dest / name).resolve()
        if not path.is_relative_to(self.dest) or path == self.dest:
            raise UnsafeEntry(f"entry {str(name)!r} resolves outside the archive root")
        return path

    def mkdir(self, name: PurePosixPath) -> None:
        self.target(name).mkdir(parents=True, exist_ok=True)

    def write(self, name: PurePosixPath, source: IO[bytes], compressed_size: int | None) -> None:
        path = self.target(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raise UnsafeEntry(f"entry {str(name)!r} collides with another entry")
        written = 0
        with open(path, "xb") as out:
            while chunk := source.read(CHUNK):
                written += len(chunk)
                self.total += len(chunk)
                if self.total > self.limits.max_total_bytes:
                    raise ArchiveTooLarge(f"more than {self.limits.max_total_bytes} bytes when extracted")
                floor = self.limits.ratio_floor_bytes
                if self.total > floor and self.total / self.archive_size > self.limits.max_ratio:
                    raise ArchiveTooLarge(
                        f"compression ratio above {self.limits.max_ratio:g} (entry {str(name)!r})"
                    )
                if (
                    compressed_size is not None
                    and written > floor
                    and written / max(compressed_size, 1) > self.limits.max_ratio
                ):
                    raise ArchiveTooLarge(
                        f"entry {str(name)!r} expands more than {self.limits.max_ratio:g} times"
                    )
                out.write(chunk)
        self.files += 1


def _extract_zip(archive: Path, writer: _Writer) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(f"not a readable zip archive: {exc}") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > writer.limits.max_entries:
            raise ArchiveTooLarge(f"{len(infos)} entries, more than {writer.limits.max_entries}")
        writer.limits.check_declared(
            [(i.filename, i.file_size, i.compress_size) for i in infos if not i.is_dir()], writer.archive_size
        )
        for info in infos:
            name = _safe_name(info.filename.rstrip("/") if info.is_dir() else info.filename)
            writer.count_entry(name)
            mode = info.external_attr >> 16
            if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                kind = "symlink" if stat.S_ISLNK(mode) else "special file"
                raise UnsafeEntry(f"entry {info.filename!r} is a {kind}")
            if info.is_dir():
                writer.mkdir(name)
                continue
            try:
                with zf.open(info) as source:
                    writer.write(name, source, info.compress_size)
            except ArchiveError:
                raise
            except (
                zipfile.BadZipFile,
                zlib.error,
                EOFError,
                OSError,
                NotImplementedError,
                RuntimeError,
            ) as exc:
                raise ArchiveError(f"entry {info.filename!r} is corrupt: {exc}") from exc


def _extract_tar(archive: Path, writer: _Writer) -> None:
    try:
        tf = tarfile.open(archive, mode="r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"not a readable archive (zip or tar): {exc}") from exc
    declared = 0
    try:
        with tf:
            for member in tf:  # streaming: members are read one by one, so limits apply early
                name = _safe_name(member.name.rstrip("/") if member.isdir() else member.name)
                writer.count_entry(name)
                if member.issym() or member.islnk():
                    raise UnsafeEntry(f"entry {member.name!r} is a link")
                if member.isdir():
                    writer.mkdir(name)
                    continue
                if not member.isfile():
                    raise UnsafeEntry(f"entry {member.name!r} is a device, FIFO or other special file")
                declared += member.size  # tar headers come before their data: checked before writing it
                writer.limits.check_declared([(member.name, declared, None)], writer.archive_size)
                source = tf.extractfile(member)
                if source is None:
                    raise ArchiveError(f"entry {member.name!r} cannot be read")
                with source:
                    writer.write(name, source, None)
    except ArchiveError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"archive is corrupt or truncated: {exc}") from exc


def extract(archive: Path, dest: Path, limits: ArchiveLimits) -> Extracted:
    """Extract `archive` (zip or tar, detected by content) into the empty directory `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    writer = _Writer(dest, limits, archive.stat().st_size)
    with open(archive, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"PK":
        _extract_zip(archive, writer)
    else:
        _extract_tar(archive, writer)
    if writer.files == 0:
        raise ArchiveError("the archive holds no files")
    return Extracted(files=writer.files, total_bytes=writer.total)


_JUNK = {"__MACOSX", ".DS_Store"}


def content_root(dest: Path) -> Path:
    """The directory holding the content: `dest`, or its single top-level folder if that is all there is."""
    entries = [p for p in dest.iterdir() if p.name not in _JUNK]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


__all__ = [
    "ArchiveError",
    "UnsafeEntry",
    "ArchiveTooLarge",
    "ArchiveLimits",
    "Extracted",
    "extract",
    "content_root",
]
