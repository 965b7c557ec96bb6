"""Crashes: the real ``lfsb-server`` killed at its crash points (``lfsb.faults``) and at random times.

The campaign (``tests/campaign.py``) runs 20 seeded faults by default; set ``LFSB_FULL_CAMPAIGN=1`` for
the long one (or run ``python bench/fault_campaign.py --seed N``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from lfsb.faults import parse
from lfsb.ltx import Pos
from lfsb.server.main import Server
from lfsb.storage import local
from lfsb.store.records import Database, LTXFile
from tests.campaign import FULL_KILLS, ROWS_AT_A_POINT, Campaign, l0_files, read_index, read_position
from tests.lfsb_server import Client, ServerProcess, check_sqlite, free_port, in_writer, record_fsync_dirs
from tests.litefs import LiteFSEmulator
from tests.s3server import S3Server, create_bucket

SEED = 20261125


def run_crash_points(crash_at: str, *points: str) -> subprocess.CompletedProcess[str]:
    """A Python process that passes ``points`` in order (printing each) with ``LFSB_CRASH_AT=crash_at``."""
    code = "from lfsb.faults import crash_point\n" + "".join(
        f"crash_point({p!r}); print({p!r}, flush=True)\n" for p in points
    )
    env = {**os.environ, "LFSB_CRASH_AT": crash_at}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)


def test_crash_point_kills_on_its_nth_arrival_only() -> None:
    result = run_crash_points("b:2", "a", "b", "a", "b", "c")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.split() == ["a", "b", "a"]
    assert run_crash_points("", "a", "b").stdout.split() == ["a", "b"]
    assert run_crash_points("b", "a", "b").stdout.split() == ["a"]
    assert parse("x.y:3") == {"x.y": 3} and parse("x") == {"x": 1} and parse("") == {}
    for bad in ("x:0", ":2", "x:two"):
        with pytest.raises(ValueError):
            parse(bad)


async def run_campaign(tmp_path: Path, kills: int) -> None:
    with S3Server() as s3:
        summary = await Campaign(tmp_path, create_bucket(s3.endpoint), SEED, kills).run()
    report = summary.table() + "".join(f"\nMISMATCH {m}" for m in summary.mismatches)
    print(report)
    assert not summary.mismatches, report
    assert sum(summary.faults.values()) >= kills, report
    assert summary.acknowledged > 200 and summary.verified == summary.acknowledged, report
    assert summary.checks[ROWS_AT_A_POINT] >= kills // 2, report
    assert any(label.startswith("crash point ") for label in summary.faults), report
    assert any(label.startswith("kill -9 ") for label in summary.faults), report
    assert any(label.startswith("storage ") for label in summary.faults), report
    for label in (
        "stored file verifies",
        "HWM catches up after a restart",
        "HWM never past L1 in storage",
        "index matches storage at the end",
    ):
        assert summary.checks[label] > 0, report


async def test_crash_campaign(tmp_path: Path) -> None:
    await run_campaign(tmp_path, kills=20)


@pytest.mark.skipif(
    not os.environ.get("LFSB_FULL_CAMPAIGN"), reason="the long campaign: LFSB_FULL_CAMPAIGN=1"
)
async def test_crash_campaign_full(tmp_path: Path) -> None:
    await run_campaign(tmp_path, kills=FULL_KILLS)


async def test_crash_while_rebuilding_from_storage(tmp_path: Path) -> None:
    """A metadata db replaced by an older copy is rebuilt from storage at start; a crash right after the
    rebuild commits leaves stale L0 files (removed at the next start), never rows without files."""
    data, port = tmp_path / "data", free_port()
    servers: list[ServerProcess] = []

    async def start(**env: str) -> ServerProcess:
        server = ServerProcess(data, port, **settings.env(), LFSB_LEVELS="1=1s/1h,2=1h/1h,3=2h/1h", **env)
        servers.append(server)
        await server.start()
        return server

    async def serve_writes(count: int) -> None:
        """Start the server, write ``count`` transactions, wait until L1 has them, stop it."""
        server = await start()
        await server.wait_ready()
        for i in range(count):
            node.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            await node.sync()
        while (state := read_position(data))[1] != state[0]:
            await asyncio.sleep(0.1)
        server.proc.send_signal(signal.SIGTERM)
        assert (await server.finish())[0] == 0

    with S3Server() as s3:
        settings = create_bucket(s3.endpoint)
        async with LiteFSEmulator(tmp_path / "node", f"http://127.0.0.1:{port}") as node:
            try:
                node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
                await serve_writes(3)
                shutil.copy(data / "server.db", tmp_path / "stale.db")
                await serve_writes(3)
                shutil.copy(tmp_path / "stale.db", data / "server.db")
                for suffix in ("-wal", "-shm"):
                    (data / f"server.db{suffix}").unlink(missing_ok=True)
                stale_rows = read_index(data)[1]
                assert stale_rows and stale_rows <= l0_files(data)

                crashing = await start(LFSB_CRASH_AT="recovery.rebuilt")
                assert await crashing.proc.wait() == -signal.SIGKILL
                assert read_index(data)[1] <= l0_files(data)  # no row refers to a deleted L0 file
                assert read_position(data)[:2] == (node.txid, node.txid)

                server = await start()
                await server.wait_ready()
                assert not l0_files(data)  # the stale files are gone
                client = Client(server.url)
                status, _, body = await client.request("GET", "/db/snapshot?db=db&format=sqlite")
                await client.close()
                assert status == 200
                (tmp_path / "export.db").write_bytes(body)
                assert check_sqlite(tmp_path / "export.db") == node.rows("SELECT * FROM t ORDER BY id")
                node.execute("INSERT INTO t (v) VALUES ('after')")
                assert await node.sync() == node.pos != Pos()
                assert node.stats.snapshots_sent == 1
            finally:
                for server in servers:
                    await server.kill()


@pytest.mark.parametrize("storage_env", ["local"], indirect=True)
async def test_created_directories_are_fsynced_into_their_parents(
    start_server: Callable[..., Awaitable[Server]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power loss (which SIGKILL does not simulate) must not take away a directory that holds an
    acknowledged L0 file or an indexed object: each directory created on the way is fsynced into its
    parent."""
    fsynced: set[Path] = set()
    real_fsync_dir = local.fsync_dir

    def recording_fsync_dir(path: Path) -> None:
        fsynced.add(Path(path))
        real_fsync_dir(path)

    monkeypatch.setattr(local, "fsync_dir", recording_fsync_dir)
    server = await start_server()
    in_writer_log = tmp_path / "writer-fsync-dirs"
    await in_writer(server, record_fsync_dirs, in_writer_log)  # L0 directories are made there
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (x)")
        await node.sync()
    assert await server.scheduler.run(1) == 1
    data = tmp_path / "data"
    created = [p for p in data.rglob("*") if p.is_dir() and p != data / "tmp"]
    assert data / "l0" / "test" / "db" in created and data / "objects" / "test" / "db" / "1" in created
    fsynced |= {Path(line) for line in in_writer_log.read_text().splitlines()}
    assert not {p.parent for p in [data, *created]} - fsynced


