"""Recovery at start: local state rebuilt from object storage, or reconciled with it (both stores).

The metadata db is lost (deleted, replaced by an older copy, or the whole data directory is new) while
the bucket survives; the server must come back with the same positions, HWM and restorable points, and
LiteFS must carry on with incremental POSTs. Files and index rows that disagree with storage, and L0
files no row refers to, are sorted out at start.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lfsb.ltx import format_filename, format_txid
from lfsb.server.main import Server, open_object_store
from tests.lfsb_server import Client, check_sqlite, write_history
from tests.litefs import LiteFSEmulator

CLUSTER, DB = "test", "db"
StartServer = Callable[..., Any]


def lose_metadata(data_path: Path) -> None:
    """Delete the metadata db with its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        (data_path / f"server.db{suffix}").unlink(missing_ok=True)


async def api(server: Server, method: str, path: str) -> tuple[int, Any, bytes]:
    """One request to ``server`` as cluster ``test``, on a connection of its own (servers come and go)."""
    client = Client(server.url)
    try:
        return await client.request(method, path)
    finally:
        await client.close()


async def observe(server: Server) -> dict[str, Any]:
    """What a restart must preserve: positions, the HWM, the restorable range and every restorable point."""
    seen: dict[str, Any] = {}
    for key, path in [("pos", "/pos"), ("info", "/db/info?db=db"), ("all", "/db/info?db=db&all=true")]:
        status, seen[key], _ = await api(server, "GET", path)
        assert status == 200, seen[key]
    seen["hwm"] = (await server.store.database(CLUSTER, DB)).hwm
    return seen


async def export_rows(server: Server, tmp_path: Path, txid: int) -> list[tuple[Any, ...]]:
    """The rows of ``t`` in the database exported (as SQLite) at ``txid``."""
    status, _, body = await api(server, "GET", f"/db/snapshot?db=db&format=sqlite&txid={format_txid(txid)}")
    assert status == 200, body
    path = tmp_path / f"export-{txid}.db"
    path.write_bytes(body)
    return check_sqlite(path)


def remote_keys(files: list[Any]) -> set[tuple[int, int, int]]:
    """(level, min, max) of the remote files (index entries or listings) among ``files``."""
    return {(f.level, f.min_txid, f.max_txid) for f in files if f.level > 0}


async def listing(server: Server) -> set[tuple[int, int, int]]:
    """(level, min, max) of every file of the database in object storage."""
    infos = []
    for level in await server.objects.list_levels(CLUSTER, DB):
        infos += await server.objects.list_files(CLUSTER, DB, level)
    return remote_keys(infos)


@pytest.mark.parametrize("loss", ["deleted", "stale", "new-data-dir"])
async def test_local_state_rebuilt_from_storage(start_server: StartServer, tmp_path: Path, loss: str) -> None:
    data = tmp_path / "data"
    env = {"LFSB_L0_RETENTION": "1ms"}  # L0 goes once in L1, so every restorable point is in storage
    server = await start_server(data, **env)
    env["LFSB_BIND"] = server.url.removeprefix("http://")  # LiteFS keeps its endpoint across restarts
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        states = await write_history(server, node)
        if loss == "stale":  # an old copy of the metadata db comes back: it is behind storage
            await server.stop()
            with (
                contextlib.closing(sqlite3.connect(data / "server.db")) as src,
                contextlib.closing(sqlite3.connect(tmp_path / "old.db")) as dest,
            ):
                src.backup(dest)
            server = await start_server(data, **env)
            states |= await write_history(server, node, batches=2)
        before = await observe(server)
        assert before["pos"][DB]["TXID"] == format_txid(node.txid) and before["hwm"] == node.txid
        assert len(before["all"]["restorablePaths"]) >= 3
        await server.stop()

        lose_metadata(data)
        if loss == "stale":
            shutil.copy(tmp_path / "old.db", data / "server.db")
        elif loss == "new-data-dir":
            fresh = tmp_path / "fresh"
            if (data / "objects").exists():  # local-directory storage: the "bucket" is all that is kept
                shutil.copytree(data / "objects", fresh / "objects")
            data = fresh
        server = await start_server(data, **env)
        assert await observe(server) == before
        for point in before["all"]["restorablePaths"]:
            txid = int(point["maxTxId"], 16)
            assert await export_rows(server, tmp_path, txid) == states[txid]

        # LiteFS carries on with an incremental POST and gets the same HWM back.
        sent = node.stats.snapshots_sent
        node.execute("INSERT INTO t (v) VALUES ('after the restart')")
        await node.sync()
        assert node.stats.snapshots_sent == sent and node.stats.snapshots_pulled == 0
        last = node.stats.sent[-1]
        assert (last.min_txid, last.max_txid) == (node.txid, node.txid)
        assert node.hwm == before["hwm"]

        # A restore to an early point works on the rebuilt state (its page checksums) and reaches LiteFS.
        early = int(before["info"]["restorablePaths"][0]["maxTxId"], 16)
        status, reply, _ = await api(server, "POST", f"/db/restore?db=db&txid={format_txid(early)}")
        assert status == 200 and reply == {"txID": format_txid(node.txid + 1)}
        await node.sync()
        assert node.stats.snapshots_pulled == 1
        assert node.rows("SELECT * FROM t ORDER BY id") == states[early]


