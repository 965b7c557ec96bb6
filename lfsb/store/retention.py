"""Retention for every level, L0 and snapshots included, that keeps every retained point restorable.

A file expires when it is older than its level's retention and the next level has already taken
it in. The newest file of each level in storage never expires: its max TXID is where the next
compaction into that level continues from (without it, compaction would stall for good, as the
source files it would need to restart from are gone). An expired file is deleted only when no plan
for a retained point needs it: the retained points are the current position and the end of every
file that has not expired, and their plans prefer files that have not expired (design.md §2;
upstream never pruned L3 or snapshots).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
from collections.abc import Mapping

from ..faults import crash_point
from .db import executemany, now_ms
from .levels import SNAPSHOT_LEVEL
from .plan import file_cost, needed_files
from .records import L0, Database, LTXFile
from .store import Store

log = logging.getLogger(__name__)

_EXPIRED_PENALTY = 1 << 50
NEVER = (1 << 63) - 1
"""``retention_due_at`` of a database with nothing that will ever expire by age alone."""


def expired_files(
    files: list[LTXFile], retention: Mapping[int, float], current_txid: int, now: int
) -> list[LTXFile]:
    """The files that may be deleted now (``retention``: seconds per level; a level missing is kept)."""
    order = sorted(level for level in retention if level != SNAPSHOT_LEVEL)
    next_level = dict(itertools.pairwise(order))
    level_max: dict[int, int] = {}
    for f in files:
        level_max[f.level] = max(level_max.get(f.level, 0), f.max_txid)

    def expired(f: LTXFile) -> bool:
        if f.level not in retention or f.created_at > now - retention[f.level] * 1000:
            return False
        if f.level != L0 and f.max_txid == level_max[f.level]:
            return False
        nxt = next_level.get(f.level)
        return nxt is None or f.max_txid <= level_max.get(nxt, 0)

    stale = {f.key for f in files if expired(f)}
    if not stale:
        return []
    kept = {current_txid} | {f.max_txid for f in files if f.key not in stale}

    def cost(f: LTXFile) -> int:
        return file_cost(f) + (_EXPIRED_PENALTY if f.key in stale else 0)

    needed = needed_files(files, kept, cost)
    return [f for f in files if f.key in stale and f.key not in needed]


def next_due(files: list[LTXFile], retention: Mapping[int, float]) -> int | None:
    """When the next file of ``files`` reaches its level's retention (ms; None: none will). A file past
    it but kept (the newest of its level, not yet taken in by the next level, or needed by a retained
    point) can only go once new files arrive, and a compaction step, which enforces retention, comes
    with those."""
    now = now_ms()
    due = [
        f.created_at + int(retention[f.level] * 1000)
        for f in files
        if f.level in retention and f.created_at + retention[f.level] * 1000 > now
    ]
    return min(due, default=None)


def set_due(conn: sqlite3.Connection, db_id: int, due: int | None) -> None:
    """Record when retention next has work for a database (a metadata write)."""
    conn.execute("UPDATE databases SET retention_due_at = ? WHERE id = ?", (due, db_id))


async def enforce_retention(store: Store, db: Database, retention: Mapping[int, float]) -> int:
    """Delete the expired files of ``db`` that no retained point needs, and record when retention will
    next have work for it; returns how many files went."""
    files = await store.files(db)
    doomed = expired_files(files, retention, db.txid, now_ms())
    doomed_keys = {(f.level, f.min_txid) for f in doomed}
    due = next_due([f for f in files if (f.level, f.min_txid) not in doomed_keys], retention)
    await store.meta.write(set_due, db.id, due if due is not None else NEVER)
    if not doomed:
        return 0
    await store.remove_l0(db, [f for f in doomed if f.level == L0])
    remote = [f for f in doomed if f.level != L0]
    if remote:
        async with store.locks(db.cluster, db.name).files:
            await store.meta.write(
                executemany,
                "DELETE FROM remote_files WHERE db_id = ? AND level = ? AND min_txid = ? AND max_txid = ?",
                [(db.id, *f.key) for f in remote],
            )
        crash_point("retention.unindexed")
        await store.objects.delete([store.remote_info(db, f) for f in remote])
    log.info(
        "retention removed files cluster=%s database=%s count=%d levels=%s",
        db.cluster,
        db.name,
        len(doomed),
        ",".join(str(level) for level in sorted({f.level for f in doomed})),
    )
    return len(doomed)
