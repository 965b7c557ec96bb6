"""What is wrong right now, for the operator: storage down, compaction failing, backups stale, restore
checks failed, corrupt objects.

The :class:`Monitor` looks every few seconds. Storage down and compaction failing become incidents
(one notification when they have lasted ``LFSB_NOTIFY_AFTER``, one when they end); restore checks and
the scrub open their own. The heartbeat (``LFSB_HEARTBEAT_URL``) is requested every
``LFSB_HEARTBEAT_INTERVAL`` only while nothing at all is wrong, so an external monitor notices a server
that died, hangs or fell behind.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass, field

from ..notify import Notifier
from .background import Background
from .db import now_ms
from .store import Store

log = logging.getLogger(__name__)

STORAGE_TIMEOUT = 10.0
MAX_TICK = 30.0
MIN_TICK = 0.05


@dataclass
class Health:
    """One look at the server: the problems found (empty when all is well)."""

    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems


class Monitor(Background):
    """Evaluates :class:`Health` periodically; drives the storage and compaction incidents and the
    heartbeat."""

    task_name = "health"

    def __init__(self, store: Store, notifier: Notifier) -> None:
        super().__init__()
        config = store.config
        self.store = store
        self.notifier = notifier
        self.notify_after = config.notify_after
        self.heartbeat_interval = config.heartbeat_interval
        self.tick = max(
            MIN_TICK, min(config.heartbeat_interval, config.notify_after / 4 or MAX_TICK, MAX_TICK)
        )
        self.stale_after = max(config.notify_after, 3 * config.levels[0].interval)
        """How long a transaction may wait for level 1 before the database's backups count as stale."""
        self.storage_down_since: float | None = None
        self.evaluations = 0
        self.last = Health()
        self._last_ping = 0.0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)  # the server checked storage as it started
            try:
                await self.evaluate()
            except Exception:
                log.exception("health evaluation failed")

    async def evaluate(self) -> Health:
        """Look once: update the incidents and the storage gauge, ping the heartbeat if all is well."""
        now = time.time()
        health = Health()
        await self._storage(now, health)
        self._compaction(now, health)
        await self._databases(health)
        if health.ok and now - self._last_ping >= self.heartbeat_interval:
            self._last_ping = now
            self.notifier.ping()
        self.last = health
        self.evaluations += 1
        return health

    async def _storage(self, now: float, health: Health) -> None:
        try:
            async with asyncio.timeout(STORAGE_TIMEOUT):
                await self.store.objects.check()
            up = True
        except Exception as e:
            up = False
            log.warning("storage check failed error=%s", str(e) or type(e).__name__)
        self.store.metrics.storage_up.set(int(up))
        if up:
            self.storage_down_since = None
        elif self.storage_down_since is None:
            self.storage_down_since = now
        if not up:
            health.problems.append("object storage unavailable")
        down_for = 0.0 if self.storage_down_since is None else now - self.storage_down_since
        self.notifier.update(
            "storage",
            not up and down_for >= self.notify_after,
            f"object storage unavailable for {down_for:.0f}s" if not up else "object storage is back",
        )

    def _compaction(self, now: float, health: Health) -> None:
        failing = self.store.metrics.compaction_failing_since
        for level in sorted({*failing, *(lv.level for lv in self.store.config.levels)}):
            since = failing.get(level)
            if since is not None:
                health.problems.append(f"compaction of level {level} failing")
            self.notifier.update(
                f"compaction:{level}",
                since is not None and now - since >= self.notify_after,
                f"compaction of level {level} failing for {now - since:.0f}s"
                if since is not None
                else f"compaction of level {level} works again",
            )

    async def _databases(self, health: Health) -> None:
        stale_before = now_ms() - int(self.stale_after * 1000)

        def _read(c: sqlite3.Connection) -> tuple[list[str], list[str], int]:
            stale = [
                f"{cluster}/{name}"
                for cluster, name in c.execute(
                    "SELECT d.cluster, d.name FROM databases d JOIN l0_files f"
                    " ON f.db_id = d.id AND f.min_txid = d.hwm + 1"
                    " WHERE f.created_at < ? AND d.deleted_at IS NULL",
                    (stale_before,),
                )
            ]
            failed = [
                f"{cluster}/{name}"
                for cluster, name in c.execute(
                    "SELECT d.cluster, d.name FROM databases d WHERE d.deleted_at IS NULL AND (SELECT ok"
                    " FROM restore_checks WHERE db_id = d.id ORDER BY id DESC LIMIT 1) = 0"
                )
            ]
            (corrupt,) = c.execute("SELECT COUNT(*) FROM remote_files WHERE corrupt IS NOT NULL").fetchone()
            return stale, failed, corrupt

        stale, failed, corrupt = await self.store.meta.read(_read)
        health.problems += [f"backups of {name} stale" for name in stale]
        health.problems += [f"restore check of {name} failed" for name in failed]
        if corrupt:
            health.problems.append(f"{corrupt} corrupt objects in storage")
