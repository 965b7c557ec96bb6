"""``lfsb serve``: run the server with development-friendly defaults."""

from __future__ import annotations

import os
import sys

import click

from ..config import load_config
from ..errors import LfsbError


@click.command()
@click.option(
    "--data", "data_path", envvar="LFSB_DATA_PATH", default="./lfsb-data", show_default=True,
    help="Data directory (metadata db, L0 files; local backups when BUCKET_NAME is unset).",
)  # fmt: skip
@click.option("--bind", envvar="LFSB_BIND", default="127.0.0.1:2200", show_default=True, help="host:port")
def serve(data_path: str, bind: str) -> None:
    """Run the backup server (other settings come from the LFSB_*, BUCKET_NAME and AWS_* variables)."""
    from ..server.main import run

    try:
        config = load_config(os.environ, data_path=data_path, bind=bind)
    except LfsbError as e:
        raise click.ClickException(e.message) from None
    sys.exit(run(config))
