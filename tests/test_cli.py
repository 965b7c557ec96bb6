"""The ``lfsb`` command line end to end against a real server: every command, tables and ``--json``, errors.

Commands run through click's CliRunner in a worker thread (the CLI calls ``asyncio.run`` while the server
runs on the test's loop), and through the installed ``lfsb`` console script as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lfsb.cli import main
from lfsb.ltx import format_txid, verify
from lfsb.server.main import Server
from tests.lfsb_server import check_sqlite, lfsb_json, write_history
from tests.litefs import LiteFSEmulator, SyncError

CLUSTER = "test"
LFSB = shutil.which("lfsb", path=str(Path(sys.executable).parent)) or shutil.which("lfsb") or "lfsb"
NO_ENV = {"LFSB_CLUSTER": None, "LFSB_ENDPOINT": None}


async def lfsb(
    server: Server | None, *args: str, input: str | None = None, env: dict[str, str | None] | None = None
) -> Result:
    """Run ``lfsb -e <server> -c test ARGS`` in a worker thread; never a traceback, whatever happens."""
    prefix = ["-e", server.url, "-c", CLUSTER] if server else []
    result = await asyncio.to_thread(
        CliRunner().invoke, main, [*prefix, *args], input=input, env={**NO_ENV, **(env or {})}
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    return result


def table(text: str) -> list[list[str]]:
    """The cells of a printed table (columns are separated by two or more spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip()]


