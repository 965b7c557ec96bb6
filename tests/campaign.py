"""A crash campaign: the real ``lfsb-server`` killed again and again under a LiteFS workload, and checked
after every crash and every restart (used by ``tests/test_crash.py`` and ``bench/fault_campaign.py``).

One moto S3 server, one data directory, one LiteFS emulator writing all the time. Each fault of a
seeded schedule starts the server (armed with a crash point through ``LFSB_CRASH_AT`` for a targeted
fault, see :mod:`lfsb.faults`), checks it, then makes the fault happen: the crash point fires, or the
process gets SIGKILL at a random time, during a restore, during an import or during start-up. The
server's S3 traffic goes through a :class:`~tests.faultproxy.FaultProxy` (the campaign's own checks talk
to moto directly), so a fault can also be storage misbehaving for a few seconds: a share of requests
failing (500, hang, reset), or storage down; the server is then stopped gracefully.
What is checked:

* at every crash (server dead): no index row refers to a missing object and no L0 row to a missing
  file (design.md §4); every new object in storage verifies (``lfsb.ltx.verify``) and agrees with its
  metadata and its index row;
* during a storage fault, all the time, and after every restart: the HWM (the server's, and the one
  LiteFS was last told) is never past the highest TXID of the L1 objects in the bucket;
* after every restart: ``/pos`` is at or past the last acknowledged TXID (with its checksum when
  equal); every restorable point that was acknowledged has the acknowledged checksum; exports of the
  latest acknowledged point and of an earlier one give the acknowledged rows; L1 catches up
  (HWM = position); the emulator resynchronises with incremental POSTs (it never sends a snapshot
  again); the same once a storage fault ends (without a restart), then a graceful stop exits 0;
* at the end: every level caught up, a graceful stop exits 0, and the index and the L0 rows match
  storage and the L0 directory exactly.

Acknowledged means a 2xx: a successful emulator round (``POST /db/tx``, or a snapshot pulled from the
server), a restore or an import. Faults are :class:`Fault` entries in :data:`FAULTS`, each recording
what it did under a label of the summary, so more kinds (a full disk) are more entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from lfsb.ltx import LTXError, Pos, format_txid, parse_filename, parse_txid, verify
from lfsb.storage import FileInfo
from lfsb.storage.s3 import S3Store
from lfsb.store.db import from_sql
from tests.faultproxy import FaultProxy
from tests.lfsb_server import Client, ServerExited, ServerProcess, check_sqlite, free_port
from tests.litefs import LiteFSEmulator, SyncError
from tests.s3server import S3Settings

CLUSTER, DB = "test", "db"
SERVER_ENV = {
    "LFSB_LEVELS": "1=1s/3s,2=2s/6s,3=3s/9s",
    "LFSB_L0_RETENTION": "1s",
    "LFSB_SNAPSHOT_INTERVAL": "4s",
    "LFSB_SNAPSHOT_RETENTION": "12s",
}
FULL_KILLS = 60
"""Faults in the full campaign (``bench/fault_campaign.py``, ``LFSB_FULL_CAMPAIGN=1``)."""
CRASH_WAIT = 12.0
"""Seconds an armed crash point gets to fire before the server is killed plainly."""
CATCH_UP_WAIT = 10.0
"""Seconds L1 gets to catch up with the position after a restart."""
LEVELS_WAIT = 30.0
"""Seconds every level gets to catch up at the end."""
HANG_SECONDS = 1.0
"""Seconds a hung S3 request stays unanswered before the proxy resets it."""
STORAGE_FATES = {
    "fail": "S3 requests answered 500 (storage faults)",
    "hang": "S3 requests hung, then reset (storage faults)",
    "reset": "S3 requests reset after reaching S3 (storage faults)",
    "down": "S3 requests reset while storage down (storage faults)",
}
"""Labels of the summary for what the proxy did to the server's S3 requests (refused connections while
storage is down are not counted)."""
NOT_REACHED = "crash point armed but not reached (then kill -9)"
ROWS_AT_A_POINT = "export at a point gives its acknowledged rows"
Key = tuple[int, int, int]


class ServerDied(Exception):
    """The server process died while the campaign talked to it (an armed crash point fired)."""


@dataclass(frozen=True)
class State:
    """An acknowledged state: its checksum (None when unknown, as after an import) and rows digest."""

    checksum: int | None
    rows: str


def digest(rows: list[tuple[Any, ...]]) -> str:
    """A digest of the rows of table ``t``."""
    return hashlib.sha256(repr(rows).encode()).hexdigest()


@dataclass
class Summary:
    """What a campaign did: faults injected and checks made, counted by label, and every mismatch."""

    faults: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)
    """Observations that are not checks (operations acknowledged, unreferenced files found, ...)."""
    acknowledged: int = 0
    verified: int = 0
    mismatches: list[str] = field(default_factory=list)

    def check(self, label: str, ok: bool, detail: Callable[[], str]) -> bool:
        """Count a check; record a mismatch (``detail()``) if it failed."""
        self.checks[label] += 1
        if not ok:
            self.mismatches.append(f"{label}: {detail()}")
        return ok

    def table(self) -> str:
        """The summary as two Markdown tables: faults by kind, then results."""
        lines = ["| fault | injected |", "|---|---:|"]
        lines += [f"| {label} | {n} |" for label, n in sorted(self.faults.items())]
        lines += [f"| **total** | **{sum(self.faults.values())}** |", "", "| result | count |", "|---|---:|"]
        lines += [
            f"| transactions acknowledged | {self.acknowledged} |",
            f"| transactions verified after recovery | {self.verified} |",
            f"| restores checked (rows at a point) | {self.checks[ROWS_AT_A_POINT]} |",
        ]
        lines += [f"| {label} | {n} |" for label, n in sorted(self.seen.items())]
        checks = sorted((label, n) for label, n in self.checks.items() if label != ROWS_AT_A_POINT)
        lines += [f"| check: {label} | {n} |" for label, n in checks]
        lines.append(f"| **mismatches** | **{len(self.mismatches)}** |")
        return "\n".join(lines)


Act = Callable[["Campaign"], Awaitable[None]]


@dataclass(frozen=True)
class Fault:
    """A kind of fault. The server starts armed with ``crash_at`` (the n-th arrival, n drawn from
    1..``repeat``); ``act`` then drives it until the process is dead, recording what it did."""

    name: str
    act: Act
    crash_at: str | None = None
    repeat: int = 1

    @property
    def leaves_unindexed(self) -> bool:
        """True when the crash leaves an object in storage that the index does not list."""
        return self.crash_at is not None and self.crash_at.endswith(("uploaded", "retention.unindexed"))


def _metadata(data: Path) -> contextlib.closing[sqlite3.Connection]:
    """A read-only connection to the metadata db of ``data``."""
    return contextlib.closing(sqlite3.connect(f"file:{data / 'server.db'}?mode=ro", uri=True))


def _db_id(conn: sqlite3.Connection) -> int:
    """The row id of the campaign's database."""
    query = "SELECT id FROM databases WHERE cluster = ? AND name = ?"
    return conn.execute(query, (CLUSTER, DB)).fetchone()[0]


