"""What the dashboard shows: clusters and databases summed up from the metadata db, and a database's
restorable points with the level of the file that holds each and the gaps between them."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from .plan import reachable
from .records import DATABASE_COLUMNS, Database, LTXFile
from .store import Store


@dataclass(frozen=True)
class ClusterSummary:
    """One cluster: its live databases, their total size, and how many deleted ones can come back."""

    name: str
    databases: int
    size: int
    deleted: int


@dataclass(frozen=True)
class DatabaseSummary:
    """One live database and when a file of it last reached object storage (ms; None: never yet)."""

    db: Database
    last_backup_at: int | None

    @property
    def size(self) -> int:
        """Bytes of the database at its current position."""
        return self.db.commit * self.db.page_size

    @property
    def hwm_lag(self) -> int:
        """Transactions not yet in object storage."""
        return max(self.db.txid - self.db.hwm, 0)


async def clusters(store: Store) -> list[ClusterSummary]:
    """Every cluster that has a database, live or deleted, by name."""
    rows = await store.meta.read(
        lambda c: c.execute(
            'SELECT cluster, COUNT(*) - COUNT(deleted_at), TOTAL(CASE WHEN deleted_at IS NULL THEN "commit"'
            " * page_size END), COUNT(deleted_at) FROM databases GROUP BY cluster ORDER BY cluster"
        ).fetchall()
    )
    return [ClusterSummary(name, live, int(size), deleted) for name, live, size, deleted in rows]


async def databases(store: Store, cluster: str) -> list[DatabaseSummary]:
    """The live databases of ``cluster``, by name."""
    columns = ", ".join(f"d.{c.strip()}" for c in DATABASE_COLUMNS.split(","))
    query = (
        f"SELECT {columns}, (SELECT MAX(r.created_at) FROM remote_files r WHERE r.db_id = d.id)"
        " FROM databases d WHERE d.cluster = ? AND d.deleted_at IS NULL ORDER BY d.name"
    )
    rows = await store.meta.read(lambda c: c.execute(query, (cluster,)).fetchall())
    return [DatabaseSummary(Database.from_row(row[:-1]), row[-1]) for row in rows]


@dataclass(frozen=True)
class TimelinePoint:
    """A restorable point: TXID, time (ms), the database's size there and the level of the file that
    ends the cheapest plan to it (0: local L0, 9: daily snapshot)."""

    txid: int
    timestamp: int
    size: int
    level: int


def timeline(files: Iterable[LTXFile], page_size: int) -> list[TimelinePoint]:
    """Every restorable point of a database's files, oldest first."""
    return [
        TimelinePoint(txid, f.timestamp, f.commit * page_size, f.level)
        for txid, (_, f) in sorted(reachable(files).items())
    ]


def gaps(points: list[TimelinePoint]) -> list[tuple[TimelinePoint, TimelinePoint]]:
    """Neighbouring restorable points with TXIDs between them that no plan can reach."""
    return [(a, b) for a, b in itertools.pairwise(points) if b.txid > a.txid + 1]
