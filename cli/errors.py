"""The one way a `skillkd` command fails: one line on stderr with the stable error code, a non-zero exit
status, never a traceback.

    an engine error (core.errors.SkillkdError)   `error [<code>]: <message>`; exit 2 for bad input
                                                 (spec_invalid, teacher_invalid, audio_invalid), else 1
    a service's answer or its absence            `error [<code>]: <message>`; exit 2 for input the service
    (ClientError, raised by cli.client)          refused (422, 413: spec, teacher, audio, archive), else 1
                                                 (service_unreachable when nothing answered)
    anything else                                `Error: <message>` (click's format); exit 1

A ClientError is a click exception, so one that no command catches still ends it this way (e.g. the service
going away while `submit --wait` follows a job).
"""

from __future__ import annotations

import sys
from typing import IO, Any, NoReturn

import click

from core.errors import SkillkdError

INPUT_ERRORS = ("spec_invalid", "teacher_invalid", "audio_invalid")
INPUT_STATUSES = (413, 422)  # the service refused the request's input: the README's exit 2


class ClientError(click.ClickException):
    """A 4xx/5xx answer of the service, or none (status 0): `status`, the stable `code` and `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    @property  # click reads `exit_code` after show(): here it depends on the status
    def exit_code(self) -> int:  # type: ignore[override]
        return 2 if self.status in INPUT_STATUSES else 1

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error [{self.code}]: {self.message}", file=file, err=file is None)


def fail(exc: Exception) -> NoReturn:
    """End the command on `exc`, as described above."""
    if isinstance(exc, SkillkdError):
        click.echo(f"error [{exc.code}]: {exc.message}", err=True)
        sys.exit(2 if exc.code in INPUT_ERRORS else 1)
    if isinstance(exc, click.ClickException):
        raise exc
    raise click.ClickException(str(exc))


__all__ = ["INPUT_ERRORS", "INPUT_STATUSES", "ClientError", "fail"]