def read_index(data: Path) -> tuple[dict[Key, tuple[int, int, int]], set[Key]]:
    """The metadata db: the index of remote files ((level, min, max) -> (size, pre- and post-apply
    checksums)) and the keys of the L0 rows."""
    with _metadata(data) as conn:
        db_id = _db_id(conn)
        remote = conn.execute(
            "SELECT level, min_txid, max_txid, size, pre_apply_checksum, post_apply_checksum"
            " FROM remote_files WHERE db_id = ?",
            (db_id,),
        )
        index = {
            (lv, mn, mx): (size, from_sql(pre), from_sql(post)) for lv, mn, mx, size, pre, post in remote
        }
        l0 = conn.execute("SELECT min_txid, max_txid FROM l0_files WHERE db_id = ?", (db_id,))
        return index, {(0, mn, mx) for mn, mx in l0}


def read_position(data: Path) -> tuple[int, int, dict[int, int]]:
    """The metadata db: the TXID, the HWM and the highest TXID of every level."""
    with _metadata(data) as conn:
        db_id = _db_id(conn)
        txid, hwm = conn.execute("SELECT txid, hwm FROM databases WHERE id = ?", (db_id,)).fetchone()
        levels = conn.execute(
            "SELECT level, MAX(max_txid) FROM remote_files WHERE db_id = ? GROUP BY level", (db_id,)
        )
        return txid, hwm, dict(levels.fetchall())


