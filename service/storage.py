"""Where files live. Every path is derived from a row id, never from user input.

<storage>/tmp/<random>               uploads being received and archives being extracted
<storage>/teachers/<teacher_id>/     the teacher directory (config.json + weights)
<storage>/datasets/<dataset_id>/     extracted audio
<storage>/jobs/<job_id>/work/        the engine's resumable workdir (checkpoints)
<storage>/jobs/<job_id>/artifacts/   what clients download
"""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path

from service.models import ID_PATTERN

_ID_RE = re.compile(ID_PATTERN)


def _checked(resource_id: str) -> str:
    if not _ID_RE.fullmatch(resource_id):
        raise ValueError(f"not a resource id: {resource_id!r}")
    return resource_id


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~])(/[^\s/'\"`]+)+/?")


def public_message(message: str) -> str:
    """A message for clients: every absolute path cut to its last component
    (`/srv/x/storage/tmp/ab/config.json`
    -> `config.json`), so errors never show the server's layout; the full message goes to the log."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", message)


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def ensure(self) -> None:
        for sub in ("tmp", "teachers", "datasets", "jobs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def new_tmp(self) -> Path:
        """A fresh private temp directory (removed by the caller, see `remove`)."""
        path = self.root / "tmp" / secrets.token_hex(12)
        path.mkdir(parents=True)
        return path

    def teacher_dir(self, teacher_id: str) -> Path:
        return self.root / "teachers" / _checked(teacher_id)

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.root / "datasets" / _checked(dataset_id)

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / _checked(job_id)

    def job_workdir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "work"

    def job_artifacts_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "artifacts"

    def relative(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.root))

    def absolute(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"path escapes the storage root: {relative!r}")
        return path

    @staticmethod
    def remove(path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


__all__ = ["LocalStorage", "public_message"]
