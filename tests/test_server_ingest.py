"""End to end: the LiteFS client emulator streaming to a real server (local directory and moto S3)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import sqlite3
from pathlib import Path

import pytest

from lfsb.ltx import decode_database, verify
from lfsb.server import app as server_app
from lfsb.server.main import Server
from lfsb.storage import FileInfo, StorageError
from lfsb.store import compaction
from tests.lfsb_server import Client
from tests.litefs import LiteFSEmulator


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def server_pos(client: Client, name: str) -> tuple[str, str] | None:
    status, data, _ = await client.request("GET", "/pos")
    assert status == 200
    entry = data.get(name)
    return (entry["TXID"], entry["PostApplyChecksum"]) if entry else None


async def insert_rows(node: LiteFSEmulator, count: int) -> None:
    """Create table ``t``, then insert ``count`` rows, each its own transaction sent on its own."""
    node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    await node.sync()
    for i in range(count):
        node.execute("INSERT INTO t (v) VALUES (?)", (f"v{i}",))
        await node.sync()


async def test_stream_snapshot_and_incrementals(server: Server, client: Client, tmp_path: Path) -> None:
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        node.execute("INSERT INTO t (v) VALUES ('first')")
        await node.sync()
        assert node.stats.snapshots_sent == 1
        assert await server_pos(client, "db") == (f"{node.txid:016x}", f"{node.pos.post_apply_checksum:016x}")
        for i in range(200):
            node.execute("INSERT INTO t (v) VALUES (?)", (f"row {i} " + "x" * (i % 700),))
            if i % 7 == 0:
                await node.sync()
                assert await server_pos(client, "db") == (
                    f"{node.txid:016x}",
                    f"{node.pos.post_apply_checksum:016x}",
                )
        await node.sync()
        assert node.txid == 202
        assert await server_pos(client, "db") == (f"{node.txid:016x}", f"{node.pos.post_apply_checksum:016x}")

        status, _, body = await client.request("GET", "/db/snapshot?db=db")
        assert status == 200
        header, trailer, _ = verify(io.BytesIO(body))
        assert (header.min_txid, header.max_txid, header.compressed) == (1, node.txid, True)
        assert trailer.post_apply_checksum == node.pos.post_apply_checksum
        out = tmp_path / "restored.db"
        with out.open("wb") as f:
            decode_database(io.BytesIO(body), f)
        assert sha256(out) == sha256(node.db_path)
        with sqlite3.connect(out) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

        status, _, raw = await client.request("GET", "/db/snapshot?db=db&format=sqlite")
        assert status == 200 and hashlib.sha256(raw).hexdigest() == sha256(node.db_path)


async def test_large_batch_of_pending_transactions(server: Server, client: Client, tmp_path: Path) -> None:
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        await node.sync()
        for i in range(300):
            node.execute("INSERT INTO t (v) VALUES (randomblob(?))", (100 + i,))
        posts = node.stats.posts
        await node.sync()
        assert node.stats.posts - posts == 2  # 256 files, then 44
        assert await server_pos(client, "db") == (f"{node.txid:016x}", f"{node.pos.post_apply_checksum:016x}")


async def test_l1_compaction_uploads_and_raises_hwm(server: Server, client: Client, tmp_path: Path) -> None:
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await insert_rows(node, 20)
        assert node.hwm == 0  # nothing is in object storage yet
        assert await server.scheduler.run(1) == 1
        files = await server.objects.list_files("test", "db", 1)
        assert [(f.min_txid, f.max_txid) for f in files] == [(1, node.txid)]
        meta = await server.objects.metadata(files[0])
        assert meta.post_apply_checksum == node.pos.post_apply_checksum
        assert meta.page_size == 4096 and meta.commit * 4096 == node.db_path.stat().st_size
        node.execute("INSERT INTO t (v) VALUES ('after')")
        await node.sync()
        assert node.hwm == node.txid - 1  # the HWM is what L1 holds, not what L0 holds
        assert await server.scheduler.run(1) == 1
        files = await server.objects.list_files("test", "db", 1)
        assert [(f.min_txid, f.max_txid) for f in files][-1] == (node.txid, node.txid)
        # The L1 file verifies and the snapshot is rebuilt from storage plus L0 identically.
        dest = tmp_path / "l1.ltx"
        await server.objects.download(files[0], dest)
        with dest.open("rb") as f:
            header, trailer, _ = verify(f)
        assert header.is_snapshot and header.compressed
        assert trailer.post_apply_checksum == meta.post_apply_checksum
        status, _, raw = await client.request("GET", "/db/snapshot?db=db&format=sqlite")
        assert status == 200 and hashlib.sha256(raw).hexdigest() == sha256(node.db_path)


async def test_l1_compaction_of_more_than_256_files(server: Server, client: Client, tmp_path: Path) -> None:
    """301 L0 files (more than LiteFS ever sends in one POST) are compacted into contiguous L1 files, a
    bounded batch per run, and the HWM reaches the last of them."""
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await insert_rows(node, 300)
        db = await server.store.database("test", "db")
        assert len([f for f in await server.store.files(db) if f.level == 0]) == 301
        runs = 0
        while (await server.store.database("test", "db")).hwm != node.txid:  # a bounded batch per run
            assert await server.scheduler.run(1) == 1
            runs += 1
        assert runs == -(-301 // compaction.MAX_SOURCE_FILES)
        files = await server.objects.list_files("test", "db", 1)
        ranges = [(f.min_txid, f.max_txid) for f in files]
        assert ranges[0][0] == 1 and ranges[-1][1] == node.txid
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))  # contiguous, no gap
        assert (await server.objects.metadata(files[-1])).post_apply_checksum == node.pos.post_apply_checksum
    status, _, raw = await client.request("GET", "/db/snapshot?db=db&format=sqlite")
    assert status == 200 and hashlib.sha256(raw).hexdigest() == sha256(node.db_path)


async def test_divergence_pulls_snapshot(server: Server, client: Client, tmp_path: Path) -> None:
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        node.execute("INSERT INTO t (v) VALUES ('kept')")
        await node.sync()
        server_state = node.rows("SELECT * FROM t")
        node.execute_unrecorded("INSERT INTO t (v) VALUES ('behind the server')")
        node.execute("INSERT INTO t (v) VALUES ('next')")
        await node.sync_until_synced()
        assert node.stats.snapshots_pulled == 1
        assert node.rows("SELECT * FROM t") == server_state
        status, _, raw = await client.request("GET", "/db/snapshot?db=db&format=sqlite")
        assert status == 200 and hashlib.sha256(raw).hexdigest() == sha256(node.db_path)


async def test_a_body_over_the_memory_buffer_is_spilled_to_disk(
    server: Server, client: Client, tmp_path: Path
) -> None:
    """A transaction larger than the in-memory body buffer (1 MiB) goes through a temp file, which is gone
    once the request is answered, and is stored exactly."""
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        await node.sync()
        node.execute(
            "INSERT INTO t (v) VALUES (randomblob(3 * 1024 * 1024))"
        )  # incompressible: > 1 MiB of LZ4
        await node.sync()
        assert await server_pos(client, "db") == (f"{node.txid:016x}", f"{node.pos.post_apply_checksum:016x}")
        sizes = [p.stat().st_size for p in server.store.l0_dir.rglob("*.ltx")]
        assert max(sizes) > server_app.BODY_BUFFER  # the body was larger than the in-memory buffer
        assert list(server.store.tmp_dir.iterdir()) == []  # its temp file is gone
    status, _, raw = await client.request("GET", "/db/snapshot?db=db&format=sqlite")
    assert status == 200 and hashlib.sha256(raw).hexdigest() == sha256(node.db_path)


async def test_failed_download_stops_the_others_and_leaves_no_temp_files(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await node.sync()
        await server.scheduler.run(1)
        for i in range(3):
            node.execute("INSERT INTO t (v) VALUES (?)", (f"v{i}",))
            await node.sync()
            await server.scheduler.run(1)
        await server.scheduler.run(1)
    db = await server.store.database("test", "db")
    remote = [f for f in await server.store.files(db) if f.level == 1]
    assert len(remote) >= 3
    started: list[int] = []
    all_started = asyncio.Event()
    cancelled: list[int] = []

    async def flaky_download(info: FileInfo, dest: Path) -> None:
        started.append(info.min_txid)
        if len(started) == len(remote):
            all_started.set()
        if info.min_txid == remote[0].min_txid:
            await all_started.wait()
            raise StorageError("injected failure")
        try:
            await asyncio.Event().wait()  # still running when the first one fails
        except asyncio.CancelledError:
            cancelled.append(info.min_txid)
            raise

    monkeypatch.setattr(server.store.objects, "download", flaky_download)
    with pytest.raises(StorageError, match="injected failure"):
        async with server.store.open_files(db, remote):
            pass
    assert sorted(cancelled) == sorted(f.min_txid for f in remote[1:])  # the others were stopped first
    assert list(server.store.tmp_dir.iterdir()) == []
