"""`skillkd`: the engine's commands (core.cli) plus the service's, split by audience:

    api/cli/server.py   serve, worker, migrate, keys       (the service's machine)
    api/cli/client.py   submit, status, logs, cancel, pause, resume, download, teachers, datasets
    api/cli/demo.py     demo                               (the whole product on one machine)

Service commands import fastapi / sqlalchemy / celery / httpx inside their bodies, so `skillkd compress`
stays light.
"""

from __future__ import annotations

import click

from api.cli import client, demo, server


def build_cli() -> click.Group:
    try:
        from core.cli import cli as engine_cli
    except ModuleNotFoundError as exc:  # the engine CLI is not there (yet): service commands still work
        if exc.name not in ("core.cli", "core"):
            raise
        engine_cli = click.Group(name="skillkd", help="skillkd: compress speech SSL encoders.")
    for command in (*server.COMMANDS, *client.COMMANDS, demo.demo):
        engine_cli.add_command(command)
    return engine_cli


def main() -> None:
    build_cli()(prog_name="skillkd")


__all__ = ["build_cli", "main"]
