"""Restore checks: scheduled and asked-for checks rebuilt from object storage alone, their records in the
metadata db, ``lfsb verify`` and ``lfsb status``, and their metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from lfsb.config import load_config
from lfsb.errors import LfsbError
from lfsb.ltx import format_txid, parse_txid
from lfsb.server.main import Server
from lfsb.store.records import CheckRecord
from lfsb.store.verify import next_slot, slot_phase
from lfsb.store.writes import CHECKS_KEPT
from tests.lfsb_server import Client, History, lfsb, lfsb_json
from tests.litefs import LiteFSEmulator


def _record(i: int, ok: bool = True) -> CheckRecord:
    return CheckRecord(1_700_000_000_000 + i, i, 5, 100, 4096, ok, "ok" if ok else "bad", i % 2 == 0)


@pytest.mark.parametrize("storage_env", ["local"], indirect=True)
async def test_records_kept_per_database(server: Server, tmp_path: Path) -> None:
    """Checks are recorded per database, newest first, the newest few kept; last_checks names each
    database's newest one."""
    for name in ("a.db", "b.db"):
        async with LiteFSEmulator(tmp_path / "node", server.url, name=name) as node:
            node.execute("CREATE TABLE t (x)")
            await node.sync()
    store = server.store
    a, b = await store.database("test", "a.db"), await store.database("test", "b.db")
    for i in range(1, CHECKS_KEPT + 6):
        assert await store.record_check(a, _record(i))
    assert await store.record_check(b, _record(7, ok=False))
    newest = await store.checks(a, limit=3)
    assert [r.txid for r in newest] == [CHECKS_KEPT + 5, CHECKS_KEPT + 4, CHECKS_KEPT + 3]
    assert len(await store.checks(a, limit=1000)) == CHECKS_KEPT
    last = await store.last_checks("test")
    assert last == {"a.db": _record(CHECKS_KEPT + 5), "b.db": _record(7, ok=False)}
    assert await store.last_checks("other") == {}


async def flip_byte(server: Server, key: tuple[int, int, int], at: int = -20, name: str = "db") -> None:
    """Flip one byte of the object ``key`` (level, min, max TXID) in storage, keeping its metadata."""
    (info,) = [
        i
        for i in await server.objects.list_files("test", name, key[0])
        if (i.min_txid, i.max_txid) == key[1:]
    ]
    meta = await server.objects.metadata(info)
    path = server.config.data_path / "flip.ltx"
    await server.objects.download(info, path)
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(data)
    await server.objects.upload("test", name, key[0], key[1], key[2], path, meta)
    path.unlink()


async def compacted_history(server: Server, node: LiteFSEmulator) -> History:
    """Five transactions in two L1 files (1-3, 4-5: in storage), then two that are only in L0."""
    h = History(node)
    await h.write(3)
    assert await server.scheduler.run(1) == 1
    await h.write(2)
    assert await server.scheduler.run(1) == 1
    await h.write(2)
    return h


async def test_check_rebuilds_from_storage_and_survives_restart(
    start_server: Callable, tmp_path: Path
) -> None:
    """``lfsb verify`` checks the newest point in object storage (not the newer L0-only ones), records it;
    ``lfsb status`` shows it, after a restart too; the metrics show when the last check passed."""
    server: Server = await start_server()
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        h = await compacted_history(server, node)
        report = await lfsb_json(server, "verify", "db")
        assert report["ok"] is True, report
        assert parse_txid(report["txID"]) == 5 and h.node.txid == 7
        assert report["message"] == "ok" and report["scheduled"] is False
        assert report["bytesRead"] == sum(
            f.size
            for f in await server.store.files(await server.store.database("test", "db"))
            if f.level == 1
        )
        assert report["dbBytes"] > 0
        # An older point by TXID; one only in L0 is not a point in storage.
        older = await lfsb_json(server, "verify", "db", "--txid", "3")
        assert older["ok"] is True and older["txID"] == format_txid(3)
        result = await lfsb(server, "verify", "db", "--txid", "7")
        assert result.exit_code == 1 and "tx not available [ENOTXID]" in result.output
        text = (await lfsb(server, "status")).output
        assert "db" in text and "ok" in text and "s ago" in text
    await server.stop()
    again: Server = await start_server()
    (status,) = await lfsb_json(again, "status")
    assert status["name"] == "db" and status["hwmLag"] == 2 and status["lastL1Upload"]
    assert status["lastCheck"]["txID"] == format_txid(3) and status["lastCheck"]["ok"] is True
    metrics = await metric_lines(again)
    assert any(line.startswith('lfsb_restore_check_ok{cluster="test",database="db"} 1.0') for line in metrics)
    assert any(line.startswith("lfsb_restore_check_last_success_timestamp_seconds{") for line in metrics)
    assert any(line.startswith("lfsb_level1_last_upload_timestamp_seconds{") for line in metrics)


async def metric_lines(server: Server) -> list[str]:
    """The lines of ``GET /metrics``."""
    c = Client(server.url)
    try:
        status, _, body = await c.request("GET", "/metrics")
    finally:
        await c.close()
    assert status == 200
    return body.decode().splitlines()


