"""The ``lfsb`` command line: a root group that command groups (``lfsb ltx``, …) are added to."""

from importlib.metadata import PackageNotFoundError, version

import click

from .api import COMMANDS, connection_options
from .ltx import ltx
from .serve import serve

try:
    _VERSION = version("lfsb")
except PackageNotFoundError:  # run from a source tree that is not installed
    _VERSION = "unknown"


@click.group()
@click.version_option(_VERSION, prog_name="lfsb")
@connection_options
def main(cluster: str | None, endpoint: str | None, token: str | None) -> None:
    """lfsb: a backup server for SQLite databases replicated by LiteFS."""


for command in [*COMMANDS, serve, ltx]:
    main.add_command(command)
