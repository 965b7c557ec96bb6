"""Retention of every level, and the snapshot plans it must keep working.

Unit tests of :mod:`lfsb.store.plan` and :func:`lfsb.store.retention.expired_files` on synthetic file
lists (upstream's worked example among them), a property test that simulates compaction and
retention, and end-to-end runs against a real server: explicit compaction rounds with file ages
moved forward, and the wall-clock scheduler with second-scale intervals and retentions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lfsb.errors import LfsbError
from lfsb.ltx import format_txid, parse_txid
from lfsb.server.main import Server
from lfsb.store.compaction import source_run
from lfsb.store.levels import SNAPSHOT_LEVEL
from lfsb.store.plan import (
    Point,
    needed_files,
    point_at,
    point_before,
    reachable,
    restorable_points,
    snapshot_plan,
)
from lfsb.store.records import LTXFile
from lfsb.store.retention import expired_files
from tests.lfsb_server import (
    Client,
    History,
    age_files,
    export_rows,
    indexed_files,
    lfsb_json,
    stored_files,
)
from tests.litefs import LiteFSEmulator

Key = tuple[int, int, int]


def ltx(level: int, min_txid: int, max_txid: int, size: int = 1000, created: int = 0) -> LTXFile:
    """A synthetic file: timestamp ``max * 1000`` ms, post-apply checksum ``max``."""
    return LTXFile(
        level, min_txid, max_txid, max_txid, max_txid * 1000, min_txid - 1, max_txid, size, created
    )


def keys(files: list[LTXFile]) -> list[Key]:
    return [f.key for f in files]


def not_found(code: str) -> pytest.RaisesExc[LfsbError]:
    """``pytest.raises`` for a 404 LfsbError with ``code``."""
    return pytest.raises(LfsbError, check=lambda e: (e.code, e.status) == (code, 404))


# -- snapshot plans ---------------------------------------------------------------------------------

# Upstream's TestCalcSnapshotPlan files (upstream-lfsb.md §6.2).
UPSTREAM = [
    ltx(9, 1, 10),
    ltx(9, 1, 50),
    ltx(9, 1, 80),
    ltx(9, 1, 110),
    ltx(3, 70, 78),
    ltx(3, 79, 80),
    ltx(3, 81, 87),
    ltx(3, 88, 89),
    ltx(3, 90, 101),
    ltx(1, 88, 89),
    ltx(1, 90, 94),
    ltx(1, 95, 97),
    ltx(1, 98, 101),
    ltx(0, 98, 99),
    ltx(0, 100, 100),
    ltx(0, 101, 101),
]
UPSTREAM_PLAN_100 = [
    (9, 1, 80),
    (3, 81, 87),
    (3, 88, 89),
    (1, 90, 94),
    (1, 95, 97),
    (0, 98, 99),
    (0, 100, 100),
]
UPSTREAM_POINTS = [10, 50, 80, 87, 89, 94, 97, 99, 100, 101, 110]


@pytest.mark.parametrize(
    ("target", "plan"),
    [
        (100, UPSTREAM_PLAN_100),  # upstream's expected plan; the tie at 88-89 goes to the higher level
        (101, [(9, 1, 80), (3, 81, 87), (3, 88, 89), (3, 90, 101)]),  # one L3 file beats three L1 files
        (110, [(9, 1, 110)]),
        (89, [(9, 1, 80), (3, 81, 87), (3, 88, 89)]),
        (50, [(9, 1, 50)]),
    ],
)
def test_upstream_worked_example(target: int, plan: list[Key]) -> None:
    assert keys(snapshot_plan(UPSTREAM, target)) == plan


@pytest.mark.parametrize("target", [95, 96, 79, 78, 105, 111, 9])
def test_plan_must_end_exactly_at_the_target(target: int) -> None:
    """Upstream returned the plan up to the boundary below (94 for 95) as if it were the target."""
    with not_found("ENOTXID"):
        snapshot_plan(UPSTREAM, target)


def test_plan_is_the_cheapest_chain_by_size() -> None:
    cheap_l1 = [f if f.key != (1, 88, 89) else ltx(1, 88, 89, size=10) for f in UPSTREAM]
    assert keys(snapshot_plan(cheap_l1, 100))[2] == (1, 88, 89)
    big_snapshot = [*UPSTREAM, ltx(9, 1, 100, size=10_000_000)]
    assert keys(snapshot_plan(big_snapshot, 100)) == UPSTREAM_PLAN_100
    small_snapshot = [*UPSTREAM, ltx(9, 1, 100, size=1000)]
    assert keys(snapshot_plan(small_snapshot, 100)) == [(9, 1, 100)]


def test_plan_without_snapshot_level_and_with_a_gap() -> None:
    l0 = [ltx(0, 1, 1), ltx(0, 2, 2), ltx(0, 3, 3)]
    assert keys(snapshot_plan(l0, 3)) == [(0, 1, 1), (0, 2, 2), (0, 3, 3)]
    with not_found("ENOTXID"):
        snapshot_plan(l0, 100)  # upstream: 1..3
    gap = [ltx(9, 1, 10), ltx(0, 12, 13)]
    assert keys(snapshot_plan(gap, 10)) == [(9, 1, 10)]
    with not_found("ENOTXID"):
        snapshot_plan(gap, 13)  # upstream: a 500 "non-contiguous transaction files"
    with not_found("ENOTXID"):
        snapshot_plan([], 1)


def test_reachable_points() -> None:
    assert sorted(reachable(UPSTREAM)) == UPSTREAM_POINTS
    assert sorted(reachable(UPSTREAM, upto=95)) == [10, 50, 80, 87, 89, 94]
    cost, last = reachable(UPSTREAM)[100]
    assert last.key == (0, 100, 100) and cost == sum(f.size + 64 * 1024 for f in snapshot_plan(UPSTREAM, 100))
    assert restorable_points(UPSTREAM) == [Point(t, t * 1000, t) for t in UPSTREAM_POINTS]
    assert point_at(UPSTREAM, 94) == Point(94, 94_000, 94)
    with not_found("ENOTXID"):
        point_at(UPSTREAM, 95)


@pytest.mark.parametrize(
    ("timestamp", "txid"),
    [(10_000, 10), (49_999, 10), (94_000, 94), (95_500, 94), (100_999, 100), (10**12, 110)],
)
def test_point_before_is_the_latest_at_or_before(timestamp: int, txid: int) -> None:
    assert point_before(UPSTREAM, timestamp) == Point(txid, txid * 1000, txid)


def test_point_before_the_first_point() -> None:
    with not_found("ENOTIMESTAMP"):
        point_before(UPSTREAM, 9_999)
    with not_found("ENOTIMESTAMP"):
        point_before([], 10**12)


def test_needed_files_are_the_plans_of_the_points() -> None:
    assert needed_files(UPSTREAM, [100]) == set(UPSTREAM_PLAN_100)
    assert needed_files(UPSTREAM, [100, 110, 95]) == {*UPSTREAM_PLAN_100, (9, 1, 110)}  # 95: no plan
    assert needed_files(UPSTREAM, [89, 87]) == {(9, 1, 80), (3, 81, 87), (3, 88, 89)}


# -- expired_files ----------------------------------------------------------------------------------

NOW = 10**12
OLD = NOW - 10**8  # older than every retention below
NEW = NOW - 1000
RETENTION = {0: 60.0, 1: 60.0, 2: 600.0, 3: 3600.0, SNAPSHOT_LEVEL: 3600.0}


def expired(files: list[LTXFile], current: int, retention: dict[int, float] = RETENTION) -> set[Key]:
    return {f.key for f in expired_files(files, retention, current, NOW)}


def test_expired_once_old_and_taken_in_by_the_next_level() -> None:
    files = [
        *(ltx(0, t, t, created=OLD) for t in range(1, 13)),
        ltx(0, 13, 13, created=NEW),
        ltx(1, 1, 4, created=OLD),
        ltx(1, 5, 8, created=OLD),
        ltx(1, 9, 12, created=OLD),  # the newest L1 file
        ltx(2, 1, 8, created=OLD),
        ltx(2, 9, 12, created=NEW),
        ltx(3, 1, 8, created=OLD),  # the newest L3 file
        ltx(9, 1, 8, created=OLD),  # the newest snapshot
    ]
    assert expired(files, 13) == {*((0, t, t) for t in range(1, 13)), (1, 1, 4), (1, 5, 8), (2, 1, 8)}


def test_not_expired_before_the_next_level_has_it() -> None:
    files = [ltx(1, 1, 4, created=OLD), ltx(1, 5, 8, created=OLD), ltx(1, 9, 12, created=OLD)]
    files.append(ltx(2, 1, 4, created=NEW))
    assert expired(files, 12) == {(1, 1, 4)}


def test_expired_file_kept_while_a_retained_point_needs_it() -> None:
    files = [ltx(3, 1, 5, created=OLD), ltx(3, 6, 10, created=NEW)]
    assert expired(files, 10) == set()  # 10, the end of a new file, needs 1-5
    assert expired([*files, ltx(9, 1, 5, created=NEW)], 10) == {(3, 1, 5)}  # the snapshot does instead


def test_l3_and_snapshots_expire_each_by_its_range() -> None:
    """Upstream never pruned L3 or snapshots. Every snapshot starts at TXID 1: each is its own file."""
    files = [ltx(3, 1, 5, created=OLD), ltx(3, 6, 10, created=OLD), ltx(9, 1, 5, created=OLD)]
    files.append(ltx(9, 1, 10, created=OLD))
    assert expired(files, 10) == {(3, 1, 5), (9, 1, 5)}
    assert expired(files, 10, {0: 60.0, 1: 60.0, 2: 600.0}) == set()  # levels without a retention stay


def test_newest_file_of_each_level_never_expires() -> None:
    """Compaction into a level continues from its newest file: without it, it would stall for good."""
    files = [*(ltx(0, t, t, created=OLD) for t in range(1, 11)), ltx(9, 1, 10, created=OLD)]
    files += [ltx(level, 1, 10, created=OLD) for level in (1, 2, 3)]
    assert expired(files, 10) == {(0, t, t) for t in range(1, 11)}


# A simulated database: transactions, compactions as the scheduler does them, snapshots, time passing
# and retention. Retentions in seconds; one "tick" is one second.
SIM_RETENTION = {0: 1.0, 1: 2.0, 2: 3.0, 3: 5.0, SNAPSHOT_LEVEL: 5.0}
OPS = st.sampled_from(["tx", "tx", "tx", "l1", "l2", "l3", "l9", "tick", "tick", "retain"])


def compact(files: list[LTXFile], level: int, now: int) -> LTXFile | None:
    """The file a compaction run into ``level`` writes (sizes grow with the TXID range)."""
    if level == SNAPSHOT_LEVEL:
        top = max((f.max_txid for f in files if f.level == 3), default=0)
        if top <= max((f.max_txid for f in files if f.level == SNAPSHOT_LEVEL), default=0):
            return None
        return ltx(SNAPSHOT_LEVEL, 1, top, size=top * 50, created=now)
    run = source_run(files, level)
    if not run:
        return None
    return ltx(level, run[0].min_txid, run[-1].max_txid, (run[-1].max_txid - run[0].min_txid + 1) * 100, now)


@settings(max_examples=150, deadline=None)
@given(st.lists(OPS, min_size=30, max_size=150))
def test_retention_keeps_the_window_restorable(ops: list[str]) -> None:
    files: list[LTXFile] = []
    txid, now = 0, NOW
    for op in ops:
        if op == "tx":
            txid += 1
            files.append(ltx(0, txid, txid, created=now))
        elif op == "tick":
            now += 1000
        elif op == "retain":
            doomed = expired_files(files, SIM_RETENTION, txid, now)
            assert all(f.created_at <= now - SIM_RETENTION[f.level] * 1000 for f in doomed)
            files = [f for f in files if f not in doomed]
            if txid:
                snapshot_plan(files, txid)  # the current position
            young = [f for f in files if f.created_at > now - SIM_RETENTION[f.level] * 1000]
            for f in young:
                snapshot_plan(files, f.max_txid)  # every point a young file ends at
        elif (new := compact(files, int(op[1]), now)) is not None:
            files.append(new)
    # Compaction never stalls: every transaction still makes it to the last level.
    for level in (1, 2, 3, SNAPSHOT_LEVEL):
        while (new := compact(files, level, now)) is not None:
            files.append(new)
        assert max((f.max_txid for f in files if f.level == level), default=0) == txid


# -- end to end -------------------------------------------------------------------------------------


async def current_rebuilds_identically(client: Client, node: LiteFSEmulator) -> None:
    """``GET /db/snapshot?format=sqlite`` of the current position is the node's database, byte for byte."""
    status, _, body = await client.request("GET", "/db/snapshot", params={"db": "db", "format": "sqlite"})
    assert status == 200 and body == node.db_path.read_bytes()


