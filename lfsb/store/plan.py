"""Snapshot plans: which LTX files, merged in order, rebuild a database at a given TXID.

Every point in time is rebuilt one way (design.md §2): a chain of contiguous files that starts
with a snapshot (min TXID 1) and ends exactly at the target, taken from any mix of levels. Among
all chains the one with the fewest bytes to read wins (each file also costs a fixed overhead).
A chain that cannot end exactly at the target is an ``ENOTXID``, never an earlier state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import Kind, LfsbError
from .records import LTXFile

FILE_COST = 64 * 1024
"""Bytes a file is worth on top of its size when choosing between chains (request overhead)."""


def tx_not_available() -> LfsbError:
    """404 ``ENOTXID``."""
    return LfsbError(Kind.NOT_FOUND, "ENOTXID", "tx not available")


def file_cost(f: LTXFile) -> int:
    """What reading a file costs a plan: its size plus a fixed overhead."""
    return f.size + FILE_COST


def reachable(
    files: Iterable[LTXFile],
    upto: int | None = None,
    cost: Callable[[LTXFile], int] = file_cost,
    start: int = 1,
) -> dict[int, tuple[int, LTXFile]]:
    """For every TXID a chain can end at (up to ``upto``): (cost, last file of the cheapest chain).

    Files are taken in order of their max TXID; a file extends a chain ending at ``min - 1``
    (a file starting at ``start``, by default a snapshot, starts one). Ties keep the file of the
    higher level, whose files are bigger.
    """
    best: dict[int, tuple[int, LTXFile]] = {}
    for f in sorted(files, key=lambda f: (f.max_txid, f.min_txid)):
        if upto is not None and f.max_txid > upto:
            break
        if f.min_txid < start:
            continue
        if f.min_txid == start:
            base = 0
        elif (prev := best.get(f.min_txid - 1)) is not None:
            base = prev[0]
        else:
            continue
        total = base + cost(f)
        current = best.get(f.max_txid)
        if current is None or total < current[0] or (total == current[0] and f.level > current[1].level):
            best[f.max_txid] = (total, f)
    return best


def chain(best: dict[int, tuple[int, LTXFile]], txid: int, start: int = 1) -> list[LTXFile]:
    """The files of the cheapest chain (from ``start``) ending at ``txid``, oldest first (ENOTXID if none)."""
    if txid not in best:
        raise tx_not_available()
    files = []
    while True:
        f = best[txid][1]
        files.append(f)
        if f.min_txid == start:
            break
        txid = f.min_txid - 1
    files.reverse()
    return files


def snapshot_plan(files: Iterable[LTXFile], txid: int) -> list[LTXFile]:
    """The cheapest contiguous chain of ``files`` from a snapshot to exactly ``txid``."""
    return chain(reachable(files, upto=txid), txid)


def cover(files: Iterable[LTXFile], min_txid: int, max_txid: int) -> list[LTXFile]:
    """The cheapest contiguous chain of ``files`` from exactly ``min_txid`` to exactly ``max_txid`` (what
    rebuilds a file of that range; ENOTXID if none)."""
    return chain(reachable(files, upto=max_txid, start=min_txid), max_txid, start=min_txid)


def timestamp_not_available() -> LfsbError:
    """404 ``ENOTIMESTAMP``."""
    return LfsbError(Kind.NOT_FOUND, "ENOTIMESTAMP", "timestamp not available")


@dataclass(frozen=True)
class Point:
    """A restorable point: a TXID, its timestamp and the database checksum there."""

    txid: int
    timestamp: int
    post_apply_checksum: int


def restorable_points(files: Iterable[LTXFile]) -> list[Point]:
    """Every TXID a plan can reach, oldest first."""
    best = reachable(files)
    return [Point(t, f.timestamp, f.post_apply_checksum) for t, (_, f) in sorted(best.items())]


def point_at(files: Iterable[LTXFile], txid: int) -> Point:
    """The restorable point at exactly ``txid`` (ENOTXID if there is none)."""
    best = reachable(files, upto=txid)
    if txid not in best:
        raise tx_not_available()
    f = best[txid][1]
    return Point(txid, f.timestamp, f.post_apply_checksum)


def point_before(files: Iterable[LTXFile], timestamp: int) -> Point:
    """The latest restorable point whose timestamp is at or before ``timestamp`` (ENOTIMESTAMP if none)."""
    candidates = [p for p in restorable_points(files) if p.timestamp <= timestamp]
    if not candidates:
        raise timestamp_not_available()
    return max(candidates, key=lambda p: (p.timestamp, p.txid))


def needed_files(
    files: Iterable[LTXFile], points: Iterable[int], cost: Callable[[LTXFile], int] = file_cost
) -> set[tuple[int, int, int]]:
    """The :attr:`~LTXFile.key` of every file in the cheapest plans of ``points``."""
    best = reachable(files, cost=cost)
    needed: set[tuple[int, int, int]] = set()
    for txid in points:
        while txid in best:
            f = best[txid][1]
            key = f.key
            if key in needed or f.min_txid == 1:
                needed.add(key)
                break
            needed.add(key)
            txid = f.min_txid - 1
    return needed
