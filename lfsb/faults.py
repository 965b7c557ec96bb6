"""Crash points: kill the process at a named place, for crash tests (``tests/campaign.py``).

``LFSB_CRASH_AT=name[:n]`` (read once, at import) makes the n-th arrival (default 1) at crash point
``name`` kill the process with SIGKILL, from whichever thread reaches it; every other call is one
dict lookup. The points, each just after the step it names:

* ``ingest.placed``: an L0 file created at its place in ``l0/`` and its rows written, neither
  synced nor committed yet (in the metadata writer process, whose death takes the server down).
* ``ingest.committed``: a transaction (LiteFS's, a restore's or an import's) committed, not yet
  acknowledged.
* ``compaction.l<N>.built``: a file of level N (a compaction level, 9 for snapshots) written to the
  temp directory, not uploaded.
* ``compaction.l<N>.uploaded``: a level-N file uploaded, not yet recorded in the index.
* ``compaction.l<N>.recorded``: a level-N file recorded in the index (and the HWM raised).
* ``retention.l0_unindexed``: expired L0 files dropped from the metadata db, still on disk.
* ``retention.unindexed``: expired remote files dropped from the index, still in storage.
* ``restore.built``: a restore's snapshot of the target point built, nothing appended yet.
* ``append.written``: the LTX file a restore or import appends written and fsynced, not recorded.
* ``restore.appended`` / ``import.appended``: a restore or import committed, not yet answered.
* ``recovery.rebuilt``: at start, a database rebuilt from storage committed, its stale L0 files
  still on disk.
* ``recovery.reconcile``: at start, the index about to be brought in line with storage.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "LFSB_CRASH_AT"

_lock = threading.Lock()


def parse(value: str) -> dict[str, int]:
    """``name[:n]`` as {name: n} (empty for an empty value)."""
    if not value:
        return {}
    name, _, count = value.partition(":")
    n = int(count) if count else 1
    if not name or n < 1:
        raise ValueError(f"{ENV}: expected name[:n] with n >= 1, got {value!r}")
    return {name: n}


_armed = parse(os.environ.get(ENV, ""))


def crash_point(name: str) -> None:
    """Kill the process with SIGKILL if ``LFSB_CRASH_AT`` names this point and this is its n-th arrival."""
    if name not in _armed:
        return
    with _lock:
        _armed[name] -= 1
        if _armed[name] == 0:
            os.kill(os.getpid(), signal.SIGKILL)