async def restorable(server: Server) -> list[int]:
    """Every restorable TXID, from ``lfsb info --all``."""
    info = await lfsb_json(server, "info", "db", "--all")
    return [parse_txid(p["maxTxId"]) for p in info["restorablePaths"]]


# Minutes: one round of the test below is one minute, made to pass by age_files.
ROUND_RETENTION = {0: 2, 1: 3, 2: 5, 3: 8, SNAPSHOT_LEVEL: 8}
ROUNDS = 14


async def test_rounds_prune_every_level_and_keep_the_window(start_server: Callable, tmp_path: Path) -> None:
    r = ROUND_RETENTION
    server: Server = await start_server(
        LFSB_LEVELS=f"1=1h/{r[1]}m,2=2h/{r[2]}m,3=3h/{r[3]}m",
        LFSB_L0_RETENTION=f"{r[0]}m",
        LFSB_SNAPSHOT_RETENTION=f"{r[SNAPSHOT_LEVEL]}m",
    )
    client = Client(server.url)
    first_seen: dict[Key, int] = {}
    deleted: dict[Key, int] = {}
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        h = History(node)
        for minute in range(ROUNDS):
            await h.write(2, gap=0)
            assert await server.scheduler.run(1) == 1
            if minute % 2 == 1:
                assert await server.scheduler.run(2) == 1
            if minute % 4 == 3:
                assert await server.scheduler.run(3) == 1
                assert await server.scheduler.run(SNAPSHOT_LEVEL) == 1
            stored = await stored_files(server)
            assert await indexed_files(server) == stored
            for key in stored:
                first_seen.setdefault(key, minute)
            for key in first_seen.keys() - stored - deleted.keys():
                deleted[key] = minute
            await current_rebuilds_identically(client, node)
            await age_files(server, 60)

        # Every level was pruned, L3 and snapshots included, and never a file younger than its retention.
        assert {level for level, _, _ in deleted} == {0, 1, 2, 3, SNAPSHOT_LEVEL}
        for key, minute in deleted.items():
            assert minute - first_seen[key] >= ROUND_RETENTION[key[0]], key
        # Every point a young file ends at is restorable, and every restorable point is exactly the
        # state the node had there.
        points = await restorable(server)
        last = ROUNDS - 1  # the round of the last retention run
        young = {key[2] for key, seen in first_seen.items() if last - seen < ROUND_RETENTION[key[0]]}
        assert young <= set(points)
        assert points[0] > 1
        for txid in points:
            assert await export_rows(server, tmp_path / "x.db", "--txid", format_txid(txid)) == h[txid].rows
    await client.close()