def make_database(path: Path, rows: int) -> None:
    """A SQLite database with ``rows`` rows in table ``t``."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(rows)])
    conn.close()


@pytest.fixture
async def node(server: Server, tmp_path: Path) -> AsyncIterator[LiteFSEmulator]:
    """A LiteFS node streaming database ``db`` to ``server``."""
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        yield node


async def test_import_and_list(server: Server, tmp_path: Path) -> None:
    for name in ["zeta", "alpha", "mid"]:
        path = tmp_path / f"{name} #1?%41.db"  # characters that mean something in a SQLite URI
        make_database(path, rows=len(name))
        result = await lfsb(server, "import", name, str(path))
        assert result.exit_code == 0, result.output
        assert result.stdout == f"db imported\n  database = {name}\n  txid     = 0000000000000001\n"
    assert len(list(tmp_path.iterdir())) == 4  # the data directory and the three files, nothing created
    make_database(tmp_path / "again.db", rows=10)
    result = await lfsb(server, "import", "mid", str(tmp_path / "again.db"), "--json")
    assert json.loads(result.stdout) == {"database": "mid", "txID": "0000000000000002"}

    positions = await server.store.positions(CLUSTER)
    result = await lfsb(server, "list")
    assert result.exit_code == 0
    assert table(result.stdout) == [
        ["DATABASE", "TXID", "CHECKSUM"],
        *([name, format_txid(positions[name].txid), format_txid(positions[name].post_apply_checksum)]
          for name in ["alpha", "mid", "zeta"]),
    ]  # fmt: skip
    result = await lfsb(server, "list", "--json")
    data = json.loads(result.stdout)
    assert list(data) == ["alpha", "mid", "zeta"]
    assert data == {name: pos.to_json() for name, pos in positions.items()}

    exported = tmp_path / "mid-exported.db"
    assert (await lfsb(server, "export", "mid", "-o", str(exported))).exit_code == 0
    assert check_sqlite(exported) == check_sqlite(tmp_path / "again.db")


async def test_options_after_the_command_and_from_the_environment(server: Server, tmp_path: Path) -> None:
    make_database(tmp_path / "a.db", rows=1)
    result = await lfsb(None, "import", "a", str(tmp_path / "a.db"), "-e", server.url, "-c", CLUSTER)
    assert result.exit_code == 0
    result = await lfsb(None, "list", "--json", env={"LFSB_ENDPOINT": server.url, "LFSB_CLUSTER": CLUSTER})
    assert list(json.loads(result.stdout)) == ["a"]
    result = await lfsb(None, "list", "--json", env={"LFSB_ENDPOINT": server.url, "LFSB_CLUSTER": "other"})
    assert json.loads(result.stdout) == {}


async def test_info(server: Server, node: LiteFSEmulator) -> None:
    await write_history(server, node)
    everything = json.loads((await lfsb(server, "info", "db", "--all", "--json")).stdout)
    points = everything["restorablePaths"]
    assert everything["name"] == "db" and len(points) > 2
    assert points[-1]["maxTxId"] == format_txid(node.txid)
    assert points[-1]["postApplyChecksum"] == format_txid(node.pos.post_apply_checksum)

    result = await lfsb(server, "info", "db")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "db"
    rows = [[p["maxTimestamp"], p["maxTxId"], p["postApplyChecksum"]] for p in points]
    assert table(result.stdout)[1:] == [["TIMESTAMP", "TXID", "POST-APPLY CHECKSUM"], rows[0], rows[-1]]
    assert table((await lfsb(server, "info", "db", "-a")).stdout)[2:] == rows
    assert json.loads((await lfsb(server, "info", "db", "--json")).stdout) == {
        "name": "db",
        "restorablePaths": [points[0], points[-1]],
    }


async def test_export(server: Server, node: LiteFSEmulator, tmp_path: Path) -> None:
    states = await write_history(server, node)
    out = tmp_path / "now.db"
    result = await lfsb(server, "export", "db", "-o", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr == f"exported db to {out} ({out.stat().st_size} bytes)\n"
    assert check_sqlite(out) == states[node.txid]
    assert out.read_bytes() == node.db_path.read_bytes()

    ltx = tmp_path / "now.ltx"
    assert (await lfsb(server, "export", "db", "--format", "ltx", "-o", str(ltx))).exit_code == 0
    with ltx.open("rb") as f:
        header, trailer, _ = verify(f)
    assert (header.min_txid, header.max_txid) == (1, node.txid)
    assert trailer.post_apply_checksum == node.pos.post_apply_checksum

    result = await lfsb(server, "export", "db", "-f", "sqlite")  # to stdout
    assert result.exit_code == 0 and result.stdout_bytes == out.read_bytes()

    points = json.loads((await lfsb(server, "info", "db", "--all", "--json")).stdout)["restorablePaths"]
    early = points[0]
    past = tmp_path / "past.db"
    assert (await lfsb(server, "export", "db", "--txid", early["maxTxId"], "-o", str(past))).exit_code == 0
    assert check_sqlite(past) == states[int(early["maxTxId"], 16)]
    result = await lfsb(server, "export", "db", "--timestamp", early["maxTimestamp"], "-o", str(past))
    assert result.exit_code == 0
    expected = max(int(p["maxTxId"], 16) for p in points if p["maxTimestamp"] == early["maxTimestamp"])
    assert check_sqlite(past) == states[expected]


async def test_restore(server: Server, node: LiteFSEmulator) -> None:
    states = await write_history(server, node)
    points = json.loads((await lfsb(server, "info", "db", "--all", "--json")).stdout)["restorablePaths"]
    target = points[1]
    txid = int(target["maxTxId"], 16)

    result = await lfsb(server, "restore", "db", "--txid", f"{txid:x}", "--check")  # short form, full output
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "db restore check",
        "  database  = db",
        f"  timestamp = {target['maxTimestamp']}",
        f"  txid      = {target['maxTxId']}",
    ]
    # A timestamp in another zone names the same instant: the latest point at or before it.
    instant = datetime.fromisoformat(target["maxTimestamp"])
    local = instant.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="milliseconds")
    result = await lfsb(server, "restore", "db", "--timestamp", local, "--check", "--json")
    at_or_before = [p for p in points if datetime.fromisoformat(p["maxTimestamp"]) <= instant]
    latest = max(int(p["maxTxId"], 16) for p in at_or_before)
    assert json.loads(result.stdout)["txID"] == format_txid(latest)
    assert (await server.store.database(CLUSTER, "db")).txid == node.txid  # a check changes nothing

    result = await lfsb(server, "restore", "db", "--txid", target["maxTxId"])
    assert result.exit_code == 0
    assert result.stdout == f"db restored\n  database = db\n  txid     = {format_txid(node.txid + 1)}\n"
    await node.sync()
    assert node.stats.snapshots_pulled == 1
    assert node.rows("SELECT * FROM t ORDER BY id") == states[txid]

    result = await lfsb(server, "restore", "db", "--txid", points[0]["maxTxId"], "--json")
    assert json.loads(result.stdout) == {"database": "db", "txID": format_txid(node.txid + 1)}


WRITER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # the main file lags behind: only the WAL is current
    batch = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO t (batch, v) VALUES (?, randomblob(500))", [(batch,)] * 10)
        conn.execute("COMMIT")
        batch += 1
    """
)


