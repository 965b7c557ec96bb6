"""Soft delete, undelete and purge, end to end on both object stores: across a restart, a recovery from
storage alone (a fresh data directory), a LiteFS that writes the same name again, and the grace period."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lfsb.server.main import Server
from lfsb.store.deletion import parse_deleted_name
from tests.lfsb_server import Client, export_rows, write_history
from tests.litefs import LiteFSEmulator

CLUSTER = "test"


async def history(server: Server) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """Every restorable point of ``db`` (``GET /db/info?all``) and its rows now."""
    async with Client(server.url) as client:
        reply = await client.fetch("GET", "/db/info?db=db&all=true")
    assert reply.status == 200, reply.body
    return reply.data, await export_rows(server, server.config.data_path.parent / "export.db")


def fresh_data_dir(server: Server, path: Path) -> Path:
    """A new data directory on the same storage (for the local store, a copy of its objects: they live in
    the data directory)."""
    if server.config.s3 is None:
        shutil.copytree(server.config.objects_path, path / "objects")
    return path


async def fetch(server: Server, method: str, target: str) -> Any:
    async with Client(server.url) as client:
        return await client.fetch(method, target)


async def test_delete_undelete_across_restart_and_recovery(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """A deleted database leaves /pos at once and stays deleted across a restart and a recovery from
    storage alone; undelete brings back every point it had, exactly."""
    server = await start_server(tmp_path / "data")
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await write_history(server, node, batches=2)
        node.execute("INSERT INTO t (v) VALUES ('only in L0')")  # not yet in storage when deleted
        await node.sync()
    points, rows = await history(server)

    reply = await fetch(server, "DELETE", "/db?db=db")
    assert reply.status == 200 and reply.data["name"] == "db"
    assert (await fetch(server, "GET", "/pos")).data == {}
    assert (await fetch(server, "GET", "/db/info?db=db")).status == 404
    [listed] = (await fetch(server, "GET", "/deleted")).data
    assert (listed["name"], listed["txID"]) == ("db", points["restorablePaths"][-1]["maxTxId"])
    [kept] = await server.objects.list_databases(CLUSTER)
    assert parse_deleted_name(kept) is not None  # storage alone tells it is deleted

    await server.stop()
    server = await start_server(tmp_path / "data")
    assert (await fetch(server, "GET", "/pos")).data == {}
    await server.stop()
    server = await start_server(fresh_data_dir(server, tmp_path / "fresh"))  # from storage alone
    assert (await fetch(server, "GET", "/pos")).data == {}
    assert [d["name"] for d in (await fetch(server, "GET", "/deleted")).data] == ["db"]

    reply = await fetch(server, "POST", "/db/undelete?db=db")
    assert reply.status == 200, reply.body
    # Storage held every transaction (L0 was uploaded first); the points of the local L0 files are not
    # in storage, the others all are.
    after_points, after_rows = await history(server)
    assert after_rows == rows
    assert after_points["restorablePaths"][-1] == points["restorablePaths"][-1]
    assert all(p in points["restorablePaths"] for p in after_points["restorablePaths"])
    assert (await fetch(server, "GET", "/deleted")).data == []
    assert await server.objects.list_databases(CLUSTER) == ["db"]


async def test_undelete_on_the_same_data_directory_is_exact(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """With its data directory, undelete gives back every point, L0 ones included."""
    server = await start_server()
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await write_history(server, node, batches=2)
        node.execute("INSERT INTO t (v) VALUES ('only in L0')")
        await node.sync()
    before = await history(server)
    assert (await fetch(server, "DELETE", "/db?db=db")).status == 200
    assert (await fetch(server, "POST", "/db/undelete?db=db")).status == 200
    assert await history(server) == before
    await server.scheduler.run(1)  # compaction goes on as before
    assert (await history(server))[1] == before[1]


async def test_litefs_writes_the_name_again(start_server: Callable[..., Any], tmp_path: Path) -> None:
    """LiteFS re-sends a database deleted under it as a new one: the two histories stay apart, undelete
    is refused while the new one lives (409), and works once that one is purged."""
    server = await start_server()
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await write_history(server, node, batches=1)
        old_points, old_rows = await history(server)
        assert (await fetch(server, "DELETE", "/db?db=db")).status == 200
        node.execute("INSERT INTO t (v) VALUES ('after the delete')")
        await node.sync()  # the server has no "db": LiteFS sends a snapshot
        await server.scheduler.run(1)
    new_points, new_rows = await history(server)
    assert new_rows[-1][1] == "after the delete" and len(new_points["restorablePaths"]) == 1
    reply = await fetch(server, "POST", "/db/undelete?db=db")
    assert (reply.status, reply.data["code"]) == (409, "EEXIST")
    assert await history(server) == (new_points, new_rows)

    # Purge removes the live one and every deleted copy; nothing is left to undelete.
    assert (await fetch(server, "DELETE", "/db?db=db&purge=true")).data == {"purged": 2}
    assert await server.objects.list_databases(CLUSTER) == []
    assert (await fetch(server, "POST", "/db/undelete?db=db")).status == 404
    assert old_rows != new_rows and old_points != new_points


async def test_purged_after_the_grace_period(start_server: Callable[..., Any], tmp_path: Path) -> None:
    server = await start_server(LFSB_DELETE_GRACE="2s")
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await write_history(server, node, batches=1)
    assert (await fetch(server, "DELETE", "/db?db=db")).status == 200
    assert len((await fetch(server, "GET", "/deleted")).data) == 1
    deadline = time.monotonic() + 30
    while (await fetch(server, "GET", "/deleted")).data and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert (await fetch(server, "GET", "/deleted")).data == []
    assert await server.objects.list_databases(CLUSTER) == []
    assert not (server.store.l0_dir / CLUSTER).exists() or not any((server.store.l0_dir / CLUSTER).iterdir())


async def test_an_interrupted_delete_does_not_resurrect(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """Storage left as by a delete cut off after its copy (the originals still there): a recovery from
    storage alone finishes the delete instead of bringing the database back."""
    server = await start_server(tmp_path / "data")
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await write_history(server, node, batches=1)
    assert (await fetch(server, "DELETE", "/db?db=db")).status == 200
    [kept] = await server.objects.list_databases(CLUSTER)
    for level in await server.objects.list_levels(CLUSTER, kept):
        for info in await server.objects.list_files(CLUSTER, kept, level):
            await server.objects.copy(info, "db")  # the originals, as before the removal
    await server.stop()
    server = await start_server(fresh_data_dir(server, tmp_path / "fresh"))
    assert (await fetch(server, "GET", "/pos")).data == {}
    assert await server.objects.list_databases(CLUSTER) == [kept]
    assert (await fetch(server, "POST", "/db/undelete?db=db")).status == 200
