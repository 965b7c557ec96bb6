"""Restore checks: scheduled and asked-for checks rebuilt from object storage alone, their records in the
metadata db, ``lfsb verify`` and ``lfsb status``, and their metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from lfsb.server.main import Server
from lfsb.store.records import CheckRecord
from lfsb.store.writes import CHECKS_KEPT
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
