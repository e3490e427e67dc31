"""`skillkd`, the command line: every command, by audience.

    cli/engine.py        compress, analyze, inspect, export          (the engine; no service needed)
    cli/evaluate.py      evaluate, compare                           (probes on the engine's models)
    cli/server.py        serve, worker, migrate, keys                (the service's machine)
    cli/remote.py        submit, status, logs, cancel, pause, resume, download, teachers, datasets
                                                                     (any machine that reaches the service)
    cli/demo.py          demo                                        (the whole product on one machine)

and what they share: cli/spec_options.py (the options of a CompressionSpec), cli/progress.py (the progress
bars), cli/errors.py (how a command fails), cli/client.py (the service's HTTP client).

cli may import core, service and api, never worker. Service commands import fastapi / sqlalchemy / celery /
httpx inside their bodies, so `skillkd compress` stays light.
"""

from __future__ import annotations

import click

from cli import demo, engine, evaluate, remote, server


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="skillkd", prog_name="skillkd")
def skillkd() -> None:
    """skillkd: compress speech SSL encoders (WavLM, HuBERT, wav2vec 2.0) with SKILL / DPHuBERT."""


for _command in (*engine.COMMANDS, *evaluate.COMMANDS, *server.COMMANDS, *remote.COMMANDS, demo.demo):
    skillkd.add_command(_command)


def main() -> None:
    skillkd(prog_name="skillkd")


__all__ = ["main", "skillkd"]
