"""``lfsb`` commands that talk to a server: list, info, export, import, restore, delete, cluster."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from ..client import DEFAULT_ENDPOINT, APIError, Client
from ..ltx import LTXError, format_timestamp, format_txid, parse_timestamp
from .ltx import error_message
from .output import print_fields, print_json, print_table

_SHORT_TXID = re.compile(r"[0-9A-Fa-f]{1,16}")

T = TypeVar("T")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def connection_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--cluster/-c``, ``--endpoint/-e`` and ``--token/-t`` (on the root group, and again on each
    command)."""
    f = click.option(
        "-t",
        "--token",
        help="The token to send (a cluster's token, or the root token) [env LFSB_TOKEN].",
    )(f)
    f = click.option(
        "-e", "--endpoint", help=f"The lfsb server [env LFSB_ENDPOINT; default {DEFAULT_ENDPOINT}]."
    )(f)
    return click.option(
        "-c", "--cluster", help="The cluster to act on; a cluster's token implies it [env LFSB_CLUSTER]."
    )(f)


def api_command(f: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command with a :class:`Client`; API errors become one ``Error:`` line, exit 1. A
    command's ``cluster_name`` argument, if it has one, names the cluster too."""

    @connection_options
    @functools.wraps(f)
    def wrapper(cluster: str | None, endpoint: str | None, token: str | None, **kwargs: Any) -> T:
        root = click.get_current_context().find_root().params
        cluster = (
            kwargs.get("cluster_name") or cluster or root.get("cluster") or os.environ.get("LFSB_CLUSTER")
        )
        endpoint = endpoint or root.get("endpoint") or os.environ.get("LFSB_ENDPOINT") or DEFAULT_ENDPOINT
        token = token or root.get("token") or os.environ.get("LFSB_TOKEN") or None
        if not cluster and not token:
            raise click.UsageError("cluster must be specified (--cluster or LFSB_CLUSTER), or a token")

        async def _run() -> T:
            async with Client(endpoint, cluster, token) as client:
                return await f(client, **kwargs)

        try:
            return asyncio.run(_run())
        except APIError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:  # a local file: the output of export, the input of import
            raise click.ClickException(error_message(e)) from None

    return wrapper


def check_target(txid: str | None, timestamp: str | None, required: bool) -> None:
    """Validate ``--txid`` and ``--timestamp`` before anything is sent."""
    if txid and timestamp:
        raise click.UsageError("cannot specify both --txid and --timestamp")
    if required and not txid and not timestamp:
        raise click.UsageError("must specify one of --txid and --timestamp")
    try:
        if timestamp:
            parse_timestamp(timestamp)
    except LTXError as e:
        raise click.BadParameter(str(e)) from None


def _full_txid(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--txid`` as 1 to 16 hex digits (``5c`` is ``000000000000005c``), returned as all 16 of them."""
    if value is None:
        return None
    if not _SHORT_TXID.fullmatch(value):
        raise click.BadParameter(f"invalid transaction id {value!r}: expected 1 to 16 hex digits")
    return format_txid(int(value, 16))


def target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--txid`` and ``--timestamp``: a point in time."""
    f = click.option(
        "--timestamp",
        help="A time with a zone, e.g. 2024-06-08T12:22:39Z (the latest point at or before it).",
    )(f)
    return click.option(
        "--txid", callback=_full_txid, help="A transaction ID, 1 to 16 hex digits (5c is 000000000000005c)."
    )(f)


def _progress(label: str) -> Callable[[int | None], Callable[[int], None]]:
    """A progress bar on stderr for a transfer of known length (nothing when stderr is not a terminal)."""

    def _start(total: int | None) -> Callable[[int], None]:
        if not total or not sys.stderr.isatty():
            return lambda n: None
        bar = click.progressbar(length=total, label=label, file=sys.stderr)
        bar.__enter__()

        def _update(n: int) -> None:
            bar.update(n)
            if bar.pos >= total:
                bar.__exit__(None, None, None)

        return _update

    return _start


@click.command("list")
@click.option("--deleted", is_flag=True, help="The deleted databases that can still be brought back.")
@JSON_OPTION
@api_command
async def list_cmd(client: Client, deleted: bool, as_json: bool) -> None:
    """List the databases of the cluster with their positions (or the deleted ones)."""
    if deleted:
        copies = await client.deleted()
        if as_json:
            print_json(copies)
            return
        print_table(
            ["DATABASE", "TXID", "DELETED", "PURGED AFTER"],
            [[d["name"], d["txID"], d["deletedAt"], d["purgeAt"]] for d in copies],
        )
        return
    positions = dict(sorted((await client.positions()).items()))
    if as_json:
        print_json({name: pos.to_json() for name, pos in positions.items()})
        return
    print_table(
        ["DATABASE", "TXID", "CHECKSUM"],
        [[name, format_txid(p.txid), format_txid(p.post_apply_checksum)] for name, p in positions.items()],
    )


@click.command()
@click.argument("db")
@click.option("-a", "--all", "all_points", is_flag=True, help="Every restorable point, not just the range.")
@JSON_OPTION
@api_command
async def info(client: Client, db: str, all_points: bool, as_json: bool) -> None:
    """Show the restorable points of a database (first and last, or --all)."""
    data = await client.info(db, all_points)
    if as_json:
        print_json(data)
        return
    click.echo(click.style(data["name"], bold=True))
    print_table(
        ["TIMESTAMP", "TXID", "POST-APPLY CHECKSUM"],
        [[p["maxTimestamp"], p["maxTxId"], p["postApplyChecksum"]] for p in data["restorablePaths"]],
    )


@click.command()
@click.argument("db")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default: stdout)."
)
@click.option(
    "-f", "--format", "fmt", type=click.Choice(["sqlite", "ltx"]), default="sqlite", show_default=True
)
@target_options
@api_command
async def export(
    client: Client, db: str, output: Path | None, fmt: str, txid: str | None, timestamp: str | None
) -> None:
    """Download a database, now or at a point in time, as a SQLite file or an LTX snapshot."""
    check_target(txid, timestamp, required=False)
    if output is None:
        await client.export(db, sys.stdout.buffer, fmt, txid, timestamp)
        return
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        with tmp.open("wb") as out:
            size = await client.export(db, out, fmt, txid, timestamp, _progress("exporting"))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    click.echo(f"exported {db} to {output} ({size} bytes)", err=True)