async def test_scheduler_prunes_every_level_on_its_own(start_server: Callable, tmp_path: Path) -> None:
    """The wall-clock scheduler with second-scale intervals and retentions, while the node writes."""
    server: Server = await start_server(
        LFSB_LEVELS="1=1s/2s,2=2s/4s,3=4s/8s",
        LFSB_L0_RETENTION="1s",
        LFSB_SNAPSHOT_INTERVAL="4s",
        LFSB_SNAPSHOT_RETENTION="8s",
    )
    client = Client(server.url)
    seen: set[Key] = set()
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        h = History(node)
        deadline = time.monotonic() + 45
        pruned: set[int] = set()
        while pruned != {0, 1, 2, 3, SNAPSHOT_LEVEL}:
            assert time.monotonic() < deadline, f"levels pruned so far: {sorted(pruned)}"
            await h.write(1, gap=0.05)
            if h.steps % 5 == 0:
                await current_rebuilds_identically(client, node)
            stored = await stored_files(server)
            seen |= stored
            pruned = {level for level, _, _ in seen - stored}

        # Holding compaction and retention off (they run under this lock) so that nothing expires
        # meanwhile: the index and storage agree, and every retained point is the state the node had.
        async with server.store.locks("test", "db").work:
            assert await indexed_files(server) == await stored_files(server)
            for txid in await restorable(server):
                assert (
                    await export_rows(server, tmp_path / "x.db", "--txid", format_txid(txid)) == h[txid].rows
                )
        await current_rebuilds_identically(client, node)
    await client.close()