def l0_files(data: Path) -> set[Key]:
    """(0, min, max) of every L0 file in the data directory."""
    return {(0, *parse_filename(p.name)) for p in (data / "l0" / CLUSTER / DB).glob("*.ltx")}


class Campaign:
    """One campaign in ``work`` against the S3 bucket ``bucket``: :meth:`run` it, read :attr:`summary`."""

    def __init__(self, work: Path, bucket: S3Settings, seed: int, kills: int) -> None:
        self.work = work
        self.bucket = bucket
        self.data = work / "data"
        self.log = work / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.rng = random.Random(seed)
        self.schedule = schedule(random.Random(seed), kills)
        self.summary = Summary()
        self.history: dict[int, State] = {}
        """Acknowledged states by TXID."""
        self.acked = 0
        self.verified_upto = 0
        self.node = LiteFSEmulator(work / "node", self.url, timeout=10)
        self.objects = S3Store.from_env(bucket.env())
        self.proxy = FaultProxy(bucket.endpoint, seed=seed + 2, hang_seconds=HANG_SECONDS)
        """The server's way to the bucket (:attr:`objects` is the campaign's own, straight to moto)."""
        self.server: ServerProcess | None = None
        self.client: Client | None = None
        self.killed = False
        self._pending: dict[int, State] = {}
        self._writer_rng = random.Random(seed + 1)
        self._writing = asyncio.Event()
        self._writer_lock = asyncio.Lock()
        self._synced = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._checked_objects: set[tuple[Key, int, float]] = set()
        self._imports = 0

    # -- the run --------------------------------------------------------------------------------------
    async def run(self) -> Summary:
        """Run the whole schedule, then the final checks."""
        try:
            await self.proxy.start()
            await self._begin()
            for fault, n in self.schedule:
                await self.start(f"{fault.crash_at}:{n}" if fault.crash_at else "")
                if await self._recovered():
                    await fault.act(self)
                await self.crashed(fault)
            await self._end()
        finally:
            if self._writer is not None:
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
            if self.server is not None and self.server.proc.returncode is None:
                await self.server.kill()
            if self.client is not None:
                await self.client.close()
            await self.node.close()
            await self.objects.close()
            await self.proxy.stop()
        for kind, label in STORAGE_FATES.items():
            self.summary.seen[label] += self.proxy.counts[kind]
        self.summary.acknowledged = len(self.history)
        self.summary.verified = sum(1 for t in self.history if t <= self.verified_upto)
        return self.summary

    async def _begin(self) -> None:
        """First start: the emulator sends its snapshot and a few transactions; then a graceful stop."""
        await self.start("")
        await self.server.wait_ready()
        self._writing.set()
        self._writer = asyncio.create_task(self._write())
        deadline = time.monotonic() + 30
        while len(self.history) < 20 or self.node.stats.snapshots_sent != 1:
            assert time.monotonic() < deadline, f"no progress: {self.node.stats.last_error}"
            await asyncio.sleep(0.1)
        await self._stop_gracefully()
        await self._check_crashed_state()

    async def _end(self) -> None:
        """Last start: checks, every level caught up, a graceful stop, then index = storage exactly."""
        self._writing.clear()
        async with self._writer_lock:
            self._writer.cancel()
        await self.start("")
        await self.server.wait_ready()
        await self._verify()
        await self._await_levels()
        await self._stop_gracefully()
        index, l0_rows = read_index(self.data)
        listing = await self._list_storage()
        self.summary.check(
            "index matches storage at the end",
            index.keys() == listing.keys(),
            lambda: (
                f"only indexed {sorted(index.keys() - listing.keys())}, "
                f"only stored {sorted(listing.keys() - index.keys())}"
            ),
        )
        on_disk = l0_files(self.data)
        self.summary.check(
            "L0 rows match L0 files at the end",
            l0_rows == on_disk,
            lambda: f"rows only {sorted(l0_rows - on_disk)}, files only {sorted(on_disk - l0_rows)}",
        )
        await self._verify_objects(listing, index)

    # -- the server -----------------------------------------------------------------------------------
    async def start(self, crash_at: str) -> None:
        """Start ``lfsb-server`` (armed with ``LFSB_CRASH_AT=crash_at`` unless empty), with a new client."""
        env = {
            **SERVER_ENV,
            **self.bucket.env(),
            "AWS_ENDPOINT_URL_S3": self.proxy.url,
            "LFSB_CRASH_AT": crash_at,
        }
        self.server = ServerProcess(self.data, port=self.port, log=self.log, **env)
        self.killed = False
        await self.server.start()
        if self.client is not None:
            await self.client.close()
        self.client = Client(self.url, CLUSTER)

    async def kill(self, label: str) -> None:
        """SIGKILL the server now and count it under ``label``."""
        if self.server.proc.returncode is None:
            self.killed = True
            self.summary.faults[label] += 1
        await self.server.kill()

    async def _exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the server process to exit; whether it did.

        Not ``asyncio.wait_for``: in Python 3.11 it can swallow a cancellation that arrives just as
        the process exits, and the callers here are cancelled exactly then."""
        waiter = asyncio.ensure_future(self.server.proc.wait())
        try:
            await asyncio.wait([waiter], timeout=timeout)
        finally:
            waiter.cancel()
        return self.server.proc.returncode is not None

    async def wait_exit(self, timeout: float) -> None:
        """Wait for the server to die (a crash point); after ``timeout`` seconds kill it plainly."""
        if not await self._exited(timeout):
            await self.kill(NOT_REACHED)

    async def _stop_gracefully(self) -> None:
        """SIGTERM: the server must finish its work and exit 0."""
        self.killed = True  # stopped on purpose: :meth:`crashed` expects no SIGKILL
        self.server.proc.send_signal(signal.SIGTERM)
        code, _ = await self.server.finish()
        self.summary.check("graceful stop exits 0", code == 0, lambda: f"exit code {code}, see {self.log}")

    async def _recovered(self) -> bool:
        """Wait for the server, check it with the emulator paused, let the emulator resynchronise;
        False when the server died meanwhile (an armed crash point fired)."""
        try:
            await self.server.wait_ready(timeout=60)
            async with self._paused():
                await self._verify()
            await self._resync()
        except (ServerExited, ServerDied):
            await self.server.proc.wait()
            return False
        return True

    async def crashed(self, fault: Fault) -> None:
        """The server is dead: count an armed crash point that fired, check what it left behind."""
        code = await self.server.proc.wait()
        if not self.killed:
            ok = self.summary.check(
                "server dies only by SIGKILL", code == -signal.SIGKILL, lambda: f"exit code {code}"
            )
            if ok and fault.crash_at:
                self.summary.faults[fault.name] += 1
        await self._check_crashed_state()

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        """An API request; :class:`ServerDied` when it fails because the server died."""
        try:
            return await self.client.request(method, path, **kwargs)
        except aiohttp.ClientError:
            if await self._exited(2):
                raise ServerDied from None
            raise

    def _alive(self) -> None:
        """Raise :class:`ServerDied` if the server process has exited."""
        if self.server.proc.returncode is not None:
            raise ServerDied

    # -- the workload ---------------------------------------------------------------------------------
    async def _write(self) -> None:
        """The emulator: a few transactions, a backup round, again; paused by :meth:`_paused`."""
        rng = self._writer_rng
        while True:
            await self._writing.wait()
            async with self._writer_lock:
                if not self._writing.is_set():
                    continue
                for _ in range(rng.randint(1, 3)):
                    self._transaction(rng)
                pulled = self.node.stats.snapshots_pulled
                try:
                    pos = await self.node.sync()
                except SyncError:
                    pos = None
                if pos is not None:
                    self._acknowledge_round(pos, pulled != self.node.stats.snapshots_pulled)
                    self.node.prune_below_hwm()
                    self._synced.set()
            await asyncio.sleep(0.02 if pos else 0.1)

    def _transaction(self, rng: random.Random) -> None:
        """One local transaction on table ``t`` (insert, update or delete), pending until acknowledged."""
        node = self.node
        if node.txid == 0:
            node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        elif rng.random() < 0.15:
            node.execute("UPDATE t SET v = v || '+' WHERE id % 7 = ?", (rng.randrange(7),))
        elif rng.random() < 0.15 and node.rows("SELECT count(*) FROM t")[0][0] > 200:
            node.execute("DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY id LIMIT 20)")
        else:
            node.execute("INSERT INTO t (v) VALUES (?)", ("x" * rng.randint(10, 900),))
        self._pending[node.txid] = State(node.pos.post_apply_checksum, self._rows())

    def _rows(self) -> str:
        """The digest of the node's rows now."""
        return digest(self.node.rows("SELECT * FROM t ORDER BY id"))

    def _acknowledge_round(self, pos: Pos, pulled: bool) -> None:
        """A successful round: the server holds every local state up to ``pos`` (after a snapshot
        pull, only the pulled one: local states the server never had are gone)."""
        if pulled:
            self._pending = {pos.txid: State(pos.post_apply_checksum, self._rows())}
        for txid in [t for t in self._pending if t <= pos.txid]:
            self._acknowledge(txid, self._pending.pop(txid))

    def _acknowledge(self, txid: int, state: State) -> None:
        """Record an acknowledged state; a TXID acknowledged twice must be the same state."""
        known = self.history.get(txid)
        if known is not None:
            same = known.rows == state.rows and (
                None in (known.checksum, state.checksum) or known.checksum == state.checksum
            )
            self.summary.check(
                "a TXID acknowledged twice holds one state", same, lambda: f"{txid:x}: {known} vs {state}"
            )
            state = State(state.checksum if state.checksum is not None else known.checksum, state.rows)
        self.history[txid] = state
        self.acked = max(self.acked, txid)

    @contextlib.asynccontextmanager
    async def _paused(self) -> AsyncIterator[None]:
        """No transactions or backup rounds inside."""
        self._writing.clear()
        try:
            async with self._writer_lock:
                yield
        finally:
            self._writing.set()

    async def _resync(self) -> None:
        """Let the emulator run until a backup round succeeds: incremental, never a new snapshot."""
        self._synced.clear()
        deadline = time.monotonic() + 20
        while not self._synced.is_set() and time.monotonic() < deadline:
            self._alive()
            if self._writer.done():
                self._writer.result()  # the workload failed: raise its error
            await asyncio.sleep(0.05)
        self._alive()
        self.summary.check(
            "emulator resynchronises incrementally",
            self._synced.is_set() and self.node.stats.snapshots_sent == 1,
            lambda: (
                f"synced={self._synced.is_set()} snapshots sent={self.node.stats.snapshots_sent} "
                f"last error={self.node.stats.last_error}"
            ),
        )

    async def storage_fault(self, label: str, seconds: float, faults: dict[str, float | bool]) -> None:
        """Storage misbehaves (``faults``, see :meth:`FaultProxy.set`) for ``seconds`` while the emulator
        writes; then, storage healthy again, the checks after a restart (without one: acknowledged states
        survived, HWM caught up), a resynchronisation and a graceful stop."""
        self.summary.faults[label] += 1
        await self.proxy.set(**faults)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                self._alive()
                await self._check_hwm_stored()
                await asyncio.sleep(0.25)
        finally:
            await self.proxy.set()
        async with self._paused():
            await self._verify()
        await self._resync()
        await self._stop_gracefully()

    # -- restores and imports -------------------------------------------------------------------------
    async def restore(self) -> None:
        """``POST /db/restore`` to an acknowledged restorable point; its result is acknowledged on 2xx."""
        points = await self._points()
        current = max(points, default=0)
        targets = sorted(t for t in points if t in self.history and t < current)
        if not targets:
            return
        target = self.rng.choice(targets)
        status, data, _ = await self.request("POST", f"/db/restore?db={DB}&txid={format_txid(target)}")
        if status == 200:
            self.summary.seen["restores acknowledged"] += 1
            self._acknowledge(parse_txid(data["txID"]), self.history[target])

    def _import_file(self) -> tuple[Path, str]:
        """A SQLite file to import: the node's database plus a marker row; its path and rows digest."""
        self._imports += 1
        path = self.work / f"import-{self._imports}.db"
        src = sqlite3.connect(self.node.db_path)
        dest = sqlite3.connect(path)
        try:
            src.backup(dest)
            dest.execute("INSERT INTO t (v) VALUES (?)", (f"imported {self._imports}",))
            dest.commit()
            rows = dest.execute("SELECT * FROM t ORDER BY id").fetchall()
        finally:
            src.close()
            dest.close()
        return path, digest(rows)

    async def import_http(self) -> None:
        """``POST /db/upload`` of a new state; acknowledged on 2xx."""
        path, rows = self._import_file()
        status, data, _ = await self.request("POST", f"/db/upload?db={DB}", data=path.read_bytes())
        if status == 200:
            self.summary.seen["imports acknowledged"] += 1
            self._acknowledge(parse_txid(data["txID"]), State(None, rows))

    async def import_cli(self) -> None:
        """``lfsb import`` (the CLI in a subprocess) of a new state; acknowledged when it succeeds."""
        path, rows = self._import_file()
        cli = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "lfsb.cli", "-e", self.url, "-c", CLUSTER, "import", DB, str(path)],
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await cli.communicate()
        if cli.returncode == 0:
            self.summary.seen["imports acknowledged"] += 1
            self._acknowledge(parse_txid(json.loads(out)["txID"]), State(None, rows))

    # -- checks ---------------------------------------------------------------------------------------
    async def _points(self) -> dict[int, int]:
        """Every restorable point: TXID -> post-apply checksum."""
        status, data, body = await self.request("GET", f"/db/info?db={DB}&all=true")
        assert status == 200, body
        return {parse_txid(p["maxTxId"]): parse_txid(p["postApplyChecksum"]) for p in data["restorablePaths"]}

    async def _verify(self) -> None:
        """Checks after a restart (the emulator paused): acknowledged states survived, exports give their
        rows, L1 catches up."""
        s, acked = self.summary, self.acked
        status, data, body = await self.request("GET", "/pos")
        assert status == 200, body
        pos = Pos.from_json(data[DB]) if DB in data else Pos()
        want = self.history[acked].checksum
        mismatches = len(s.mismatches)
        s.check(
            "acknowledged position survived",
            pos.txid > acked or (pos.txid == acked and want in (None, pos.post_apply_checksum)),
            lambda: f"/pos {pos.txid:x}/{pos.post_apply_checksum:016x}, acknowledged {acked:x}/{want}",
        )
        points = await self._points()
        if pos.txid == acked:
            s.check("latest acknowledged point restorable", acked in points, lambda: f"{acked:x}")
        for txid, checksum in points.items():
            state = self.history.get(txid)
            if state is not None and state.checksum is not None:
                s.check(
                    "acknowledged point keeps its checksum",
                    checksum == state.checksum,
                    lambda t=txid, c=checksum, w=state.checksum: f"{t:x}: {c:016x}, acknowledged {w:016x}",
                )
        earlier = sorted(t for t in points if t in self.history and t != acked)
        for txid in sorted({acked} & points.keys() | set(self.rng.sample(earlier, min(1, len(earlier))))):
            await self._check_rows(txid)
        if len(s.mismatches) == mismatches:
            self.verified_upto = acked
        await self._check_hwm_stored()
        await self._await_hwm()

    async def _check_hwm_stored(self) -> None:
        """The HWM (the server's, and the one LiteFS was last told) is not past the highest TXID of the L1
        objects in the bucket (read before listing: uploads precede HWM raises)."""
        hwm = max(read_position(self.data)[1], self.node.hwm)
        stored = max((info.max_txid for info in await self.objects.list_files(CLUSTER, DB, 1)), default=0)
        self.summary.check(
            "HWM never past L1 in storage", hwm <= stored, lambda: f"hwm {hwm:x}, highest L1 TXID {stored:x}"
        )

    async def _check_rows(self, txid: int) -> None:
        """Export the database at ``txid`` as SQLite: it passes an integrity check and has the rows."""
        status, _, body = await self.request(
            "GET", f"/db/snapshot?db={DB}&format=sqlite&txid={format_txid(txid)}"
        )
        if status == 404:
            return  # the point expired since it was listed
        rows: str | None = None
        if status == 200:
            path = self.work / "export.db"
            path.write_bytes(body)
            with contextlib.suppress(AssertionError, sqlite3.DatabaseError):  # not a sound database
                rows = digest(check_sqlite(path))
        self.summary.check(
            ROWS_AT_A_POINT,
            rows == self.history[txid].rows,
            lambda: f"{txid:x}: status {status} {body[:200]!r}, rows {rows} vs {self.history[txid].rows}",
        )

    async def _await_hwm(self) -> None:
        """After a restart, L1 compaction takes in everything: the HWM reaches the position."""
        deadline = time.monotonic() + CATCH_UP_WAIT
        while (state := read_position(self.data))[0] != state[1] and time.monotonic() < deadline:
            self._alive()
            await asyncio.sleep(0.1)
        self._alive()
        self.summary.check(
            "HWM catches up after a restart",
            state[0] == state[1],
            lambda: f"txid {state[0]:x}, hwm {state[1]:x}, levels {state[2]}",
        )

    async def _await_levels(self) -> None:
        """At the end, with no more writes, every level reaches the position (no stalled compaction)."""
        deadline = time.monotonic() + LEVELS_WAIT
        levels = [1, 2, 3, 9]

        def caught_up(state: tuple[int, int, dict[int, int]]) -> bool:
            return all(state[2].get(level) == state[0] for level in levels)

        while not caught_up(state := read_position(self.data)) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        self.summary.check("every level catches up at the end", caught_up(state), lambda: f"{state}")

    async def _list_storage(self) -> dict[Key, FileInfo]:
        """Every file of the database in storage, by (level, min, max)."""
        found: dict[Key, FileInfo] = {}
        for level in await self.objects.list_levels(CLUSTER, DB):
            for info in await self.objects.list_files(CLUSTER, DB, level):
                found[(info.level, info.min_txid, info.max_txid)] = info
        return found

    async def _check_crashed_state(self) -> None:
        """With the server dead: no reference to a missing file, and every new stored file verifies."""
        s = self.summary
        index, l0_rows = read_index(self.data)
        listing = await self._list_storage()
        on_disk = l0_files(self.data)
        s.check(
            "index refers only to stored files",
            index.keys() <= listing.keys(),
            lambda: f"missing objects {sorted(index.keys() - listing.keys())}",
        )
        s.check(
            "L0 rows refer only to files on disk",
            l0_rows <= on_disk,
            lambda: f"missing L0 files {sorted(l0_rows - on_disk)}",
        )
        s.seen["unreferenced files found after a crash"] += len(listing.keys() - index.keys())
        s.seen["unreferenced files found after a crash"] += len(on_disk - l0_rows)
        await self._verify_objects(listing, index)

    async def _verify_objects(
        self, listing: dict[Key, FileInfo], index: dict[Key, tuple[int, int, int]]
    ) -> None:
        """Download every stored file not checked yet: it verifies, and its header and trailer agree
        with its key, its metadata and its index row (if indexed)."""
        path = self.work / "object.ltx"
        for key, info in sorted(listing.items()):
            ident = (key, info.size, info.created_at.timestamp())
            if ident in self._checked_objects:
                continue
            self._checked_objects.add(ident)
            meta = await self.objects.metadata(info)
            await self.objects.download(info, path)
            try:
                with path.open("rb") as f:
                    header, trailer, _ = verify(f)
                got = (
                    header.min_txid,
                    header.max_txid,
                    header.pre_apply_checksum,
                    trailer.post_apply_checksum,
                )
                error = None
            except LTXError as e:
                got, error = None, e
            want = (info.min_txid, info.max_txid, meta.pre_apply_checksum, meta.post_apply_checksum)
            indexed = index.get(key)
            self.summary.check(
                "stored file verifies",
                error is None
                and got == want
                and (indexed is None or indexed == (info.size, want[2], want[3])),
                lambda k=key, g=got, w=want, i=indexed, e=error: f"{k}: {e or g} vs {w}, index {i}",
            )