async def test_export_plans_again_when_retention_removes_a_planned_file(
    start_server: Callable[..., Awaitable[Server]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export does not wait for retention: when L1 compaction and L0 retention land between its plan
    and the opening of the planned L0 files, it plans again instead of failing with a 500."""
    server = await start_server(LFSB_L0_RETENTION="1ms")
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (x)")
        for i in range(3):
            node.execute("INSERT INTO t VALUES (?)", (i,))
            await node.sync()
        rows = node.rows("SELECT * FROM t")
    open_files = server.store.open_files
    compacted: list[int] = []
    raced = False

    @contextlib.asynccontextmanager
    async def open_files_after_compaction(
        db: Database, files: list[LTXFile]
    ) -> AsyncIterator[list[BinaryIO]]:
        nonlocal raced
        if not raced:  # L1 takes the planned L0 files in, retention removes them
            raced = True
            compacted.append(await server.scheduler.run(1))
        async with open_files(db, files) as handles:
            yield handles

    monkeypatch.setattr(server.store, "open_files", open_files_after_compaction)
    client = Client(server.url)
    try:
        status, _, body = await client.request("GET", "/db/snapshot?db=db&format=sqlite")
    finally:
        await client.close()
    assert compacted == [1] and status == 200, body
    (tmp_path / "export.db").write_bytes(body)
    assert check_sqlite(tmp_path / "export.db", "SELECT * FROM t") == rows