def row_count(path: Path) -> int:
    """The committed rows of ``t`` as a new reader sees them."""
    with sqlite3.connect(path) as conn:
        count = conn.execute("SELECT count(*) FROM t").fetchone()[0]
    conn.close()
    return count


async def test_import_live_wal_database(server: Server, tmp_path: Path) -> None:
    live = tmp_path / "live.db"
    with sqlite3.connect(live) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, batch INTEGER, v BLOB)")
    conn.close()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(live)])
    try:
        while row_count(live) < 5000:
            await asyncio.sleep(0.05)
        assert live.stat().st_size < 4096 * 10  # everything is still in the WAL
        low = row_count(live)
        proc = await asyncio.create_subprocess_exec(
            LFSB, "-e", server.url, "-c", CLUSTER, "import", "live", str(live), "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await proc.communicate()
        high = row_count(live)
    finally:
        writer.kill()
        writer.wait()
    assert proc.returncode == 0, stderr
    assert json.loads(stdout) == {"database": "live", "txID": "0000000000000001"}
    assert high > low  # the writer kept writing during the import

    out = tmp_path / "imported.db"
    assert (await lfsb(server, "export", "live", "-o", str(out))).exit_code == 0
    batches = check_sqlite(out, "SELECT batch, count(*) FROM t GROUP BY batch ORDER BY batch")
    assert low <= 10 * len(batches) <= high
    assert batches == [(b, 10) for b in range(len(batches))]  # whole transactions only
    with sqlite3.connect(out) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()


async def test_import_of_a_file_that_is_not_sqlite(server: Server, tmp_path: Path) -> None:
    make_database(tmp_path / "good.db", rows=3)
    assert (await lfsb(server, "import", "db", str(tmp_path / "good.db"))).exit_code == 0
    before = await server.store.positions(CLUSTER)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 1000)
    empty = tmp_path / "empty.db"
    empty.touch()
    for name in ["db", "new"]:
        result = await lfsb(server, "import", name, str(junk))
        assert result.exit_code == 1
        assert result.stderr == f"Error: cannot read {junk} as a SQLite database: file is not a database\n"
        result = await lfsb(server, "import", name, str(empty))
        assert (result.exit_code, result.stderr) == (
            1,
            f"Error: cannot read {empty} as a SQLite database: the database is empty\n",
        )
    assert await server.store.positions(CLUSTER) == before


async def test_delete_asks_first(server: Server, node: LiteFSEmulator) -> None:
    await write_history(server, node, batches=1)
    assert await server.objects.list_databases(CLUSTER) == ["db"]

    result = await lfsb(server, "delete", "db", input="n\n")
    assert result.exit_code == 1
    question = "Delete database 'db' of cluster 'test' (recoverable with `lfsb undelete` until it is purged)?"
    assert question in result.stderr
    assert "Aborted!" in result.stderr
    assert list(json.loads((await lfsb(server, "list", "--json")).stdout)) == ["db"]
    assert await server.objects.list_databases(CLUSTER) == ["db"]

    result = await lfsb(server, "delete", "db", "--yes")
    assert result.exit_code == 0 and result.stderr == "deleted db (recoverable with `lfsb undelete db`)\n"
    assert json.loads((await lfsb(server, "list", "--json")).stdout) == {}
    [copy] = await lfsb_json(server, "list", "--deleted")
    [kept] = await server.objects.list_databases(CLUSTER)  # moved aside, under a name no client can use
    assert (copy["name"], kept[:3]) == ("db", "db@")
    result = await lfsb(server, "delete", "db", "-y")
    assert (result.exit_code, result.stderr) == (1, "Error: database not found [ENODB]\n")

    result = await lfsb(server, "delete", "db", "--purge", input="n\n")
    assert "Remove database 'db' of cluster 'test' and every backup of it for good?" in result.stderr
    assert result.exit_code == 1 and await lfsb_json(server, "list", "--deleted") != []
    result = await lfsb(server, "delete", "db", "--purge", "-y")
    assert (result.exit_code, result.stderr) == (0, "purged db (1 copy)\n")
    assert await lfsb_json(server, "list", "--deleted") == []
    assert await server.objects.list_databases(CLUSTER) == []


