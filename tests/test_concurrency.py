"""Many LiteFS nodes syncing at once while restores, exports, info and deletes run on other databases:
every request succeeds and every position the server reports is the one its node holds."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from lfsb.ltx import format_txid
from lfsb.server.main import Server
from tests.lfsb_server import Client, check_sqlite
from tests.litefs import LiteFSEmulator

SEED = 7
CLUSTERS = 20
DATABASES = 10
"""Databases written concurrently per cluster (by as many nodes, sharing the cluster's ID)."""
ROUNDS = 4
LEVELS = "1=1s/1h,2=1h/30d,3=2h/30d"
"""L1 compaction runs every second meanwhile."""


def cluster_name(i: int) -> str:
    """The name of the ``i``-th cluster."""
    return f"c{i:02d}"


def node_for(tmp_path: Path, server: Server, cluster: int, name: str) -> LiteFSEmulator:
    """A node of ``cluster`` (all of a cluster's nodes share its ID, as the server pins one per cluster)."""
    return LiteFSEmulator(
        tmp_path / cluster_name(cluster) / name,
        server.url,
        name=name,
        token=f"cluster {cluster_name(cluster)}",
        cluster_id=f"LFSC{cluster + 1:016X}",
    )


async def writer(node: LiteFSEmulator, rng: random.Random) -> None:
    """ROUNDS small transactions, each synced (SyncError on any non-2xx answer)."""
    node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    await node.sync()
    for _ in range(ROUNDS):
        node.execute("INSERT INTO t (v) VALUES (?)", ("x" * rng.randrange(10, 2000),))
        await node.sync()
        await asyncio.sleep(rng.uniform(0, 0.05))


async def side_work(client: Client, tmp_path: Path, restore_to: int, rows: list[tuple[Any, ...]]) -> None:
    """Export, info, restore of ``side`` and a delete of ``doomed``, while the cluster's nodes write."""
    status, info, _ = await client.request("GET", "/db/info?db=side")
    assert status == 200 and info["restorablePaths"], info
    status, _, raw = await client.request("GET", "/db/snapshot?db=side&format=sqlite")
    assert status == 200
    export = tmp_path / f"{client.cluster}-side.db"
    export.write_bytes(raw)
    check_sqlite(export)
    status, body, _ = await client.request("POST", f"/db/restore?db=side&txid={format_txid(restore_to)}")
    assert status == 200, body
    status, _, raw = await client.request("GET", "/db/snapshot?db=side&format=sqlite")
    assert status == 200
    export.write_bytes(raw)
    assert check_sqlite(export) == rows
    status, body, _ = await client.request("DELETE", "/db?db=doomed")
    assert status == 200, body


async def test_many_databases(start_server: object, tmp_path: Path) -> None:
    # Every cluster exports at once here: admit them all (the limit itself is tested in test_hostile).
    server: Server = await start_server(LFSB_LEVELS=LEVELS, LFSB_MAX_EXPORTS=str(2 * CLUSTERS))  # type: ignore[operator]
    rng = random.Random(SEED)
    clients = [Client(server.url, cluster_name(c)) for c in range(CLUSTERS)]
    writers = [node_for(tmp_path, server, c, f"db{d}") for c in range(CLUSTERS) for d in range(DATABASES)]
    sides = [node_for(tmp_path, server, c, "side") for c in range(CLUSTERS)]
    doomed = [node_for(tmp_path, server, c, "doomed") for c in range(CLUSTERS)]
    try:
        restore_rows = []
        for side in sides:
            await writer(side, rng)
            restore_rows.append(side.rows("SELECT * FROM t ORDER BY id"))  # at TXID 1 + ROUNDS
            side.execute("DELETE FROM t")
            await side.sync()
        await asyncio.gather(*(writer(node, rng) for node in doomed))
        await asyncio.gather(
            *(writer(node, random.Random(rng.random())) for node in writers),
            *(
                side_work(client, tmp_path, 1 + ROUNDS, rows)
                for client, rows in zip(clients, restore_rows, strict=True)
            ),
        )
        for c, client in enumerate(clients):
            status, positions, _ = await client.request("GET", "/pos")
            assert status == 200
            expected = {
                node.name: node.pos.to_json() for node in writers[c * DATABASES : (c + 1) * DATABASES]
            }
            assert positions.keys() == {*expected, "side"}  # "doomed" is gone
            assert {name: positions[name] for name in expected} == expected
            assert positions["side"]["TXID"] == format_txid(sides[c].txid + 1)  # the restore appended one
    finally:
        await asyncio.gather(*(node.close() for node in [*writers, *sides, *doomed]))
        await asyncio.gather(*(client.close() for client in clients))
