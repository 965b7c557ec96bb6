"""A full data directory: ``POST /db/tx`` fails with 507 ENOSPACE and changes nothing, and once space is freed
the same server (no restart) accepts LiteFS's pending transactions again."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lfsb.server.main import Server
from tests.lfsb_server import Client, assert_no_temp_files, assert_unchanged, server_state
from tests.litefs import LiteFSEmulator, SyncError
from tests.s3server import S3Settings

SEED = 4242
CLUSTER_ID = "LFSC00000000000000D1"
ROW = 100_000
"""Bytes of random (incompressible) data per inserted row: about 25 pages per transaction."""
SLACK = (0, *range(96 << 10, 132 << 10, 4 << 10), 320 << 10)
"""Bytes left free after filling the disk: none, then steps of a page around the size of one request body
(so that some requests fail while storing the body and some get past it), then plenty."""


@pytest.fixture
def storage_env(s3_bucket: S3Settings) -> dict[str, str]:
    """Objects go to moto, so only L0 files and the metadata db take room on the small disk."""
    return s3_bucket.env()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root)."""
    path = tmp_path / "disk"
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a 4 MiB tmpfs (root needed): {result.stderr.decode().strip()}")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=True)


def fill(path: Path, slack: int) -> None:
    """Write ``path`` until the disk is full, then free its last ``slack`` bytes."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(path, max(0, path.stat().st_size - slack))


async def integrity(server: Server) -> list[tuple[str]]:
    """``PRAGMA integrity_check`` of the server's metadata db, through the server's own reader."""
    return await server.store.meta.read(lambda c: c.execute("PRAGMA integrity_check").fetchall())


async def test_body_does_not_fit(start_server: object, small_disk: Path, tmp_path: Path) -> None:
    """Requests on a full disk get 507 and change nothing; with space again, LiteFS catches up."""
    server: Server = await start_server(data_path=small_disk / "data", LFSB_DISK_RESERVE="0")  # type: ignore[operator]
    client = Client(server.url)
    node = LiteFSEmulator(tmp_path / "node", server.url)
    rng = random.Random(SEED)
    filler = small_disk / "filler"  # outside the data directory
    try:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        await node.sync()
        failures: list[str] = []
        for slack in SLACK:
            before = await server_state(server, client)
            fill(filler, slack)
            node.execute("INSERT INTO t (v) VALUES (?)", (rng.randbytes(ROW),))
            try:
                await node.sync()
            except SyncError as e:
                assert (e.status, e.code) == (507, "ENOSPACE"), e.body
                failures.append(e.body)
                assert await integrity(server) == [("ok",)]
                filler.unlink()
                await assert_unchanged(server, client, before)  # no partial write, no leaked temp file
                assert await node.sync() == node.pos  # the pending transaction goes through now
            else:
                assert await integrity(server) == [("ok",)]
                filler.unlink()
        assert failures and len(failures) < len(SLACK), failures  # both outcomes were seen
        status, positions, _ = await client.request("GET", "/pos")
        assert status == 200 and positions == {"db": node.pos.to_json()}
        status, _, body = await client.request("GET", "/db/snapshot?db=db&format=sqlite")
        assert status == 200 and body == node.db_path.read_bytes()
    finally:
        filler.unlink(missing_ok=True)
        await node.close()
        await client.close()


async def test_metadata_does_not_fit(start_server: object, small_disk: Path, tmp_path: Path) -> None:
    """SQLite's "database or disk is full" is a 507 too (it was a 500 EINTERNAL): when pinning a new
    cluster's ID, and when recording a new database whose small body (16 MB of zero pages, LZ4) fits but
    whose thousands of page checksums do not."""
    server: Server = await start_server(data_path=small_disk / "data")  # type: ignore[operator]
    client = Client(server.url)
    filler = small_disk / "filler"
    nodes: list[LiteFSEmulator] = []
    try:
        fill(filler, 0)
        status, body, _ = await client.request("GET", "/pos", headers={"Litefs-Cluster-Id": CLUSTER_ID})
        assert (status, body["code"]) == (507, "ENOSPACE")
        filler.unlink()
        stored: list[int] = []  # slack of each request that failed although its body was stored
        for slack in range(96 << 10, 256 << 10, 16 << 10):
            node = LiteFSEmulator(
                tmp_path / str(slack), server.url, name=f"big{slack}", cluster_id=CLUSTER_ID
            )
            nodes.append(node)
            node.execute("CREATE TABLE t (v BLOB)")
            node.execute("INSERT INTO t VALUES (zeroblob(16000000))")
            fill(filler, slack)
            try:
                await node.sync()
            except SyncError as e:
                assert (e.status, e.code) == (507, "ENOSPACE"), e.body
                stored.append(slack)
                status, positions, _ = await client.request("GET", "/pos")
                assert status == 200 and node.name not in positions
            assert await integrity(server) == [("ok",)]
            filler.unlink()
            await assert_no_temp_files(server)
        l0 = [p.stat().st_size for p in (server.store.l0_dir / "test").glob("big*/*.ltx")]
        assert l0 and any(slack > max(l0) + 4096 for slack in stored), (stored, l0)  # failed after the body
        for node in nodes:
            assert await node.sync() == node.pos  # the failed databases are created now
        status, positions, _ = await client.request("GET", "/pos")
        assert status == 200 and positions == {node.name: node.pos.to_json() for node in nodes}
    finally:
        filler.unlink(missing_ok=True)
        await asyncio.gather(*(node.close() for node in nodes))
        await client.close()
