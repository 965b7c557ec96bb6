"""Restore, restore/check, export and info end to end: a LiteFS node's history, compacted through every
level and pruned by retention, restored through the ``lfsb`` CLI against a real server."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from lfsb.ltx import format_timestamp, format_txid, parse_checksum, parse_timestamp, parse_txid, verify
from lfsb.server.main import Server
from tests.lfsb_server import (
    Client,
    History,
    age_files,
    check_sqlite,
    export_rows,
    indexed_files,
    lfsb,
    lfsb_json,
    stored_files,
)
from tests.litefs import LiteFSEmulator

# Schedules that never fire during a test (the tests run each level themselves); retentions of a
# minute, which age_files makes pass at once. L3 keeps its files for an hour, snapshots for 30 days.
RETAINING = {"LFSB_LEVELS": "1=1h/1m,2=2h/1m,3=3h/1h", "LFSB_L0_RETENTION": "1m"}


class Ends(NamedTuple):
    """Where each phase of the history ends: a is in L3; b also in the snapshot; c and d are the ends of
    the two L1 files after it; e (the current TXID) follows two L0-only points."""

    a: int
    b: int
    c: int
    d: int
    e: int


class Scenario(NamedTuple):
    """A server, a client for it, the node that wrote the history, the history and its phases."""

    server: Server
    client: Client
    node: LiteFSEmulator
    h: History
    ends: Ends


async def write_phases(server: Server, h: History) -> Ends:
    """Phases of writes with compactions between them (see :class:`Ends`)."""
    a = (await h.write(5)).txid
    for level in (1, 2, 3):
        assert await server.scheduler.run(level) == 1
    b = (await h.write(5)).txid
    for level in (1, 2, 3, 9):
        assert await server.scheduler.run(level) == 1
    c = (await h.write(3)).txid
    assert await server.scheduler.run(1) == 1
    d = (await h.write(3)).txid
    assert await server.scheduler.run(1) == 1
    e = (await h.write(3)).txid
    return Ends(a, b, c, d, e)


async def prune(server: Server) -> None:
    """Let every retention of a minute pass, then sweep (no new L3 work: the run only enforces retention)."""
    await age_files(server, 120)
    assert await server.scheduler.run(3) == 0


@pytest.fixture
async def scenario(start_server: Callable, tmp_path: Path) -> AsyncIterator[Scenario]:
    """A node whose history went through every level, then retention; the files left are checked."""
    server: Server = await start_server(**RETAINING)
    client = Client(server.url)
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        h = History(node)
        ends = await write_phases(server, h)
        assert ends == (5, 10, 13, 16, 19)
        a, b, c, d, e = ends
        await prune(server)
        # L0 up to d and L1/L2 up to b are gone. L3, the snapshot and the newest file of each level
        # stay (the next compaction into a level continues from its newest file).
        left = {
            *((0, t, t) for t in range(d + 1, e + 1)),
            (1, b + 1, c),
            (1, c + 1, d),
            (2, a + 1, b),
            (3, 1, a),
            (3, a + 1, b),
            (9, 1, b),
        }
        assert await indexed_files(server) == left
        assert await stored_files(server) == left
        yield Scenario(server, client, node, h, ends)
    await client.close()


async def error_code(client: Client, path: str, **params: str) -> tuple[int, str]:
    """Status and error code of a request that must fail."""
    status, data, _ = await client.request("GET", path, params={"db": "db", **params})
    assert isinstance(data, dict), (status, data)
    return status, data["code"]


def after(ms: int) -> str:
    """A timestamp just after ``ms``, before the next point of the history."""
    return format_timestamp(ms + 5)


async def test_restores_reach_the_node(scenario: Scenario, tmp_path: Path) -> None:
    server, _, node, h, (a, b, c, d, e) = scenario

    # A point only reachable through L1 (snapshot 1-b, then an L1 file). The node writes before it
    # syncs: its POST gets a 409, it pulls the snapshot, and its own writes are discarded.
    restored = await lfsb_json(server, "restore", "db", "--txid", format_txid(c))
    assert restored == {"database": "db", "txID": format_txid(e + 1)}
    node.execute("INSERT INTO t (v) VALUES ('lost 1')")
    node.execute("INSERT INTO t (v) VALUES ('lost 2')")
    posts, accepted = node.stats.posts, len(node.stats.sent)
    await node.sync()
    assert node.stats.posts == posts + 1 and len(node.stats.sent) == accepted  # the 409
    assert node.stats.snapshots_pulled == 1 and node.txid == e + 1
    assert h.record().rows == h[c].rows == check_sqlite(node.db_path)

    # Restores the node notices through /pos on its next sync: a point only in L3 (by a timestamp
    # between pruned points), the snapshot's point, the end of the second L1 file by timestamp.
    for target, point in [
        (("--timestamp", after(h[a + 3].timestamp)), a),
        (("--txid", format_txid(b)), b),
        (("--timestamp", after(h[d].timestamp)), d),
    ]:
        current, pulled = node.txid, node.stats.snapshots_pulled
        assert (await lfsb_json(server, "restore", "db", *target))["txID"] == format_txid(current + 1)
        await node.sync()
        assert node.stats.snapshots_pulled == pulled + 1
        assert h.record().rows == h[point].rows == check_sqlite(node.db_path)

    # The current point: nothing is appended, the node has nothing to pull.
    current, pulled = node.txid, node.stats.snapshots_pulled
    result = await lfsb(server, "restore", "db", "--txid", format_txid(current))
    assert result.exit_code == 0
    assert result.stdout.split() == [
        "db",
        "restored",
        "database",
        "=",
        "db",
        "txid",
        "=",
        format_txid(current),
    ]
    await node.sync()
    assert node.stats.snapshots_pulled == pulled and node.txid == current

    # A restore is a transaction like any other: exported, and restorable in turn, by the installed
    # console script run as a separate process.
    assert await export_rows(server, tmp_path / "r.db", "--txid", format_txid(e + 1)) == h[c].rows
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("lfsb")),
        *("-e", server.url, "-c", "test", "restore", "db", "--txid", format_txid(e + 1), "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out) == {"database": "db", "txID": format_txid(current + 1)}
    await node.sync()
    assert h.record().rows == h[c].rows == check_sqlite(node.db_path)


async def test_check_info_and_export_of_past_points(scenario: Scenario, tmp_path: Path) -> None:
    server, client, _, h, (a, b, c, d, e) = scenario
    points = [a, b, c, d, *range(d + 1, e + 1)]

    # info --all: every restorable point, sorted, with its own timestamp and checksum; info: the
    # first and the last.
    everything = await lfsb_json(server, "info", "db", "--all")
    assert list(everything) == ["name", "restorablePaths"] and everything["name"] == "db"
    paths = everything["restorablePaths"]
    assert all(list(p) == ["maxTxId", "maxTimestamp", "postApplyChecksum"] for p in paths)
    assert [
        (parse_txid(p["maxTxId"]), parse_timestamp(p["maxTimestamp"]), parse_checksum(p["postApplyChecksum"]))
        for p in paths
    ] == [(t, h[t].timestamp, h[t].checksum) for t in points]
    assert (await lfsb_json(server, "info", "db"))["restorablePaths"] == [paths[0], paths[-1]]
    text = await lfsb(server, "info", "db")
    assert text.exit_code == 0
    lines = [line.split() for line in text.stdout.splitlines()]
    assert lines[:2] == [["db"], ["TIMESTAMP", "TXID", "POST-APPLY", "CHECKSUM"]]
    assert [line[1:] for line in lines[2:]] == [
        [p["maxTxId"], p["postApplyChecksum"]] for p in (paths[0], paths[-1])
    ]

    # restore --check: the point a restore would restore, with that point's own timestamp.
    for target, point in [
        (("--timestamp", after(h[a + 3].timestamp)), a),  # a+1..b-1 are gone: a is the latest before
        (("--txid", format_txid(c)), c),
        (("--timestamp", format_timestamp(h[e - 1].timestamp)), e - 1),  # only in L0
        (("--timestamp", format_timestamp(h[e].timestamp + 3_600_000)), e),  # the future: the newest
    ]:
        check = await lfsb_json(server, "restore", "db", "--check", *target)
        assert list(check) == ["database", "timestamp", "txID"]
        assert (check["txID"], parse_timestamp(check["timestamp"])) == (
            format_txid(point),
            h[point].timestamp,
        )

    # Points that cannot be restored: future, pruned, inside a file; timestamps before the first point.
    for txid in (e + 1, e + 100, a - 2, c + 1):
        assert await error_code(client, "/db/restore/check", txid=format_txid(txid)) == (404, "ENOTXID")
    for ms in (h[1].timestamp - 60_000, h[a - 1].timestamp):
        status_code = await error_code(client, "/db/restore/check", timestamp=format_timestamp(ms))
        assert status_code == (404, "ENOTIMESTAMP")
    result = await lfsb(server, "restore", "db", "--check", "--txid", format_txid(e + 1))
    assert result.exit_code == 1 and "tx not available [ENOTXID]" in result.output

    # Exports of past points, as SQLite files and as an LTX snapshot.
    for target, point in [
        (("--txid", format_txid(c)), c),
        (("--timestamp", after(h[a + 3].timestamp)), a),
        (("--txid", format_txid(e - 1)), e - 1),
        ((), e),
    ]:
        assert await export_rows(server, tmp_path / f"{point}.db", *target) == h[point].rows
    ltx = tmp_path / "b.ltx"
    result = await lfsb(server, "export", "db", "-o", str(ltx), "--format", "ltx", "--txid", format_txid(b))
    assert result.exit_code == 0, result.output
    header, trailer, _ = verify(io.BytesIO(ltx.read_bytes()))
    assert (header.min_txid, header.max_txid, trailer.post_apply_checksum) == (1, b, h[b].checksum)
    assert await error_code(client, "/db/snapshot", txid=format_txid(a - 2)) == (404, "ENOTXID")


async def test_txid_inside_a_file_is_exact_or_refused(start_server: Callable, tmp_path: Path) -> None:
    """A TXID that is not the end of any file left restores that exact state or gives ENOTXID, never the
    state at the file boundary below it (upstream's plan silently stopped short)."""
    server: Server = await start_server(**RETAINING)
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        h = History(node)
        _, b, c, _, e = await write_phases(server, h)
        inside = c + 1  # L1 holds c+1..d as one file

        # While L0 still holds it, the exact state is restored.
        check = await lfsb_json(server, "restore", "db", "--check", "--txid", format_txid(inside))
        assert parse_timestamp(check["timestamp"]) == h[inside].timestamp
        assert (
            await export_rows(server, tmp_path / "inside.db", "--txid", format_txid(inside)) == h[inside].rows
        )
        restored = await lfsb_json(server, "restore", "db", "--txid", format_txid(inside))
        assert restored["txID"] == format_txid(e + 1)
        await node.sync()
        assert h.record().rows == h[inside].rows

        # Once only coarser files remain, it is refused and nothing changes.
        await prune(server)
        assert (0, inside, inside) not in await indexed_files(server)
        before = await server.store.database("test", "db")
        result = await lfsb(server, "restore", "db", "--txid", format_txid(inside))
        assert result.exit_code == 1 and "[ENOTXID]" in result.output
        after_refusal = await server.store.database("test", "db")
        assert (after_refusal.txid, after_refusal.checksum) == (before.txid, before.checksum) == node.pos
        pulled = node.stats.snapshots_pulled
        await node.sync()
        assert (
            node.stats.snapshots_pulled == pulled
            and node.rows("SELECT * FROM t ORDER BY id") == h[e + 1].rows
        )
        # Its boundaries still restore exactly.
        assert await export_rows(server, tmp_path / "c.db", "--txid", format_txid(c)) == h[c].rows
        assert await export_rows(server, tmp_path / "b.db", "--txid", format_txid(b)) == h[b].rows


async def test_a_write_slipping_in_makes_the_restore_try_again(
    start_server: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiteFS writes between the moment a restore builds its file and the moment it appends it: the append
    gets EPOSMISMATCH, and the restore builds its file again on the new position instead of failing. The
    slipped-in transaction stays in the history, and the node ends at the restored state."""
    server: Server = await start_server()
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        h = History(node)
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await node.sync()
        target = h.record()
        node.execute("INSERT INTO t (v) VALUES ('later')")
        await node.sync()
        write_tx = server.store.write_tx
        appends: list[int] = []

        async def slipping_in(cluster: str, name: str, body: object, trusted: bool = False) -> object:
            if not isinstance(body, Path):  # LiteFS's own POST (small bodies stay in memory)
                return await write_tx(cluster, name, body)
            appends.append(node.txid)
            if len(appends) == 1:
                node.execute("INSERT INTO t (v) VALUES ('slipped in')")
                await node.sync()
                slipped.append(h.record())
            return await write_tx(cluster, name, body, trusted)

        slipped: list = []
        monkeypatch.setattr(server.store, "write_tx", slipping_in)
        restored = await lfsb_json(server, "restore", "db", "--txid", format_txid(target.txid))
        assert appends == [target.txid + 1, target.txid + 2]  # refused once, then built again and appended
        assert restored["txID"] == format_txid(slipped[0].txid + 1)
        monkeypatch.undo()
        await node.sync()
        assert node.rows("SELECT * FROM t ORDER BY id") == target.rows
        assert await export_rows(server, tmp_path / "slipped.db", "--txid", format_txid(slipped[0].txid)) == (
            slipped[0].rows
        )


async def test_current_snapshot_is_kept_and_never_stale(
    server: Server, client: Client, tmp_path: Path
) -> None:
    """The current snapshot is built once per TXID and kept (one file per database): asked again it is
    the same file; after a write, concurrent requests all get the new state; a purge drops it."""
    cache = server.store.snapshots.root

    async def current(fmt: str = "ltx") -> bytes:
        status, _, body = await client.request("GET", f"/db/snapshot?db=db&format={fmt}")
        assert status == 200
        return body

    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        node.execute("INSERT INTO t (v) VALUES ('one')")
        await node.sync()
        first = await current()
        db_id = (await server.store.database("test", "db")).id
        assert [p.name for p in cache.iterdir()] == [f"{db_id}-{node.txid:016x}.ltx"]
        assert await current() == first and verify(io.BytesIO(first))[0].max_txid == node.txid
        node.execute("INSERT INTO t (v) VALUES ('two')")
        await node.sync()
        bodies = await asyncio.gather(*(current() for _ in range(3)), current("sqlite"))  # 4 exports at most
        assert len(set(bodies[:3])) == 1 and bodies[0] != first
        assert verify(io.BytesIO(bodies[0]))[0].max_txid == node.txid
        (tmp_path / "now.db").write_bytes(bodies[3])
        assert check_sqlite(tmp_path / "now.db") == [(1, "one"), (2, "two")]
        assert len(list(cache.iterdir())) == 1
    assert (await client.fetch("DELETE", "/db?db=db&purge=true")).status == 200
    assert list(cache.iterdir()) == []