def schedule(rng: random.Random, kills: int) -> list[tuple[Fault, int]]:
    """``kills`` faults: every kind once in a seeded order (as far as ``kills`` allows), then seeded picks;
    a crash in recovery right after a fault that leaves a stored file unindexed (so that it has work)."""
    kinds = [f for f in FAULTS if f is not RECOVERY]
    order = rng.sample(kinds, len(kinds))
    order += [rng.choice(kinds) for _ in range(kills - len(order))]
    order = order[:kills]
    first = next((i for i, f in enumerate(order[:-1]) if f.leaves_unindexed), None)
    for i in range(1, len(order)):
        if order[i - 1].leaves_unindexed and (i - 1 == first or rng.random() < 0.3):
            order[i] = RECOVERY
    return [(f, rng.randint(1, f.repeat)) for f in order]


# -- the faults -----------------------------------------------------------------------------------------
async def _repeat_until_dead(campaign: Campaign, operation: Callable[[], Awaitable[None]]) -> None:
    """Run ``operation`` again and again until the server dies (at most :data:`CRASH_WAIT` seconds)."""

    async def _loop() -> None:
        while campaign.server.proc.returncode is None:
            with contextlib.suppress(ServerDied, aiohttp.ClientError):
                await operation()
            await asyncio.sleep(0.2)

    task = asyncio.create_task(_loop())
    try:
        await campaign.wait_exit(CRASH_WAIT)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def await_crash(campaign: Campaign) -> None:
    """The workload (and compaction) reaches the armed crash point."""
    await campaign.wait_exit(CRASH_WAIT)


