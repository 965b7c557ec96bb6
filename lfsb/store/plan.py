"""Snapshot plans: which LTX files, merged in order, rebuild a database at a given TXID.

Every point in time is rebuilt one way (design.md §2): a chain of contiguous files that starts
with a snapshot (min TXID 1) and ends exactly at the target, taken from any mix of levels. Among
all chains the one with the fewest bytes to read wins (each file also costs a fixed overhead).
A chain that cannot end exactly at the target is an ``ENOTXID``, never an earlier state.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import Kind, LfsbError
from .records import LTXFile

FILE_COST = 64 * 1024
"""Bytes a file is worth on top of its size when choosing between chains (request overhead)."""


def tx_not_available() -> LfsbError:
    """404 ``ENOTXID``."""
    return LfsbError(Kind.NOT_FOUND, "ENOTXID", "tx not available")


def reachable(files: Iterable[LTXFile], upto: int | None = None) -> dict[int, tuple[int, LTXFile]]:
    """For every TXID a chain can end at (up to ``upto``): (cost, last file of the cheapest chain).

    Files are taken in order of their max TXID; a file extends a chain ending at ``min - 1``
    (a snapshot starts one). Ties keep the file of the higher level, whose files are bigger.
    """
    best: dict[int, tuple[int, LTXFile]] = {}
    for f in sorted(files, key=lambda f: (f.max_txid, f.min_txid)):
        if upto is not None and f.max_txid > upto:
            break
        if f.min_txid == 1:
            base = 0
        elif (prev := best.get(f.min_txid - 1)) is not None:
            base = prev[0]
        else:
            continue
        cost = base + f.size + FILE_COST
        current = best.get(f.max_txid)
        if current is None or cost < current[0] or (cost == current[0] and f.level > current[1].level):
            best[f.max_txid] = (cost, f)
    return best


def chain(best: dict[int, tuple[int, LTXFile]], txid: int) -> list[LTXFile]:
    """The files of the cheapest chain ending at ``txid``, oldest first (ENOTXID if none)."""
    if txid not in best:
        raise tx_not_available()
    files = []
    while True:
        f = best[txid][1]
        files.append(f)
        if f.min_txid == 1:
            break
        txid = f.min_txid - 1
    files.reverse()
    return files


def snapshot_plan(files: Iterable[LTXFile], txid: int) -> list[LTXFile]:
    """The cheapest contiguous chain of ``files`` from a snapshot to exactly ``txid``."""
    return chain(reachable(files, upto=txid), txid)
