"""Object storage misbehaving behind :class:`FaultProxy`: LiteFS keeps syncing (L0 is local), compaction
retries and catches up, the HWM never passes what is in the bucket, and nothing is lost."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lfsb.server.main import Server
from lfsb.storage import FileInfo
from lfsb.storage.s3 import S3Store
from tests.faultproxy import FaultProxy
from tests.lfsb_server import Client, server_config
from tests.litefs import LiteFSEmulator
from tests.s3server import S3Settings, create_bucket

LEVELS = "1=250ms/1h,2=2s/30d,3=2h/30d"
"""L1 four times a second and L2 every two seconds, for plenty of S3 traffic; L3 never runs."""
SEED = 20261125
OUTAGE = 60.0
"""Seconds storage stays down: a minute, as long as the issue asks for."""
CATCH_UP = 30.0


@dataclass
class Rig:
    """A server whose S3 traffic goes through a fault proxy, one LiteFS node, and a direct view of moto."""

    server: Server
    proxy: FaultProxy
    moto: S3Store
    node: LiteFSEmulator
    client: Client
    bucket: S3Settings


@pytest.fixture
async def rig(tmp_path: Path, s3_server: str) -> AsyncIterator[Rig]:
    """The server with S3 timeouts and retries short enough for tests (a hung request costs 0.5 s)."""
    bucket = create_bucket(s3_server)
    proxy = FaultProxy(s3_server, seed=SEED, hang_seconds=5)
    await proxy.start()
    env = {**bucket.env(), "AWS_ENDPOINT_URL_S3": proxy.url}
    objects = S3Store.from_env(
        env, attempts=4, retry_delay=0.05, max_retry_delay=0.2, connect_timeout=0.5, read_timeout=0.5
    )
    server = Server(server_config(tmp_path / "data", env, LFSB_LEVELS=LEVELS), objects)
    await server.start()
    await server.wait_recovered()
    moto = S3Store.from_env(bucket.env())
    node = LiteFSEmulator(tmp_path / "node", server.url, timeout=10)
    client = Client(server.url)
    try:
        yield Rig(server, proxy, moto, node, client, bucket)
    finally:
        await node.close()
        await client.close()
        await server.stop()
        await moto.close()
        await proxy.stop()


def covered(infos: list[FileInfo]) -> int:
    """The highest TXID T such that files cover every TXID 1..T."""
    upto = 0
    for info in sorted(infos, key=lambda i: i.min_txid):
        if info.min_txid > upto + 1:
            break
        upto = max(upto, info.max_txid)
    return upto


async def server_hwm(rig: Rig) -> int:
    """The HWM in the server's metadata db."""
    return (await rig.server.store.database("test", "db")).hwm


async def assert_hwm_durable(rig: Rig) -> None:
    """The HWM the server reports (and last sent to LiteFS) is covered by L1 objects actually in moto."""
    hwm = max(rig.node.hwm, await server_hwm(rig))  # read before listing: uploads precede HWM raises
    assert hwm <= rig.node.txid
    assert covered(await rig.moto.list_files("test", "db", 1)) >= hwm


async def write(rig: Rig, rng: random.Random, count: int, gap: float) -> None:
    """``count`` transactions, each synced (every POST answered 2xx, else SyncError) and the HWM checked."""
    for _ in range(count):
        rig.node.execute("INSERT INTO t (v) VALUES (?)", (rng.randbytes(rng.randrange(100, 6000)),))
        await rig.node.sync()
        await assert_hwm_durable(rig)
        await asyncio.sleep(gap)


async def wait_caught_up(rig: Rig) -> None:
    """Wait until compaction has put every transaction in L1 and raised the HWM to the position."""
    deadline = time.monotonic() + CATCH_UP
    while await server_hwm(rig) != rig.node.txid:
        assert time.monotonic() < deadline, f"HWM {await server_hwm(rig)} never reached {rig.node.txid}"
        await assert_hwm_durable(rig)
        await asyncio.sleep(0.1)
    await assert_hwm_durable(rig)


async def assert_nothing_lost(rig: Rig, data: Path) -> None:
    """The server's snapshot, and that of a fresh server recovering from moto alone, are byte-identical to
    LiteFS's database."""
    expected = rig.node.db_path.read_bytes()
    status, _, body = await rig.client.request("GET", "/db/snapshot?db=db&format=sqlite")
    assert status == 200 and body == expected
    fresh = Server(server_config(data, rig.bucket.env()))
    await fresh.start()
    await fresh.wait_recovered()
    client = Client(fresh.url)
    try:
        status, positions, _ = await client.request("GET", "/pos")
        assert status == 200 and positions == {"db": rig.node.pos.to_json()}
        status, _, body = await client.request("GET", "/db/snapshot?db=db&format=sqlite")
        assert status == 200 and body == expected
    finally:
        await client.close()
        await fresh.stop()


async def start_table(rig: Rig) -> None:
    """Create table ``t`` and send the new database (a snapshot) while storage is healthy."""
    rig.node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    await rig.node.sync()


async def test_mixed_faults(rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """25 % of S3 requests fail (10 % 500, 5 % hang, 10 % reset after reaching moto): every sync succeeds,
    the HWM stays honest, and once the faults stop compaction catches up with nothing lost."""
    caplog.set_level(logging.WARNING, "lfsb.storage.s3")
    rng = random.Random(SEED)
    await start_table(rig)
    await rig.proxy.set(fail=0.10, hang=0.05, reset=0.10, latency=0.005)
    await write(rig, rng, count=60, gap=0.1)
    assert {"fail", "hang", "reset", "ok"} <= set(rig.proxy.counts)
    assert any("retrying" in r.getMessage() for r in caplog.records)
    await rig.proxy.set()
    await wait_caught_up(rig)
    await write(rig, rng, count=3, gap=0)  # LiteFS learns the caught-up HWM
    assert rig.node.hwm >= rig.node.txid - 3
    await wait_caught_up(rig)
    await assert_nothing_lost(rig, tmp_path / "fresh")


async def test_storage_down(rig: Rig, tmp_path: Path) -> None:
    """Storage refuses every connection for OUTAGE seconds: ingestion goes on, /healthz is 503 naming
    storage, the HWM is frozen; once it is back, compaction catches up and /healthz is 200 again."""
    rng = random.Random(SEED)
    await start_table(rig)
    await write(rig, rng, count=5, gap=0)
    await wait_caught_up(rig)
    frozen = await server_hwm(rig)
    await rig.proxy.set(down=True)
    before = rig.node.txid
    deadline = time.monotonic() + OUTAGE
    while time.monotonic() < deadline:
        await write(rig, rng, count=1, gap=0)
        assert rig.node.hwm == frozen == await server_hwm(rig)
        status, health, _ = await rig.client.request("GET", "/healthz")
        assert status == 503 and set(health["failing"]) == {"storage"}, health
        await asyncio.sleep(0.3)
    assert rig.node.txid > before + 10
    await rig.proxy.set()
    await wait_caught_up(rig)
    status, health, _ = await rig.client.request("GET", "/healthz")
    assert status == 200, health
    await assert_nothing_lost(rig, tmp_path / "fresh")