async def restore_until_crash(campaign: Campaign) -> None:
    """Restores reach the armed crash point."""
    await _repeat_until_dead(campaign, campaign.restore)


async def import_until_crash(campaign: Campaign) -> None:
    """Imports through the CLI reach the armed crash point."""
    await _repeat_until_dead(campaign, campaign.import_cli)


async def restore_or_import_until_crash(campaign: Campaign) -> None:
    """A restore, or an import, reaches the armed crash point."""
    operation = campaign.rng.choice([campaign.restore, campaign.import_cli])
    await _repeat_until_dead(campaign, operation)


async def kill_at_random(campaign: Campaign) -> None:
    """SIGKILL at a random time while the emulator writes and compaction runs."""
    await asyncio.sleep(campaign.rng.uniform(0.1, 3.0))
    await campaign.kill("kill -9 at a random time")


async def _kill_during(campaign: Campaign, label: str, operation: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(operation())
    await asyncio.sleep(campaign.rng.uniform(0.0, 0.3))
    await campaign.kill(label)
    await asyncio.gather(task, return_exceptions=True)


async def kill_during_restore(campaign: Campaign) -> None:
    """SIGKILL while a restore (HTTP API) may be under way."""
    await _kill_during(campaign, "kill -9 during a restore", campaign.restore)


async def kill_during_import(campaign: Campaign) -> None:
    """SIGKILL while an import (HTTP API) may be under way."""
    await _kill_during(campaign, "kill -9 during an import", campaign.import_http)


async def kill_during_startup(campaign: Campaign) -> None:
    """SIGKILL at a random time, then SIGKILL the next start while it recovers."""
    await kill_at_random(campaign)
    await campaign.crashed(KILL_AT_RANDOM)
    await campaign.start("")
    await asyncio.sleep(campaign.rng.uniform(0.05, 1.0))
    await campaign.kill("kill -9 during start-up")


def _crash(point: str, act: Act = await_crash, repeat: int = 1) -> Fault:
    return Fault(f"crash point {point}", act, point, repeat)


def _storage(label: str, seconds: float, **faults: float | bool) -> Fault:
    """Storage misbehaving for ``seconds`` (see :meth:`Campaign.storage_fault`)."""

    async def act(campaign: Campaign) -> None:
        await campaign.storage_fault(label, seconds, faults)

    return Fault(label, act)


KILL_AT_RANDOM = Fault("kill -9 at a random time", kill_at_random)
RECOVERY = _crash("recovery.reconcile")
FAULTS: list[Fault] = [
    _crash("ingest.placed", repeat=5),
    _crash("ingest.committed", repeat=5),
    *(_crash(f"compaction.l{level}.{step}") for level in (1, 2, 3, 9) for step in ("uploaded", "recorded")),
    _crash("compaction.l1.built", repeat=3),
    _crash("compaction.l9.built"),
    _crash("retention.l0_unindexed", repeat=3),
    _crash("retention.unindexed"),
    _crash("restore.built", restore_until_crash),
    _crash("restore.appended", restore_until_crash),
    _crash("append.written", restore_or_import_until_crash),
    _crash("import.appended", import_until_crash),
    RECOVERY,
    KILL_AT_RANDOM,
    Fault("kill -9 during a restore", kill_during_restore),
    Fault("kill -9 during an import", kill_during_import),
    Fault("kill -9 during start-up", kill_during_startup),
    _storage("storage errors (25 % 500/hang/reset) for 4 s", 4.0, fail=0.10, hang=0.05, reset=0.10),
    _storage("storage down for 3 s", 3.0, down=True),
]
"""Every kind of fault a schedule draws from (``recovery.rebuilt`` needs a lost metadata db: it has its own
test in ``tests/test_crash.py``)."""