def copy_database(src: Path, dest: Path) -> None:
    """A consistent copy of a (possibly live, WAL-mode) SQLite database through the backup API."""
    source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True)  # as_uri escapes # ? %
    try:
        if source.execute("PRAGMA page_count").fetchone()[0] == 0:  # the copy would have a page
            raise sqlite3.DatabaseError("the database is empty")
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            target.close()
    finally:
        source.close()


@click.command("import")
@click.argument("db")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@JSON_OPTION
@api_command
async def import_cmd(client: Client, db: str, file: Path, as_json: bool) -> None:
    """Upload a SQLite database file as the database's new state (read through SQLite's backup API)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "import.db"
        try:
            await asyncio.to_thread(copy_database, file, copy)
        except sqlite3.Error as e:
            raise APIError(f"cannot read {file} as a SQLite database: {e}") from None
        total = copy.stat().st_size
        txid = await client.upload(db, copy, _progress("importing")(total))
    if as_json:
        print_json({"database": db, "txID": txid})
    else:
        print_fields("db imported", [("database", db), ("txid", txid)])


@click.command()
@click.argument("db")
@target_options
@click.option("--check", is_flag=True, help="Only show the point a restore would restore.")
@JSON_OPTION
@api_command
async def restore(
    client: Client, db: str, txid: str | None, timestamp: str | None, check: bool, as_json: bool
) -> None:
    """Restore a database to a past point (it becomes the newest transaction; LiteFS then pulls it)."""
    check_target(txid, timestamp, required=True)
    if check:
        data = await client.restore_check(db, txid, timestamp)
        if as_json:
            print_json({"database": db, **data})
        else:
            print_fields(
                "db restore check",
                [("database", db), ("timestamp", data["timestamp"]), ("txid", data["txID"])],
            )
        return
    new_txid = await client.restore(db, txid, timestamp)
    if as_json:
        print_json({"database": db, "txID": new_txid})
    else:
        print_fields("db restored", [("database", db), ("txid", new_txid)])


@click.command()
@click.argument("db")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--purge", is_flag=True, help="Remove it and every deleted copy of it for good, now.")
@api_command
async def delete(client: Client, db: str, yes: bool, purge: bool) -> None:
    """Delete a database: it can be brought back with `lfsb undelete` until its grace period
    (LFSB_DELETE_GRACE) is over; with --purge, it is gone at once."""
    where = f"of cluster {client.cluster!r} " if client.cluster else ""
    question = (
        f"Remove database {db!r} {where}and every backup of it for good? This cannot be undone."
        if purge
        else f"Delete database {db!r} {where}(recoverable with `lfsb undelete` until it is purged)?"
    )
    if not yes and not click.confirm(question, err=True):
        raise click.Abort()
    if purge:
        copies = await client.purge(db)
        click.echo(f"purged {db} ({copies} {'copy' if copies == 1 else 'copies'})", err=True)
        return
    await client.delete(db)
    click.echo(f"deleted {db} (recoverable with `lfsb undelete {db}`)", err=True)


@click.command()
@click.argument("db")
@JSON_OPTION
@api_command
async def undelete(client: Client, db: str, as_json: bool) -> None:
    """Bring back a deleted database (its newest deleted copy) with its whole history."""
    data = await client.undelete(db)
    if as_json:
        print_json({"database": db, "txID": data["txID"]})
    else:
        print_fields("db undeleted", [("database", db), ("txid", data["txID"])])


@click.group()
def cluster() -> None:
    """Manage the cluster itself."""


@cluster.command("reset-id")
@JSON_OPTION
@api_command
async def reset_id(client: Client, as_json: bool) -> None:
    """Forget the LiteFS cluster ID pinned to this cluster (after re-creating the LiteFS cluster)."""
    was_pinned = await client.reset_cluster_id()
    if as_json:
        print_json({"cluster": client.cluster, "wasPinned": was_pinned})
    else:
        print_fields(
            "cluster id reset", [("cluster", client.cluster), ("was pinned", "yes" if was_pinned else "no")]
        )


def _time(ms: int | None) -> str:
    return format_timestamp(ms)[:19] + "Z" if ms is not None else "-"


@click.group()
def token() -> None:
    """Create, list and revoke access tokens (admin)."""


@token.command("create")
@click.argument("cluster_name", metavar="CLUSTER")
@click.option("--role", type=click.Choice(["replica", "read", "admin"]), required=True)
@click.option("--note", default="", help="What the token is for (shown by `lfsb token list`).")
@click.option("--expires", help="Lifetime, e.g. 90d or 12h (default: never).")
@JSON_OPTION
@api_command
async def token_create(
    client: Client, cluster_name: str, role: str, note: str, expires: str | None, as_json: bool
) -> None:
    """Create a token for CLUSTER; it is printed once, never shown again."""
    data = await client.create_token(role, note, expires)
    if as_json:
        print_json(data)
        return
    print_fields(
        "token created",
        [("id", data["id"]), ("cluster", data["cluster"]), ("role", data["role"]),
         ("expires", _time(data["expiresAt"]))],
    )  # fmt: skip
    click.echo(data["token"])
    click.echo("Store it now (e.g. as LITEFS_CLOUD_TOKEN): it is not shown again.", err=True)


@token.command("list")
@click.argument("cluster_name", metavar="[CLUSTER]", required=False)
@JSON_OPTION
@api_command
async def token_list(client: Client, cluster_name: str | None, as_json: bool) -> None:
    """List the tokens of CLUSTER (the root token without one: of every cluster); never a secret."""
    tokens = await client.tokens()
    if as_json:
        print_json(tokens)
        return
    print_table(
        ["ID", "CLUSTER", "ROLE", "STATE", "NOTE", "CREATED", "LAST USED", "EXPIRES"],
        [[t["id"], t["cluster"], t["role"], t["state"], t["note"], _time(t["createdAt"]),
          _time(t["lastUsedAt"]), _time(t["expiresAt"])] for t in tokens],
    )  # fmt: skip


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@JSON_OPTION
@api_command
async def token_revoke(client: Client, token_id: str, as_json: bool) -> None:
    """Revoke a token: the next request with it is refused."""
    data = await client.revoke_token(token_id)
    if as_json:
        print_json(data)
    else:
        print_fields("token revoked", [("id", data["id"]), ("cluster", data["cluster"])])


@click.command()
@click.option("--since", help="Only entries at or after this time, e.g. 2024-06-08T00:00:00Z.")
@JSON_OPTION
@api_command
async def audit(client: Client, since: str | None, as_json: bool) -> None:
    """Show the audit log of admin actions (the root token without a cluster: of every cluster)."""
    if since:
        check_target(None, since, required=False)
    entries = await client.audit(since)
    if as_json:
        print_json(entries)
        return
    print_table(
        ["TIME", "ACTION", "OUTCOME", "CLUSTER", "DATABASE", "TOKEN", "REMOTE", "DETAIL"],
        [[_time(e["time"]), e["action"], e["outcome"], e["cluster"], e["database"], e["tokenId"] or "-",
          e["remote"], e["detail"]] for e in entries],
    )  # fmt: skip


def _check_fields(record: dict[str, Any]) -> list[tuple[str, object]]:
    return [
        ("outcome", "passed" if record["ok"] else "FAILED"),
        ("txid", record["txID"]),
        ("checked at", record["checkedAt"]),
        ("duration", f"{record['durationMs'] / 1000:.2f}s"),
        ("read from storage", f"{record['bytesRead']} bytes"),
        ("database size", f"{record['dbBytes']} bytes"),
        ("message", record["message"]),
    ]


@click.command()
@click.argument("db")
@target_options
@JSON_OPTION
@api_command
async def verify(client: Client, db: str, txid: str | None, timestamp: str | None, as_json: bool) -> None:
    """Check now that a point (default: the newest in object storage) restores: rebuilt from storage
    alone, opened by SQLite (integrity_check) and compared with its recorded checksum. Exits 1 if not."""
    check_target(txid, timestamp, required=False)
    report = await client.verify(db, txid, timestamp)
    if as_json:
        print_json(report)
    else:
        print_fields("restore check", [("database", db), *_check_fields(report)])
    if not report["ok"]:
        raise click.exceptions.Exit(1)


@click.command()
@JSON_OPTION
@api_command
async def status(client: Client, as_json: bool) -> None:
    """Show every database of the cluster: position, HWM lag, last level-1 upload and last restore check."""
    databases = await client.status()
    if as_json:
        print_json(databases)
        return

    now = time.time()

    def _age(timestamp: str | None) -> str:
        if timestamp is None:
            return "never"
        seconds = max(0, int(now - parse_timestamp(timestamp) / 1000))
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m ago" if seconds >= 3600 else f"{seconds}s ago"

    def _check(c: dict[str, Any] | None) -> list[str]:
        if c is None:
            return ["never", "-", "-"]
        return [c["checkedAt"], c["txID"], "ok" if c["ok"] else f"FAILED: {c['message']}"]

    print_table(
        ["DATABASE", "TXID", "HWM LAG", "LAST L1 UPLOAD", "LAST CHECK", "CHECKED TXID", "OUTCOME"],
        [
            [d["name"], d["txID"], d["hwmLag"], _age(d["lastL1Upload"]), *_check(d["lastCheck"])]
            for d in databases
        ],
    )


COMMANDS = [
    list_cmd,
    info,
    export,
    import_cmd,
    restore,
    verify,
    status,
    delete,
    undelete,
    cluster,
    token,
    audit,
]