async def test_check_finds_a_flipped_byte(start_server: Callable, tmp_path: Path) -> None:
    """A byte flipped in an object in storage fails the check, with a message, a metric and an exit code 1;
    the server's own L0 files do not hide it."""
    server: Server = await start_server()
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await compacted_history(server, node)
        await flip_byte(server, (1, 4, 5))
        result = await lfsb(server, "verify", "db")
        assert result.exit_code == 1, result.output
        assert "FAILED" in result.output and "rebuild failed" in result.output
        (status,) = await lfsb_json(server, "status")
        assert status["lastCheck"]["ok"] is False
        assert 'lfsb_restore_check_ok{cluster="test",database="db"} 0.0' in await metric_lines(server)
        assert 'lfsb_restore_checks_total{outcome="failed"} 1.0' in await metric_lines(server)


async def test_scheduled_checks_spread_and_recorded(start_server: Callable, tmp_path: Path) -> None:
    """With a short interval every database in storage is checked by the schedule, which records it as
    scheduled; databases not yet in storage are left alone."""
    server: Server = await start_server(LFSB_VERIFY_INTERVAL="1s")
    for name in ("a.db", "b.db", "c.db"):
        async with LiteFSEmulator(tmp_path / "node", server.url, name=name) as node:
            await History(node).write(2)
    await server.scheduler.run(1)
    async with LiteFSEmulator(tmp_path / "node", server.url, name="d.db") as node:
        await History(node).write(1)  # only in L0
    deadline = asyncio.get_running_loop().time() + 20
    while len(await server.store.last_checks("test")) < 3:
        assert asyncio.get_running_loop().time() < deadline, "scheduled checks did not run"
        await asyncio.sleep(0.1)
    checks = await server.store.last_checks("test")
    assert sorted(checks) == ["a.db", "b.db", "c.db"]
    for name, c in checks.items():
        assert c.ok and c.scheduled and c.txid == (await server.store.database("test", name)).txid


def test_slots_spread_over_the_interval() -> None:
    """Slots depend on the name and fall once per interval; 10,000 databases are spread out."""
    interval = 86400.0
    phases = [slot_phase("c", f"db{i}", interval) for i in range(10_000)]
    assert all(0 <= p < interval for p in phases)
    per_hour = [0] * 24
    for p in phases:
        per_hour[int(p // 3600)] += 1
    assert max(per_hour) < 2 * 10_000 / 24
    phase = slot_phase("c", "db", interval)
    first = next_slot(1000.0, phase, interval)
    assert 1000.0 < first <= 1000.0 + interval and next_slot(first, phase, interval) == first + interval


async def test_check_while_litefs_writes(start_server: Callable, tmp_path: Path) -> None:
    """Checks run while LiteFS keeps writing: every write is acknowledged and every check passes."""
    server: Server = await start_server()
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        h = History(node)
        await h.write(3)
        await server.scheduler.run(1)
        stop = asyncio.Event()

        async def _write() -> int:
            count = 0
            while not stop.is_set():
                await h.write(1, gap=0)
                count += 1
                if count % 5 == 0:
                    await server.scheduler.run(1)
            return count

        writer = asyncio.create_task(_write())
        reports = []
        for _ in range(3):
            db = await server.store.database("test", "db")
            reports.append(await server.verifier.check(db))
        stop.set()
        written = await writer
        assert written > 0 and all(r.ok for r in reports), reports
        assert (await server.store.database("test", "db")).txid == node.txid


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LFSB_VERIFY_INTERVAL": "0"}, "LFSB_VERIFY_INTERVAL: must be greater than zero"),
        (
            {"LFSB_VERIFY_CONCURRENCY": "0"},
            "LFSB_VERIFY_CONCURRENCY: '0' is not a whole number of at least 1",
        ),
        ({"LFSB_SCRUB_RATE": "0"}, "LFSB_SCRUB_RATE: must be greater than zero"),
        ({"LFSB_SCRUB_INTERVAL": "soon"}, "LFSB_SCRUB_INTERVAL: invalid duration"),
        ({"LFSB_NOTIFY_URL": "hooks.slack.com/secret"}, "LFSB_NOTIFY_URL: not an http:// or https:// URL"),
        ({"LFSB_HEARTBEAT_URL": "ftp://x"}, "LFSB_HEARTBEAT_URL: not an http:// or https:// URL"),
    ],
)
def test_settings_refused_with_a_message(env: dict[str, str], message: str) -> None:
    """Bad values of the new settings are refused at start, naming the setting (never echoing a URL)."""
    with pytest.raises(LfsbError) as e:
        load_config({"LFSB_DATA_PATH": "/tmp/x", **env})
    assert e.value.message.startswith(message)
    assert "secret" not in e.value.message


def test_settings_defaults() -> None:
    """The defaults of design.md §8, and the URLs kept out of the configuration's repr."""
    config = load_config({"LFSB_DATA_PATH": "/tmp/x", "LFSB_NOTIFY_URL": "https://h.example/secret"})
    assert (config.verify_interval, config.verify_concurrency) == (86400, 1)
    assert (config.scrub_interval, config.heartbeat_interval, config.heartbeat_url) == (7 * 86400, 300, None)
    assert config.notify_url == "https://h.example/secret" and "secret" not in repr(config)
