"""The one way a `skillkd` command fails: one line on stderr with the stable error code, a non-zero exit
status, never a traceback.

    an engine error (core.errors.SkillkdError)   `error [<code>]: <message>`; exit 2 for bad input
                                                 (spec_invalid, teacher_invalid, audio_invalid), else 1
    anything else, e.g. a service answer          `Error: <status> <code>: <message>` (click's format); exit 1
    (cli.client.ClientError)
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from core.errors import SkillkdError

INPUT_ERRORS = ("spec_invalid", "teacher_invalid", "audio_invalid")


def fail(exc: Exception) -> NoReturn:
    """End the command on `exc`, as described above."""
    if isinstance(exc, SkillkdError):
        click.echo(f"error [{exc.code}]: {exc.message}", err=True)
        sys.exit(2 if exc.code in INPUT_ERRORS else 1)
    raise click.ClickException(str(exc))


__all__ = ["INPUT_ERRORS", "fail"]