async def test_cluster_reset_id(server: Server, node: LiteFSEmulator, tmp_path: Path) -> None:
    node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    await node.sync()
    async with LiteFSEmulator(tmp_path / "new-cluster", server.url, name="other") as newcomer:
        newcomer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        with pytest.raises(SyncError) as failed:
            await newcomer.sync()
        assert failed.value.code == "ECLUSTERID"

        result = await lfsb(server, "cluster", "reset-id")
        assert result.exit_code == 0
        assert result.stdout == "cluster id reset\n  cluster    = test\n  was pinned = yes\n"
        assert node.cluster_id not in result.stdout  # never echoed
        await newcomer.sync()  # the next cluster ID seen is pinned now
        assert newcomer.stats.snapshots_sent == 1
        result = await lfsb(server, "cluster", "reset-id", "--json")
        assert json.loads(result.stdout) == {"cluster": "test", "wasPinned": True}
        result = await lfsb(server, "cluster", "reset-id", "--json")
        assert json.loads(result.stdout) == {"cluster": "test", "wasPinned": False}
        assert "was pinned = no" in (await lfsb(server, "cluster", "reset-id")).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["restore", "db", "--txid", "xyz"], "invalid transaction id 'xyz': expected 1 to 16 hex digits"),
        (
            ["export", "db", "--txid", "000000000000000g"],
            "invalid transaction id '000000000000000g': expected 1 to 16 hex digits",
        ),
        (
            ["export", "db", "--txid", "10000000000000000"],
            "invalid transaction id '10000000000000000': expected 1 to 16 hex digits",
        ),
        (["restore", "db", "--txid", ""], "invalid transaction id '': expected 1 to 16 hex digits"),
        (
            ["restore", "db", "--timestamp", "2024-06-08T12:22:39"],
            "expected RFC 3339 with a zone, e.g. 2024-06-08T12:22:39Z",
        ),
        (
            ["restore", "db", "--txid", "0000000000000001", "--timestamp", "2024-06-08T12:22:39Z"],
            "cannot specify both --txid and --timestamp",
        ),
        (["restore", "db"], "must specify one of --txid and --timestamp"),
        (["export", "db", "--format", "csv"], "'csv' is not one of 'sqlite', 'ltx'"),
        (["import", "db", "/nonexistent/file.db"], "'/nonexistent/file.db' does not exist"),
        (["info"], "Missing argument 'DB'"),
    ],
)
async def test_usage_errors(server: Server, args: list[str], message: str) -> None:
    result = await lfsb(server, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert await server.store.positions(CLUSTER) == {}


async def test_missing_cluster(server: Server) -> None:
    result = await lfsb(None, "-e", server.url, "list")
    assert result.exit_code == 2
    assert "Error: cluster must be specified (--cluster or LFSB_CLUSTER)" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["info", "nosuch"],
        ["export", "nosuch"],
        ["restore", "nosuch", "--txid", "0000000000000001", "--check"],
        ["restore", "nosuch", "--txid", "0000000000000001"],
    ],
)
async def test_unknown_database(server: Server, tmp_path: Path, args: list[str]) -> None:
    result = await lfsb(server, *args)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", "Error: database not found [ENODB]\n")
    if args[0] == "export":
        out = tmp_path / "out.db"
        result = await lfsb(server, *args, "-o", str(out))
        assert result.exit_code == 1
        assert not list(tmp_path.glob("*out.db*"))  # no file, not even a partial one


async def test_connection_refused_names_the_endpoint() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        proc = await asyncio.create_subprocess_exec(
            LFSB, "-e", f"{url}/some/path", "-c", CLUSTER, "list",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await proc.communicate()
    assert (proc.returncode, stdout) == (1, b"")
    assert stderr.decode() == (
        f"Error: cannot connect to {url}: Connection refused (is lfsb-server running?)\n"
    )


async def test_bad_endpoint() -> None:
    result = await lfsb(None, "-e", "ftp://example.com", "-c", CLUSTER, "list")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: invalid endpoint 'ftp://example.com' (expected e.g. http://127.0.0.1:2200)\n"
    )
