"""Many databases: serving while recovering, restarts that do not list storage, scheduled work that
touches only the databases that have some, and LiteFS writing across restarts with a thousand databases."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lfsb.server import app as server_app
from lfsb.server.main import Server
from lfsb.storage.local import LocalStore
from tests.lfsb_server import Client, age_files
from tests.litefs import LiteFSEmulator
from tests.test_server_errors import accepted, post_tx, snapshot


async def create_databases(client: Client, count: int, prefix: str = "db") -> None:
    """``count`` databases of 3 pages each, as LiteFS's first POSTs create them."""
    body, _ = snapshot(3)
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            accepted(await post_tx(client, body, name=f"{prefix}{i:05d}"))

    await asyncio.gather(*(one(i) for i in range(count)))


def runs(server: Server, label: str) -> float:
    """Compaction steps run so far for ``label`` (a level, or ``retention`` for the idle sweep)."""
    return server.store.metrics.compaction_runs.labels(label)._value.get()


@pytest.mark.parametrize("storage_env", [{}])
async def test_idle_sweep_touches_only_databases_with_work(server: Server, client: Client) -> None:
    """Once compaction has caught up, a run of a level steps no idle database until one of its files is
    due for retention; then exactly those are visited."""
    await create_databases(client, 30)
    assert await server.scheduler.run(1) == 30
    await server.scheduler.run(2)  # level 2 takes them in
    before = (runs(server, "retention"), runs(server, "2"))
    await server.scheduler.run(2)
    assert (runs(server, "retention"), runs(server, "2")) == before  # nothing to do, nothing visited
    await age_files(server, 2 * 3600)  # past L0's hour of retention
    await server.scheduler.run(2)
    assert runs(server, "retention") == before[0] + 30
    assert not any(
        f.level == 0 for f in await server.store.files(await server.store.database("test", "db00000"))
    )