async def test_transactions_not_yet_in_storage_are_resent(start_server: StartServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = await start_server(data)
    bind = server.url.removeprefix("http://")
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await write_history(server, node, batches=1)
        in_storage = node.txid
        for i in range(3):
            node.execute("INSERT INTO t (v) VALUES (?)", (f"only in L0 {i}",))
            await node.sync()
        await server.stop()
        lose_metadata(data)
        server = await start_server(data, LFSB_BIND=bind)
        assert (await server.store.database(CLUSTER, DB)).txid == in_storage
        assert not list((data / "l0").glob("*/*/*"))  # L0 files of the lost db are unreferenced now

        await node.sync()
        assert node.stats.snapshots_sent == 1 and node.stats.snapshots_pulled == 0
        last = node.stats.sent[-1]
        assert (last.min_txid, last.max_txid) == (in_storage + 1, node.txid)
        assert node.hwm == in_storage
        assert await export_rows(server, tmp_path, node.txid) == node.rows("SELECT * FROM t ORDER BY id")


async def test_index_reconciled_with_storage(start_server: StartServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = await start_server(data)
    bind = server.url.removeprefix("http://")
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        states = await write_history(server, node, batches=2)
        # A crash after an L1 upload but before its commit: no index row, the HWM not raised.
        node.execute("INSERT INTO t (v) VALUES ('uploaded, not recorded')")
        states[node.txid] = node.rows("SELECT * FROM t ORDER BY id")
        await node.sync()
        assert await server.scheduler.run(1) == 1
        db = await server.store.database(CLUSTER, DB)
        uploaded = next(f for f in await server.store.files(db) if f.level == 1 and f.max_txid == node.txid)
        snapshots = await server.objects.list_files(CLUSTER, DB, 9)
        assert snapshots
        await server.stop()
        with contextlib.closing(sqlite3.connect(data / "server.db")) as conn, conn:
            conn.execute("DELETE FROM remote_files WHERE level = 1 AND min_txid = ?", (uploaded.min_txid,))
            conn.execute("UPDATE databases SET hwm = ?", (uploaded.min_txid - 1,))
            conn.execute("UPDATE server_state SET value = '0' WHERE key = 'clean'")  # as a crash leaves it
        # The snapshot objects vanish behind the server's back; their index rows must go.
        async with open_object_store(server.config) as objects:
            await objects.delete(snapshots)

        server = await start_server(data, LFSB_BIND=bind)
        db = await server.store.database(CLUSTER, DB)
        files = await server.store.files(db)
        assert remote_keys(files) == await listing(server)
        assert not any(f.level == 9 for f in files)
        found = next(f for f in files if (f.level, f.min_txid) == (1, uploaded.min_txid))
        assert (found.max_txid, found.commit, found.timestamp, found.size) == (
            uploaded.max_txid,
            uploaded.commit,
            uploaded.timestamp,
            uploaded.size,
        )
        assert (found.pre_apply_checksum, found.post_apply_checksum) == (
            uploaded.pre_apply_checksum,
            uploaded.post_apply_checksum,
        )
        assert db.hwm == uploaded.max_txid
        _, info, _ = await api(server, "GET", "/db/info?db=db&all=true")
        for point in info["restorablePaths"]:  # no point depends on a missing object
            txid = int(point["maxTxId"], 16)
            assert await export_rows(server, tmp_path, txid) == states[txid]

        # Compaction goes on from the recovered index: nothing is uploaded twice, the snapshot is remade.
        assert await server.scheduler.run(1) == 0
        assert await server.scheduler.run(2) == 1
        assert await server.scheduler.run(3) == 1
        assert await server.scheduler.run(9) == 1
        assert [(f.min_txid, f.max_txid) for f in await server.objects.list_files(CLUSTER, DB, 9)] == [
            (1, node.txid)
        ]
        node.execute("INSERT INTO t (v) VALUES ('next')")
        await node.sync()
        assert node.stats.snapshots_sent == 1 and node.hwm == uploaded.max_txid


async def test_unreferenced_l0_files_removed_at_start(start_server: StartServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = await start_server(data)
    bind = server.url.removeprefix("http://")
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        for i in range(3):
            node.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            await node.sync()
        l0 = data / "l0" / CLUSTER / DB
        kept = {p.name: p.read_bytes() for p in l0.iterdir()}
        assert len(kept) == 3
        await server.stop()
        # Crashes between placing a file in l0/ and the commit: files that no row refers to.
        (l0 / format_filename(node.txid + 1, node.txid + 1)).write_bytes(b"placed, never committed")
        (l0 / "not-an-ltx-name").write_bytes(b"junk")
        (data / "l0" / CLUSTER / "other").mkdir()
        (data / "l0" / CLUSTER / "other" / format_filename(1, 1)).write_bytes(b"no such database")

        server = await start_server(data, LFSB_BIND=bind)
        assert {p.name: p.read_bytes() for p in l0.iterdir()} == kept
        assert not (data / "l0" / CLUSTER / "other").exists()  # emptied, then removed
        node.execute("INSERT INTO t (v) VALUES ('the same TXID again')")
        await node.sync()
        assert node.stats.snapshots_sent == 1 and node.stats.snapshots_pulled == 0
        assert await export_rows(server, tmp_path, node.txid) == node.rows("SELECT * FROM t ORDER BY id")


async def test_index_dropped_when_storage_lost_every_file(start_server: StartServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = await start_server(data)
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        states = await write_history(server, node)
        doomed = []
        for level in await server.objects.list_levels(CLUSTER, DB):
            doomed += await server.objects.list_files(CLUSTER, DB, level)
        await server.stop()
        async with open_object_store(server.config) as objects:
            await objects.delete(doomed)
            await objects.write_marker("epoch", "another bucket")  # storage is not as the server left it

        server = await start_server(data)
        db = await server.store.database(CLUSTER, DB)
        assert db.txid == node.txid
        assert {f.level for f in await server.store.files(db)} == {0}  # L0 is all there is
        _, info, _ = await api(server, "GET", "/db/info?db=db&all=true")
        assert [int(p["maxTxId"], 16) for p in info["restorablePaths"]] == sorted(states)[1:]
        assert await export_rows(server, tmp_path, node.txid) == states[node.txid]


async def test_unrecoverable_database_does_not_stop_start(start_server: StartServer, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = await start_server(data)
    bind = server.url.removeprefix("http://")
    cluster_id = "LFSC00000000000000AB"
    async with (
        LiteFSEmulator(tmp_path / "good", server.url, name="good", cluster_id=cluster_id) as good,
        LiteFSEmulator(tmp_path / "bad", server.url, name="bad", cluster_id=cluster_id) as bad,
    ):
        await write_history(server, good)
        await write_history(server, bad)
        snapshots = [
            info
            for level in await server.objects.list_levels(CLUSTER, "bad")
            for info in await server.objects.list_files(CLUSTER, "bad", level)
            if info.min_txid == 1
        ]
        await server.stop()
        async with open_object_store(server.config) as objects:
            await objects.delete(snapshots)  # what is left of "bad" does not start with a snapshot
        lose_metadata(data)

        server = await start_server(data, LFSB_BIND=bind)
        assert await server.store.positions(CLUSTER) == {"good": good.pos}
        await bad.sync()  # LiteFS sends the whole database again
        assert bad.stats.snapshots_sent == 2 and bad.stats.snapshots_pulled == 0
        assert await server.store.positions(CLUSTER) == {"bad": bad.pos, "good": good.pos}
