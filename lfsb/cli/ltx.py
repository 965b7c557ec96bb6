"""``lfsb ltx``: verify, inspect, compact and apply LTX files; SQLite files to and from snapshots.

Each command is a thin layer over :mod:`lfsb.ltx`. Bad input (a missing file, a file that is not
LTX, inputs that cannot be compacted) ends a command with one ``Error: <message>`` line on stderr
and exit status 1, never a traceback: :class:`LTXGroup` is the one place that turns errors into it.
Files are written next to their destination under a temporary name and renamed into place only
when complete, so a failed command never leaves a half-written snapshot or database.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import click

from lfsb.ltx import (
    EMPTY_DB_CHECKSUM,
    Decoder,
    Header,
    LTXError,
    Pos,
    Trailer,
    compact,
    database_checksum,
    decode_database,
    encode_database,
    format_checksum,
    format_timestamp,
    format_txid,
    parse_sqlite_header,
    verify,
)
from lfsb.ltx.sqlite import SQLITE_HEADER_SIZE

PATH = click.Path(path_type=Path)


def _file_error(path: object, err: LTXError | OSError) -> str:
    """``<path>: <reason>``: the error line for one file."""
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return f"{path}: {reason}"


def error_message(err: LTXError | OSError) -> str:
    """The one-line text of an error: the LTX error text, or ``<file>: <reason>`` for an OS error."""
    if isinstance(err, OSError) and err.filename is not None:
        return _file_error(err.filename, err)
    return str(err)


class LTXGroup(click.Group):
    """A command group whose commands end with ``Error: <message>`` and status 1 on LTX and OS errors."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, turning :class:`LTXError` and :class:`OSError` into a click error."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # stdout closed early (``| head``): click handles it quietly
        except (LTXError, OSError) as e:
            raise click.ClickException(error_message(e)) from e


@contextmanager
def _about(path: Path) -> Iterator[None]:
    """Prefix the LTX errors raised inside with the file they are about."""
    try:
        yield
    except LTXError as e:
        raise e.at(f"{path}: {e.stage}" if e.stage else str(path)) from None


@contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    """A new empty file that replaces ``path`` (keeping its mode) only if the block succeeds."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:  # name the destination, not the temporary file
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        with open(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _wrote(path: Path, header: Header, trailer: Trailer) -> None:
    """Report a file written: its size in pages and its position (TXID/post-apply checksum)."""
    click.echo(f"{path}: {header.commit} pages, position {Pos(header.max_txid, trailer.post_apply_checksum)}")


def _list_timestamp(ms: int) -> str:
    """RFC 3339 in UTC to the second (``2023-11-14T22:13:21Z``, the fraction cut); empty when unset."""
    return format_timestamp(ms)[:-5] + "Z" if ms else ""  # drop ".123Z", keep the "Z"


@click.group(cls=LTXGroup)
def ltx() -> None:
    """Work with LTX files and snapshots.

    Verify, inspect, compact and apply LTX files; convert SQLite files to and from snapshots.
    """


@ltx.command("verify")
@click.argument("files", nargs=-1, required=True, type=PATH)
def verify_cmd(files: Sequence[Path]) -> None:
    """Verify LTX files.

    Prints ok when every file is valid; otherwise '<file>: <error>' per invalid file, then
    'N ok, M invalid', and exits with status 1.
    """
    invalid = 0
    for path in files:
        try:
            with path.open("rb") as f:
                verify(f)
        except (LTXError, OSError) as e:
            click.echo(_file_error(path, e))
            invalid += 1
    if invalid:
        click.echo(f"{len(files) - invalid} ok, {invalid} invalid")
        sys.exit(1)
    click.echo("ok")


@ltx.command()
@click.argument("file", type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def dump(file: Path, as_json: bool) -> None:
    """Show an LTX file's header, trailer and pages.

    The file is verified first; TXIDs and checksums are 16 hex digits, the timestamp is UTC.
    """
    with _about(file), file.open("rb") as f:
        header, trailer, pgnos = verify(f)
        if as_json:
            obj = {"header": header.to_json(), "trailer": trailer.to_json(), "page_numbers": pgnos}
            click.echo(json.dumps(obj, indent=2))
            return
        fields = {
            **header.to_json(),
            "flags": f"0x{header.flags:08x}",
            "timestamp": header.timestamp_text,
            **trailer.to_json(),
            "page_numbers": " ".join(map(str, pgnos)),
        }
    width = max(map(len, fields)) + 1
    for key, value in fields.items():
        click.echo(f"{key + ':':<{width}} {value}".rstrip())


@ltx.command("list")
@click.argument("files", nargs=-1, required=True, type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
def list_cmd(files: Sequence[Path], as_json: bool) -> None:
    """List LTX files, one row per file.

    Shows TXIDs, commit, page count, pre/post-apply checksums and timestamp. Invalid files are
    reported on stderr and make the exit status 1.
    """
    rows = []
    for path in files:
        try:
            with path.open("rb") as f:
                header, trailer, pgnos = verify(f)
            timestamp = _list_timestamp(header.timestamp)
        except (LTXError, OSError) as e:
            click.echo(_file_error(path, e), err=True)
            continue
        rows.append(
            {
                "file": str(path),
                "min_txid": format_txid(header.min_txid),
                "max_txid": format_txid(header.max_txid),
                "commit": header.commit,
                "page_count": len(pgnos),
                "pre_apply_checksum": format_checksum(header.pre_apply_checksum),
                "post_apply_checksum": format_checksum(trailer.post_apply_checksum),
                "timestamp": timestamp,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        columns = ["MIN_TXID", "MAX_TXID", "COMMIT", "PAGES", "PRE_APPLY", "POST_APPLY", "TIMESTAMP", "FILE"]
        keys = ["min_txid", "max_txid", "commit", "page_count", "pre_apply_checksum", "post_apply_checksum"]
        table = [columns] + [[str(r[k]) for k in [*keys, "timestamp", "file"]] for r in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
        for line in table:
            click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    if len(rows) < len(files):
        sys.exit(1)


@ltx.command()
@click.argument("db", type=PATH)
def checksum(db: Path) -> None:
    """Print the database checksum of a SQLite file.

    16 hex digits; the lock page is excluded and an empty file is 8000000000000000.
    """
    with _about(db), db.open("rb") as f:
        head = f.read(SQLITE_HEADER_SIZE)
        value = EMPTY_DB_CHECKSUM
        if head:
            f.seek(0)
            value = database_checksum(f, parse_sqlite_header(head).page_size)
    click.echo(format_checksum(value))


@ltx.command("encode-db")
@click.argument("db", type=PATH)
@click.option("-o", "--output", "out", required=True, type=PATH, help="The snapshot to write.")
@click.option("--no-compress", is_flag=True, help="Store the pages uncompressed (default: LZ4).")
def encode_db(db: Path, out: Path, no_compress: bool) -> None:
    """Write a snapshot (TXID 1) of a SQLite file."""
    with _about(db), db.open("rb") as src, _replacing(out) as dst:
        header, trailer = encode_database(src, dst, compress=not no_compress)
    _wrote(out, header, trailer)


@ltx.command("decode-db")
@click.argument("snapshot", type=PATH)
@click.option("-o", "--output", "out", required=True, type=PATH, help="The SQLite file to write.")
def decode_db(snapshot: Path, out: Path) -> None:
    """Write the SQLite file that a snapshot holds."""
    with _about(snapshot), snapshot.open("rb") as src, _replacing(out) as dst:
        header, trailer = decode_database(src, dst)
    _wrote(out, header, trailer)


@ltx.command("compact")
@click.option("-o", "--output", "out", required=True, type=PATH, help="The LTX file to write.")
@click.option("--no-compress", is_flag=True, help="Store the pages uncompressed (default: LZ4).")
@click.argument("inputs", nargs=-1, required=True, type=PATH)
def compact_cmd(out: Path, inputs: Sequence[Path], no_compress: bool) -> None:
    """Compact contiguous LTX files into one.

    Inputs may come in any order; the latest copy of each page wins and pages past the final
    commit are dropped.
    """
    with ExitStack() as stack:
        files = [stack.enter_context(path.open("rb")) for path in inputs]
        dst = stack.enter_context(_replacing(out))
        header, trailer = compact(files, dst, compress=not no_compress)
    _wrote(out, header, trailer)


def _apply_file(f: BinaryIO, db: BinaryIO) -> tuple[Header, Trailer]:
    """Apply one LTX file to the raw database ``db``, checking its pre- and post-apply checksums."""
    dec = Decoder(f)
    header = dec.read_header()
    empty = db.seek(0, os.SEEK_END) == 0
    db.seek(0)
    before = database_checksum(db, header.page_size)
    # A snapshot (pre-apply 0) replaces the whole database, starting from an empty one.
    if before != header.pre_apply_checksum and not (empty and header.is_snapshot):
        raise LTXError(
            f"pre-apply checksum mismatch: {format_checksum(before)} <> "
            f"{format_checksum(header.pre_apply_checksum)}"
        )
    page_size = header.page_size
    for pgno, frame in dec.pages():
        db.seek((pgno - 1) * page_size)
        db.write(frame[4:])
    db.truncate(header.commit * page_size)
    trailer = dec.close()
    db.seek(0)
    after = database_checksum(db, page_size)
    if after != trailer.post_apply_checksum:
        raise LTXError(
            f"post-apply checksum mismatch: {format_checksum(after)} <> "
            f"{format_checksum(trailer.post_apply_checksum)}"
        )
    return header, trailer


@ltx.command()
@click.option("--db", "db_path", required=True, type=PATH, help="The SQLite file (created if missing).")
@click.argument("files", nargs=-1, required=True, type=PATH)
def apply(db_path: Path, files: Sequence[Path]) -> None:
    """Apply LTX files in order to a SQLite file.

    Each file's pre-apply checksum must match the database; the database is created if missing
    and replaced only when every file applied and matched its post-apply checksum.
    """
    with _replacing(db_path) as db:
        if db_path.exists():
            with db_path.open("rb") as src:
                shutil.copyfileobj(src, db)
        for path in files:
            with _about(path), path.open("rb") as f:
                header, trailer = _apply_file(f, db)
    _wrote(db_path, header, trailer)
