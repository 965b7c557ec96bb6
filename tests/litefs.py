"""A LiteFS client emulator for end-to-end tests: a primary node's ``streamBackup`` against a backup server.

It owns a real SQLite database (rollback journal, so the main file is current after every commit) and
turns each committed transaction into an LTX file of the changed pages, as LiteFS's ``CommitJournal``
does. :meth:`LiteFSEmulator.sync` then runs one backup round the way LiteFS (``store.go``
``streamBackupDB``, ``lfsc/backup_client.go``) does: ``GET /pos``; a full snapshot for a database the
server does not list; otherwise the local LTX files ``remote+1..local``, at most 256 per POST, compacted
into one LZ4 LTX streamed chunked; and a restore from ``GET /db/snapshot`` on ``EPOSMISMATCH``, when the
server is ahead, when the checksums differ at equal TXIDs, or when a needed local LTX file is gone.

Layout of ``work_dir``: the database is ``<name>``; LiteFS's own state (LTX files in ``ltx/``, the
cluster and node IDs, temporary files) is under ``.litefs/``, so a new emulator on the same directory
resumes like a restarted node.
"""

from __future__ import annotations

import asyncio
import functools
import json
import operator
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from lfsb.ltx import (
    FLAG,
    FLAG_COMPRESS_LZ4,
    HEADER_SIZE,
    TRAILER_SIZE,
    Encoder,
    Header,
    LTXError,
    Pos,
    Trailer,
    compact,
    decode_database,
    format_filename,
    format_txid,
    lock_pgno,
    parse_filename,
    parse_sqlite_header,
    parse_txid,
    verify,
)
from lfsb.ltx.sqlite import SQLITE_HEADER_SIZE, diff_database

MAX_BACKUP_LTX_FILES = 256
"""LiteFS's ``MaxBackupLTXFileN``: the most local LTX files compacted into one POST."""

_BODY_PIECE = 16 * 1024
_MAX_ERROR_BODY = 1 << 16


