"""How the CLI prints: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click


def print_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """An aligned table with a header row."""
    table = [list(columns)] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def print_fields(title: str, fields: Sequence[tuple[str, object]]) -> None:
    """A title, then ``key = value`` lines aligned on the ``=``."""
    click.echo(title)
    width = max((len(k) for k, _ in fields), default=0)
    for key, value in fields:
        click.echo(f"  {key.ljust(width)} = {value}")


def print_json(data: Any) -> None:
    """Pretty JSON on stdout."""
    click.echo(json.dumps(data, indent=2))