@pytest.mark.parametrize("storage_env", [{}])
async def test_a_clean_restart_does_not_list_storage(
    start_server: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a graceful stop, a start finds storage as it left it and lists nothing; after a crash (or
    when another server wrote its mark), it lists and reconciles everything."""
    server = await start_server(tmp_path / "data")
    async with Client(server.url) as client:
        await create_databases(client, 5)
    await server.scheduler.run(1)
    await server.stop()

    listed: list[str] = []
    original = LocalStore.list_clusters

    async def counting(self: LocalStore) -> list[str]:
        listed.append("clusters")
        return await original(self)

    monkeypatch.setattr(LocalStore, "list_clusters", counting)
    server = await start_server(tmp_path / "data")
    assert listed == [] and len(await server.store.positions("test")) == 5
    await server.stop()

    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "server.db")) as conn, conn:
        conn.execute("UPDATE server_state SET value = '0' WHERE key = 'clean'")  # as a crash leaves it
    server = await start_server(tmp_path / "data")
    assert listed == ["clusters"] and len(await server.store.positions("test")) == 5


async def test_serving_while_recovering(
    start_server: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh data directory on a bucket: the server answers at once; a cluster not recovered yet gets
    503 ERECOVERING with Retry-After (a write is never accepted against a stale position), one that is
    recovered is served, and /healthz says recovering with counts until it is all done."""
    first = await start_server(tmp_path / "first")
    for cluster in ("fast", "slow"):
        async with Client(first.url, cluster) as client:
            await create_databases(client, 3)
    await first.scheduler.run(1)
    await first.stop()
    fresh = tmp_path / "fresh"
    if first.config.s3 is None:
        shutil.copytree(first.config.objects_path, fresh / "objects")

    release = asyncio.Event()
    store_class = type(first.objects)
    original = store_class.list_cluster

    async def held(self: Any, cluster: str) -> Any:
        if cluster == "slow":
            await release.wait()
        return await original(self, cluster)

    monkeypatch.setattr(store_class, "list_cluster", held)
    server = await start_server(fresh, recovered=False)
    async with Client(server.url, "fast") as fast, Client(server.url, "slow") as slow:
        for _ in range(200):  # "fast" is recovered first (clusters go in name order)
            if (await fast.fetch("GET", "/pos")).status == 200:
                break
            await asyncio.sleep(0.05)
        assert set((await fast.fetch("GET", "/pos")).data) == {"db00000", "db00001", "db00002"}
        health = await fast.fetch("GET", "/healthz")
        assert health.status == 200 and health.data["status"] == "recovering"
        assert health.data["progress"] == {"clusters": 1, "clustersTotal": 2, "databases": 3}
        assert "slow" not in health.body.decode()
        for reply in [
            await slow.fetch("GET", "/pos"),
            await post_tx(slow, snapshot(3, txid=2)[0], name="db00000"),
            await slow.fetch("GET", "/db/snapshot?db=db00000"),
        ]:
            assert (reply.status, reply.data["code"]) == (503, "ERECOVERING")
            assert reply.headers["Retry-After"] == str(server_app.RETRY_AFTER)
        release.set()
        await server.wait_recovered()
        assert set((await slow.fetch("GET", "/pos")).data) == {"db00000", "db00001", "db00002"}
        assert (await fast.fetch("GET", "/healthz")).data == {"status": "ok"}


@pytest.mark.parametrize("storage_env", [{}])
async def test_litefs_writes_across_restarts_with_a_thousand_databases(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """LiteFS keeps writing one database while the server, holding 1,000 others, restarts gracefully and
    after a crash: every acknowledged transaction is there, and the others are all served again."""
    data = tmp_path / "data"
    server = await start_server(data)
    bind = server.url.removeprefix("http://")
    async with Client(server.url) as client:
        await create_databases(client, 1000, prefix="tenant")
    await server.scheduler.run(1)
    async with LiteFSEmulator(tmp_path / "node", server.url, name="live") as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await node.sync()
        for restart in ("graceful", "crash"):
            node.execute("INSERT INTO t (v) VALUES (?)", (f"before the {restart} restart",))
            await node.sync()
            await server.stop()
            if restart == "crash":
                with contextlib.closing(sqlite3.connect(data / "server.db")) as conn, conn:
                    conn.execute("UPDATE server_state SET value = '0' WHERE key = 'clean'")
            node.execute("INSERT INTO t (v) VALUES (?)", (f"while down ({restart})",))
            server = await start_server(data, recovered=False, LFSB_BIND=bind)
            for _ in range(600):  # LiteFS retries every second; here as soon as the server serves
                with contextlib.suppress(Exception):
                    await node.sync()
                    break
                await asyncio.sleep(0.05)
            await server.wait_recovered()
            await node.sync()
        positions = await server.store.positions("test")
        assert len(positions) == 1001
        assert (await server.store.database("test", "live")).txid == node.txid
        async with Client(server.url) as client:
            status, _, body = await client.request("GET", "/db/snapshot?db=live&format=sqlite")
        assert status == 200 and body == node.db_path.read_bytes()


@pytest.mark.parametrize("storage_env", [{}])
async def test_per_database_state_is_not_kept_and_metrics_stream(server: Server, client: Client) -> None:
    """After work on 1,500 databases no per-database lock is left in memory, and ``/metrics`` (streamed
    in chunks from the metadata db) parses, with one sample per database in each per-database family and
    none for a deleted database."""
    await create_databases(client, 1500)
    assert await server.scheduler.run(1) == 1500
    status, _, _ = await client.request("DELETE", "/db?db=db00007")
    assert status == 200
    gc.collect()
    assert len(server.store._locks) == 0

    status, _, body = await client.request("GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    live = {f"db{i:05d}" for i in range(1500)} - {"db00007"}
    for name in ("lfsb_hwm_lag", "lfsb_level1_last_upload_timestamp_seconds", "lfsb_corrupt_objects"):
        samples = families[name].samples
        assert {s.labels["database"] for s in samples} == live and len(samples) == len(live), name
    assert {s.value for s in families["lfsb_hwm_lag"].samples} == {0.0}
    assert families["lfsb_compaction_pending"].samples[0].value == 0