class SyncError(Exception):
    """A backup round failed; LiteFS would log it and retry on its next 1 s tick."""

    def __init__(
        self, message: str, status: int | None = None, code: str | None = None, body: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body


@dataclass
class SyncStats:
    """What the emulator did, for tests to check."""

    rounds: int = 0
    posts: int = 0
    """``POST /db/tx`` requests made, accepted or not."""
    files_sent: int = 0
    """Local LTX files carried by accepted incremental POSTs."""
    snapshots_sent: int = 0
    snapshots_pulled: int = 0
    sent: list[Header] = field(default_factory=list)
    """Headers of the accepted POST bodies, in order."""
    last_error: SyncError | None = None
    """The error that ended the last round; None if it succeeded."""


class LiteFSEmulator:
    """One LiteFS primary with one database, backing it up to ``endpoint`` (only its scheme and host count).

    ``token`` is sent verbatim as ``Authorization`` (``cluster <name>``). The cluster ID (``LFSC`` + 16
    upper-case hex digits) and the node ID are random unless given, and persist in ``work_dir``.
    """

    def __init__(
        self,
        work_dir: Path,
        endpoint: str,
        *,
        name: str = "db",
        token: str = "cluster test",
        page_size: int = 4096,
        node_id: int | None = None,
        cluster_id: str | None = None,
        check_remote_checksum: bool = False,
        timeout: float | None = 60.0,
    ) -> None:
        """``check_remote_checksum`` restores instead of POSTing when the server's checksum differs
        from the local one at the server's TXID; LiteFS does not check (it POSTs and gets a 409)."""
        self.name = name
        self.endpoint = str(URL(endpoint).origin())
        self.token = token
        self.check_remote_checksum = check_remote_checksum
        self.db_path = Path(work_dir) / name
        self._state_dir = Path(work_dir) / ".litefs"
        self.ltx_dir = self._state_dir / "ltx"
        self.ltx_dir.mkdir(parents=True, exist_ok=True)
        self.cluster_id = _persisted(
            self._state_dir / "clusterid", cluster_id, lambda: "LFSC" + secrets.token_hex(8).upper()
        )
        given_node_id = None if node_id is None else f"{node_id:016X}"
        self.node_id = int(_persisted(self._state_dir / "id", given_node_id, _random_node_id), 16)
        self.stats = SyncStats()
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._sync_lock = asyncio.Lock()
        self._conn: sqlite3.Connection | None = None
        self._page_size = page_size
        self._page_checksums: list[int] = []
        self._pos = Pos()
        self._hwm = 0
        self._load_state()

    # -- state ----------------------------------------------------------------------------------------------
    @property
    def pos(self) -> Pos:
        """The local replication position (TXID and database checksum)."""
        return self._pos

    @property
    def txid(self) -> int:
        """The local TXID (0 before the first transaction)."""
        return self._pos.txid

    @property
    def hwm(self) -> int:
        """The high-water mark from the last accepted POST."""
        return self._hwm

    @property
    def page_size(self) -> int:
        """The database's page size."""
        return self._page_size

    def ltx_files(self) -> list[Path]:
        """The local LTX files, in TXID order."""
        paths = [p for p in self.ltx_dir.iterdir() if p.suffix == ".ltx"]
        return sorted(paths, key=lambda p: parse_filename(p.name))

    def _ltx_path(self, min_txid: int, max_txid: int) -> Path:
        return self.ltx_dir / format_filename(min_txid, max_txid)

    def _load_state(self) -> None:
        """Resume from an existing work dir, as a restarted node does: the position of the last LTX file."""
        files = self.ltx_files()
        if files:
            with files[-1].open("rb") as f:
                header = Header.from_bytes(f.read(HEADER_SIZE))
                f.seek(-TRAILER_SIZE, os.SEEK_END)
                trailer = Trailer.from_bytes(f.read())
            self._pos = Pos(header.max_txid, trailer.post_apply_checksum)
        if self.db_path.exists():
            self._scan()

    def _scan(self) -> list[tuple[int, bytes]]:
        """Update the page checksums from the database file; returns the pages that changed."""
        with self.db_path.open("rb") as f:
            head = f.read(SQLITE_HEADER_SIZE)
            if head:
                self._page_size = parse_sqlite_header(head).page_size
            return diff_database(f, self._page_size, self._page_checksums)

    def _checksum(self) -> int:
        return FLAG | functools.reduce(operator.xor, self._page_checksums, 0)

    # -- local transactions ---------------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.db_path, isolation_level=None)
            self._conn.execute(f"PRAGMA page_size={self._page_size}")
            self._conn.execute("PRAGMA journal_mode=DELETE")
        return self._conn

    def _close_db(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One SQLite write transaction; recorded as one LTX file when the block exits normally."""
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self._record()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one statement in its own transaction (so ``VACUUM`` works too) and record it."""
        self._db().execute(sql, params)
        self._record()

    def executescript(self, script: str) -> None:
        """Run a script of statements in one transaction and record it."""
        conn = self._db()
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{script}\n;COMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._record()

    def execute_unrecorded(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Change the database behind the server's back: no LTX file, same TXID, a new local checksum.

        The next sync sees equal TXIDs with different checksums and pulls the snapshot; after a further
        recorded transaction, the POST's pre-apply checksum is one the server never had (409 EPOSMISMATCH).
        """
        self._db().execute(sql, params)
        self._scan()
        self._pos = Pos(self._pos.txid, self._checksum())

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Query the local database."""
        return self._db().execute(sql, params).fetchall()

    def _record(self) -> None:
        """``CommitJournal``: write the LTX file of the transaction just committed, if it changed anything."""
        txid = self._pos.txid + 1
        if txid == 1:
            self._page_checksums = []  # TXID 1 is a snapshot: every page
        page_count = len(self._page_checksums)
        changed = self._scan()
        if not changed and len(self._page_checksums) == page_count:
            return
        header = Header(
            page_size=self._page_size,
            commit=len(self._page_checksums),
            min_txid=txid,
            max_txid=txid,
            flags=FLAG_COMPRESS_LZ4,
            timestamp=_now_ms(),
            pre_apply_checksum=0 if txid == 1 else self._pos.post_apply_checksum,
            node_id=self.node_id,
        )
        checksum = self._checksum()
        path = self._ltx_path(txid, txid)
        tmp = path.with_suffix(".ltx.tmp")
        with tmp.open("wb") as f:
            enc = Encoder(f, header)
            for pgno, data in changed:
                enc.write_page(pgno, data)
            enc.close(checksum)
        os.replace(tmp, path)
        self._pos = Pos(txid, checksum)

    def prune_below_hwm(self) -> int:
        """Delete local LTX files below the HWM except the latest (LiteFS retention); returns how many."""
        doomed = [p for p in self.ltx_files()[:-1] if parse_filename(p.name)[1] < self._hwm]
        for p in doomed:
            p.unlink()
        return len(doomed)

    # -- backup rounds --------------------------------------------------------------------------------------
    async def sync(self) -> Pos:
        """One backup round: ``GET /pos``, then send, or restore from the server's snapshot.

        Returns the server's position after the round, which then equals :attr:`pos`. Raises
        :class:`SyncError` (also kept in ``stats.last_error``) when the round fails.
        """
        async with self._sync_lock:
            self.stats.rounds += 1
            try:
                remote = await self._round()
            except SyncError as e:
                self.stats.last_error = e
                raise
            self.stats.last_error = None
            return remote

    async def sync_until_synced(self, max_rounds: int = 10, retry_delay: float = 0.005) -> Pos:
        """Repeat failed rounds (LiteFS retries on its next tick) until one succeeds and both sides agree."""
        for _ in range(max_rounds):
            try:
                return await self.sync()
            except SyncError:
                await asyncio.sleep(retry_delay)
        raise SyncError(f"not in sync after {max_rounds} rounds") from self.stats.last_error

    async def _round(self) -> Pos:
        try:
            return await self._sync_db(await self._fetch_pos())
        except (aiohttp.ClientError, TimeoutError) as e:
            raise SyncError(f"backup stream error: {e!r}") from e

    async def _sync_db(self, remote: Pos) -> Pos:
        """``streamBackupDB``, and the restore LiteFS runs when it reports a position mismatch."""
        if self._pos.txid == 0:
            # LiteFS has no such database yet: it restores one the server has, else there is nothing to do.
            return remote if remote == Pos() else await self._restore()
        try:
            caught_up = await self._catch_up(remote)
        except SyncError as e:
            if e.code != "EPOSMISMATCH":
                raise
            caught_up = None
        return await self._restore() if caught_up is None else caught_up

    async def _catch_up(self, remote: Pos) -> Pos | None:
        """Send what the server lacks (POSTing again while more than 256 files are pending); None when
        only a restore can reconcile: server ahead, same TXID with another checksum, a local file gone."""
        if remote == Pos():
            return await self._send_snapshot()
        while remote != self._pos:
            local = self._pos
            if remote.txid >= local.txid:
                return None
            last = min(local.txid, remote.txid + MAX_BACKUP_LTX_FILES)
            paths = [self._ltx_path(t, t) for t in range(remote.txid + 1, last + 1)]
            if not all(p.exists() for p in paths):
                return None
            if self.check_remote_checksum and _pre_apply_checksum(paths[0]) != remote.post_apply_checksum:
                return None
            remote = await self._send_files(paths)
        return remote

    def _headers(self) -> dict[str, str]:
        return {
            "User-Agent": "Go-http-client/1.1",
            "Authorization": self.token,
            "Litefs-Cluster-Id": self.cluster_id,
            "Accept-Encoding": "gzip",
        }

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                skip_auto_headers=("Accept", "Content-Type"),
            )
        return self._session

    async def _fetch_pos(self) -> Pos:
        """``GET /pos``: the server's position of this database (zero when it is not listed)."""
        async with self._http().get(f"{self.endpoint}/pos", headers=self._headers()) as resp:
            if not 200 <= resp.status < 300:
                raise await _response_error("fetch position map", resp)
            body = await resp.text()
        try:
            pos_map = _parse_pos_map(body)
        except (ValueError, LTXError) as e:
            raise SyncError(f"fetch position map: {e}", status=resp.status, body=body) from e
        return pos_map.get(self.name, Pos())

    async def _send_snapshot(self) -> Pos:
        """POST the whole database as a snapshot (min 1, max = local TXID, this node's ID), as
        ``streamBackupDBSnapshot`` does for a database the server does not know."""
        header = Header(
            page_size=self._page_size,
            commit=len(self._page_checksums),
            min_txid=1,
            max_txid=self._pos.txid,
            flags=FLAG_COMPRESS_LZ4,
            timestamp=_now_ms(),
            node_id=self.node_id,
        )
        lock = lock_pgno(self._page_size)
        with self._temp("snapshot-out.ltx") as tmp:
            with self.db_path.open("rb") as db, tmp.open("wb") as out:
                enc = Encoder(out, header)
                for pgno in range(1, header.commit + 1):
                    data = db.read(self._page_size)
                    if pgno != lock:
                        enc.write_page(pgno, data)
                trailer = enc.close()
            if trailer.post_apply_checksum != self._pos.post_apply_checksum:
                raise SyncError(
                    f"snapshot checksum mismatch at tx {format_txid(self._pos.txid)}: "
                    f"{trailer.post_apply_checksum:016x} <> {self._pos.post_apply_checksum:016x}"
                )
            pos = await self._post(tmp, header, trailer)
        self.stats.snapshots_sent += 1
        return pos

    async def _send_files(self, paths: list[Path]) -> Pos:
        """POST local LTX files compacted into one LZ4 LTX."""
        with self._temp("compacted.ltx") as tmp:
            with ExitStack() as stack, tmp.open("wb") as out:
                inputs = [stack.enter_context(p.open("rb")) for p in paths]
                header, trailer = compact(inputs, out)
            pos = await self._post(tmp, header, trailer)
        self.stats.files_sent += len(paths)
        return pos

    async def _post(self, path: Path, header: Header, trailer: Trailer) -> Pos:
        """``POST /db/tx`` streaming ``path`` chunked; returns the new remote position and stores the HWM."""
        self.stats.posts += 1
        async with self._http().post(
            f"{self.endpoint}/db/tx", params={"db": self.name}, data=_body(path), headers=self._headers()
        ) as resp:
            if not 200 <= resp.status < 300:
                raise await _response_error("write backup tx", resp)
            await resp.read()
            hwm = resp.headers.get("Litefs-Hwm", "")
        try:
            self._hwm = parse_txid(hwm)
        except LTXError:
            raise SyncError(f'cannot parse high-water mark: "{hwm}"', status=resp.status) from None
        self.stats.sent.append(header)
        return Pos(header.max_txid, trailer.post_apply_checksum)

    async def _restore(self) -> Pos:
        """``restoreDBFromBackup``: replace the database with the server's snapshot, drop other LTX files."""
        with self._temp("snapshot-in.ltx") as ltx_tmp, self._temp("restore.db") as db_tmp:
            url = f"{self.endpoint}/db/snapshot"
            async with self._http().get(url, params={"db": self.name}, headers=self._headers()) as resp:
                if not 200 <= resp.status < 300:
                    raise await _response_error("fetch backup snapshot", resp)
                with ltx_tmp.open("wb") as f:
                    async for chunk in resp.content.iter_any():
                        f.write(chunk)
            try:
                with ltx_tmp.open("rb") as f:
                    header, trailer, _ = verify(f)
                with ltx_tmp.open("rb") as f, db_tmp.open("wb") as out:
                    decode_database(f, out)
            except LTXError as e:
                raise SyncError(f"fetch backup snapshot: ltx validation error: {e}") from e
            self._close_db()
            os.replace(db_tmp, self.db_path)
            Path(f"{self.db_path}-journal").unlink(missing_ok=True)
            for p in self.ltx_files():
                p.unlink()
            os.replace(ltx_tmp, self._ltx_path(header.min_txid, header.max_txid))
        self._page_size = header.page_size
        self._page_checksums = []
        self._scan()
        self._pos = Pos(header.max_txid, trailer.post_apply_checksum)
        self.stats.snapshots_pulled += 1
        return self._pos

    @contextmanager
    def _temp(self, name: str) -> Iterator[Path]:
        path = self._state_dir / f"{name}.tmp"
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the HTTP session and the database connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._close_db()

    async def __aenter__(self) -> LiteFSEmulator:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _persisted(path: Path, given: str | None, new: Callable[[], str]) -> str:
    """``given``, else the value stored at ``path``, else ``new()``; stored at ``path`` for the next start."""
    if given is None:
        given = path.read_text().strip() if path.exists() else new()
    path.write_text(given + "\n")
    return given


def _random_node_id() -> str:
    return f"{secrets.randbits(64) or 1:016X}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _pre_apply_checksum(path: Path) -> int:
    with path.open("rb") as f:
        return Header.from_bytes(f.read(HEADER_SIZE)).pre_apply_checksum


def _parse_pos_map(body: str) -> dict[str, Pos]:
    """The ``GET /pos`` JSON map of database name to position."""
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ValueError(f"position map is not a JSON object: {body[:100]!r}")
    return {name: Pos.from_json(value) for name, value in obj.items()}


async def _body(path: Path) -> AsyncIterator[bytes]:
    """A POST body as LiteFS's pipe writes it: the header, the LZ4 frame in pieces, the trailer."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        yield f.read(HEADER_SIZE)
        remaining = size - HEADER_SIZE - TRAILER_SIZE
        while remaining > 0:
            piece = f.read(min(_BODY_PIECE, remaining))
            remaining -= len(piece)
            yield piece
        yield f.read(TRAILER_SIZE)


async def _response_error(what: str, resp: aiohttp.ClientResponse) -> SyncError:
    """A non-2xx response as LiteFS's ``readResponseError`` reads it (JSON ``code``/``error`` if any)."""
    body = (await resp.content.read(_MAX_ERROR_BODY)).decode(errors="replace")
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        return SyncError(
            f"{what}: backup client error ({resp.status}): {body}", status=resp.status, body=body
        )
    code, message = obj.get("code"), obj.get("error")
    return SyncError(
        f"{what}: backup client error ({resp.status}): {message}", status=resp.status, code=code, body=body
    )
