"""The LiteFS client emulator (tests/litefs.py) against a minimal fake of the backup API kept in this file."""

from __future__ import annotations

import io
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from lfsb.ltx import (
    Decoder,
    Header,
    Pos,
    Trailer,
    compact,
    database_checksum,
    decode_database,
    encode_database,
    parse_filename,
    parse_sqlite_header,
    verify,
)
from tests.litefs import LiteFSEmulator, SyncError


@dataclass
class Posted:
    """One ``POST /db/tx`` as the fake received it."""

    headers: CIMultiDictProxy[str]
    chunks: list[int]
    header: Header
    trailer: Trailer
    status: int = 200


class FakeBackup:
    """Just enough of the backup API to test the emulator: one database, kept as a real SQLite file."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.url = ""
        self.name = ""
        self.pos = Pos()
        self.hwm: str | None = "0000000000000000"
        self.inject: dict[tuple[str, str], web.Response] = {}
        """One-shot responses by (method, path), returned instead of the real handling."""
        self.requests: list[tuple[str, str, CIMultiDictProxy[str]]] = []
        self.posts: list[Posted] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/pos", self._pos)
        app.router.add_post("/db/tx", self._tx)
        app.router.add_get("/db/snapshot", self._snapshot)
        return app

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path, request.headers))
        injected = self.inject.pop((request.method, request.path), None)
        if injected is None:
            return await handler(request)
        await request.read()
        return injected

    async def _pos(self, request: web.Request) -> web.Response:
        return web.json_response({self.name: self.pos.to_json()} if self.pos.txid else {})

    async def _tx(self, request: web.Request) -> web.Response:
        self.name = request.query["db"]
        chunks, current = [], bytearray()
        async for data, end_of_chunk in request.content.iter_chunks():
            current += data
            if end_of_chunk:
                chunks.append(bytes(current))
                current.clear()
        body = b"".join(chunks)
        header, trailer, _ = verify(io.BytesIO(body))
        posted = Posted(request.headers, [len(c) for c in chunks], header, trailer)
        self.posts.append(posted)
        if not header.is_snapshot and (header.min_txid, header.pre_apply_checksum) != (
            self.pos.txid + 1,
            self.pos.post_apply_checksum,
        ):
            posted.status = 409
            error = {"code": "EPOSMISMATCH", "error": "position mismatch", "pos": self.pos.to_json()}
            return web.json_response(error, status=409)
        self._apply(body, header)
        self.pos = Pos(header.max_txid, trailer.post_apply_checksum)
        assert self.pos.post_apply_checksum == self.checksum()
        return web.Response(headers={"Litefs-Hwm": self.hwm} if self.hwm else {})

    def _apply(self, body: bytes, header: Header) -> None:
        if header.is_snapshot:
            with self.db_path.open("wb") as out:
                decode_database(io.BytesIO(body), out)
            return
        dec = Decoder(io.BytesIO(body))
        dec.read_header()
        with self.db_path.open("r+b") as db:
            for pgno, frame in dec.pages():
                db.seek((pgno - 1) * header.page_size)
                db.write(frame[4:])
            db.truncate(header.commit * header.page_size)
        dec.close()

    async def _snapshot(self, request: web.Request) -> web.Response:
        out = io.BytesIO()
        with self.db_path.open("rb") as db:
            encode_database(db, out, txid=self.pos.txid)
        return web.Response(body=out.getvalue(), content_type="application/octet-stream")

    def checksum(self) -> int:
        with self.db_path.open("rb") as db:
            page_size = parse_sqlite_header(db.read(100)).page_size
            db.seek(0)
            return database_checksum(db, page_size)

    def write(self, sql: str) -> None:
        """A transaction the server has and the node does not (as after a restore on the server)."""
        conn = sqlite3.connect(self.db_path, isolation_level=None)
        conn.execute(sql)
        conn.close()
        self.pos = Pos(self.pos.txid + 1, self.checksum())


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeBackup]:
    fake = FakeBackup(tmp_path / "fake.db")
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def emu(tmp_path: Path, fake: FakeBackup) -> AsyncIterator[LiteFSEmulator]:
    async with LiteFSEmulator(tmp_path / "node", fake.url + "/ignored/path") as emu:
        yield emu


def assert_same_db(emu: LiteFSEmulator, fake: FakeBackup) -> None:
    assert emu.db_path.read_bytes() == fake.db_path.read_bytes()
    assert emu.pos == fake.pos


async def test_first_sync_sends_snapshot_then_compacted_incrementals(
    emu: LiteFSEmulator, fake: FakeBackup
) -> None:
    emu.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    emu.execute("INSERT INTO t (v) VALUES ('a')")
    assert await emu.sync() == emu.pos == Pos(2, emu.pos.post_apply_checksum)
    (first,) = fake.posts
    assert (first.header.min_txid, first.header.max_txid, first.header.pre_apply_checksum) == (1, 2, 0)
    assert first.header.node_id == emu.node_id != 0
    assert (first.header.flags, first.header.page_size, first.header.wal_offset) == (1, 4096, 0)
    assert_same_db(emu, fake)

    before = fake.pos
    for v in "bcd":
        emu.execute("INSERT INTO t (v) VALUES (?)", (v,))
    await emu.sync()
    second = fake.posts[1].header
    assert (second.min_txid, second.max_txid, second.pre_apply_checksum) == (3, 5, before.post_apply_checksum)
    assert (second.node_id, second.flags) == (0, 1)
    assert_same_db(emu, fake)
    assert (emu.hwm, emu.stats.posts, emu.stats.files_sent, emu.stats.snapshots_sent) == (0, 2, 3, 1)
    assert [h.max_txid for h in emu.stats.sent] == [2, 5]

    await emu.sync()  # in sync: /pos only
    assert len(fake.posts) == 2
    assert [r[:2] for r in fake.requests].count(("GET", "/pos")) == 3


async def test_300_pending_transactions_go_as_256_then_44_files(
    emu: LiteFSEmulator, fake: FakeBackup
) -> None:
    emu.execute("CREATE TABLE t (v INTEGER)")
    await emu.sync()
    with emu.transaction():
        pass  # a transaction that changes nothing writes no LTX file
    for i in range(300):
        emu.execute("INSERT INTO t VALUES (?)", (i,))
    assert emu.txid == 301
    await emu.sync()
    ranges = [(p.header.min_txid, p.header.max_txid) for p in fake.posts[1:]]
    assert ranges == [(2, 257), (258, 301)]
    assert emu.stats.files_sent == 300
    assert_same_db(emu, fake)


async def test_requests_are_chunked_and_carry_litefs_headers(emu: LiteFSEmulator, fake: FakeBackup) -> None:
    emu.execute("CREATE TABLE t (v BLOB)")
    emu.execute("INSERT INTO t VALUES (randomblob(200000))")
    await emu.sync()
    common = {
        "User-Agent": "Go-http-client/1.1",
        "Authorization": "cluster test",
        "Litefs-Cluster-Id": emu.cluster_id,
        "Accept-Encoding": "gzip",
    }
    assert re.fullmatch(r"LFSC[0-9A-F]{16}", emu.cluster_id)
    get_headers = fake.requests[0][2]
    assert dict(get_headers) == {"Host": fake.url.removeprefix("http://"), **common}
    post = fake.posts[0]
    assert {k: post.headers[k] for k in common} == common
    assert post.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Type" not in post.headers
    assert "Content-Length" not in post.headers
    assert set(post.headers) == {"Host", "Transfer-Encoding", *common}
    assert post.chunks[0] == 100
    assert post.chunks[-1] == 16
    assert len(post.chunks) > 3
    assert fake.name == "db"


async def test_position_mismatch_pulls_the_servers_snapshot(emu: LiteFSEmulator, fake: FakeBackup) -> None:
    emu.execute("CREATE TABLE t (v TEXT)")
    emu.execute("INSERT INTO t VALUES ('kept')")
    await emu.sync()
    emu.execute_unrecorded("INSERT INTO t VALUES ('behind the back')")
    emu.execute("INSERT INTO t VALUES ('lost')")
    assert emu.txid == 3
    await emu.sync()
    assert [p.status for p in fake.posts] == [200, 409]
    assert emu.stats.snapshots_pulled == 1
    assert_same_db(emu, fake)
    assert emu.rows("SELECT v FROM t") == [("kept",)]
    assert emu.rows("PRAGMA integrity_check") == [("ok",)]
    assert [p.name for p in emu.ltx_files()] == ["0000000000000001-0000000000000002.ltx"]

    emu.execute("INSERT INTO t VALUES ('after')")
    await emu.sync()
    assert (fake.posts[-1].status, fake.posts[-1].header.min_txid) == (200, 3)
    assert_same_db(emu, fake)


async def test_remote_checksum_check_restores_without_posting(tmp_path: Path, fake: FakeBackup) -> None:
    async with LiteFSEmulator(tmp_path / "node", fake.url, check_remote_checksum=True) as emu:
        emu.execute("CREATE TABLE t (v TEXT)")
        await emu.sync()
        emu.execute_unrecorded("INSERT INTO t VALUES ('x')")
        emu.execute("INSERT INTO t VALUES ('y')")
        await emu.sync()
        assert (len(fake.posts), emu.stats.snapshots_pulled) == (1, 1)
        assert_same_db(emu, fake)


async def test_server_ahead_pulls_the_snapshot(emu: LiteFSEmulator, fake: FakeBackup) -> None:
    emu.execute("CREATE TABLE t (v TEXT)")
    await emu.sync()
    fake.write("INSERT INTO t VALUES ('server')")
    emu.execute("INSERT INTO t VALUES ('node')")  # same TXID as the server's, other content
    fake.write("INSERT INTO t VALUES ('server 2')")
    await emu.sync()
    assert len(fake.posts) == 1
    assert emu.pos == fake.pos == Pos(3, fake.checksum())
    assert_same_db(emu, fake)
    assert emu.rows("SELECT v FROM t") == [("server",), ("server 2",)]
    assert emu.rows("PRAGMA integrity_check") == [("ok",)]


async def test_same_txid_other_checksum_pulls_the_snapshot(emu: LiteFSEmulator, fake: FakeBackup) -> None:
    emu.execute("CREATE TABLE t (v TEXT)")
    await emu.sync()
    emu.execute_unrecorded("INSERT INTO t VALUES ('x')")
    assert emu.txid == fake.pos.txid
    assert emu.pos != fake.pos
    await emu.sync()
    assert (len(fake.posts), emu.stats.snapshots_pulled) == (1, 1)
    assert_same_db(emu, fake)
    assert emu.rows("SELECT count(*) FROM t") == [(0,)]


async def test_missing_local_ltx_file_pulls_the_snapshot(emu: LiteFSEmulator, fake: FakeBackup) -> None:
    emu.execute("CREATE TABLE t (v TEXT)")
    await emu.sync()
    emu.execute("INSERT INTO t VALUES ('a')")
    emu.execute("INSERT INTO t VALUES ('b')")
    (emu.ltx_dir / "0000000000000002-0000000000000002.ltx").unlink()
    await emu.sync()
    assert (len(fake.posts), emu.stats.snapshots_pulled, emu.txid) == (1, 1, 1)
    assert_same_db(emu, fake)


async def test_success_without_hwm_fails_the_round(emu: LiteFSEmulator, fake: FakeBackup) -> None:
    emu.execute("CREATE TABLE t (v TEXT)")
    fake.hwm = None
    with pytest.raises(SyncError, match="cannot parse high-water mark"):
        await emu.sync()
    assert emu.stats.last_error is not None
    fake.hwm = "0000000000000007"
    await emu.sync()  # the server applied the file: positions now agree, nothing is re-sent
    assert (len(fake.posts), emu.stats.last_error, emu.hwm) == (1, None, 0)
    emu.execute("INSERT INTO t VALUES ('a')")
    await emu.sync()
    assert emu.hwm == 7


async def test_error_responses_end_the_round(emu: LiteFSEmulator, fake: FakeBackup) -> None:
    emu.execute("CREATE TABLE t (v TEXT)")
    fake.inject["POST", "/db/tx"] = web.json_response({"code": "EINTERNAL", "error": "boom"}, status=500)
    with pytest.raises(SyncError, match="boom") as err:
        await emu.sync()
    assert (err.value.status, err.value.code) == (500, "EINTERNAL")
    fake.inject["GET", "/pos"] = web.Response(text="not json")
    with pytest.raises(SyncError, match="fetch position map"):
        await emu.sync()
    fake.inject["GET", "/pos"] = web.Response(status=503, text="busy")
    assert await emu.sync_until_synced() == emu.pos == fake.pos
    assert emu.stats.rounds == 4
    assert emu.stats.posts == 2


async def test_connection_failure_is_a_sync_error(tmp_path: Path) -> None:
    async with LiteFSEmulator(tmp_path / "node", "http://127.0.0.1:1") as emu:
        emu.execute("CREATE TABLE t (v TEXT)")
        with pytest.raises(SyncError, match="backup stream error"):
            await emu.sync()
        with pytest.raises(SyncError, match="not in sync after 2 rounds"):
            await emu.sync_until_synced(max_rounds=2)


async def test_failed_snapshot_download_keeps_the_local_database(
    emu: LiteFSEmulator, fake: FakeBackup
) -> None:
    emu.execute("CREATE TABLE t (v TEXT)")
    await emu.sync()
    fake.write("INSERT INTO t VALUES ('server')")
    emu.execute("INSERT INTO t VALUES ('node 1')")
    emu.execute("INSERT INTO t VALUES ('node 2')")
    fake.inject["GET", "/db/snapshot"] = web.json_response(
        {"code": "EINTERNAL", "error": "no snapshot"}, status=500
    )
    with pytest.raises(SyncError, match="no snapshot"):
        await emu.sync()  # POST → 409 → snapshot fails
    assert emu.rows("SELECT v FROM t") == [("node 1",), ("node 2",)]
    emu.execute("INSERT INTO t VALUES ('still writable')")
    assert emu.txid == 4
    await emu.sync_until_synced()
    assert_same_db(emu, fake)
    assert emu.rows("SELECT v FROM t") == [("server",)]


@pytest.mark.parametrize("page_size", [512, 4096])
async def test_local_ltx_files_replay_to_the_database(
    tmp_path: Path, fake: FakeBackup, page_size: int
) -> None:
    async with LiteFSEmulator(tmp_path / "node", fake.url, page_size=page_size) as emu:
        emu.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        emu.executescript("INSERT INTO t (v) VALUES (zeroblob(50000)); INSERT INTO t (v) VALUES ('x');")
        with emu.transaction() as conn:
            conn.execute("UPDATE t SET v = randomblob(3000) WHERE id = 2")
        with pytest.raises(RuntimeError), emu.transaction() as conn:
            conn.execute("DELETE FROM t")
            raise RuntimeError
        with pytest.raises(sqlite3.OperationalError):
            emu.executescript("DELETE FROM t; SELECT nonsense;")
        emu.execute("DELETE FROM t WHERE id = 1")
        emu.execute("VACUUM")
        assert emu.txid == 5
        assert emu.rows("SELECT id FROM t") == [(2,)]

        files = emu.ltx_files()
        assert [parse_filename(p.name) for p in files] == [(t, t) for t in range(1, 6)]
        prev = Pos()
        commits = []
        for p in files:
            with p.open("rb") as f:
                header, trailer, _ = verify(f)
            assert (header.pre_apply_checksum, header.page_size, header.flags) == (prev[1], page_size, 1)
            assert header.node_id == emu.node_id
            commits.append(header.commit)
            prev = Pos(header.max_txid, trailer.post_apply_checksum)
        assert prev == emu.pos
        assert commits[-1] < max(commits)  # the VACUUM shrank the database
        assert replay(files) == emu.db_path.read_bytes()

        await emu.sync()
        assert_same_db(emu, fake)


def replay(files: list[Path]) -> bytes:
    """The database that applying LTX files 1..n in order gives."""
    compacted, out = io.BytesIO(), io.BytesIO()
    with ExitStack() as stack:
        compact([stack.enter_context(p.open("rb")) for p in files], compacted)
    compacted.seek(0)
    decode_database(compacted, out)
    return out.getvalue()


async def test_restarted_node_resumes_with_an_incremental(tmp_path: Path, fake: FakeBackup) -> None:
    async with LiteFSEmulator(tmp_path / "node", fake.url, node_id=0xABC) as emu:
        emu.execute("CREATE TABLE t (v TEXT)")
        await emu.sync()
        before = (emu.cluster_id, emu.node_id, emu.pos)
    async with LiteFSEmulator(tmp_path / "node", fake.url) as emu:
        assert (emu.cluster_id, emu.node_id, emu.pos) == before
        emu.execute("INSERT INTO t VALUES ('after restart')")
        await emu.sync()
        assert (emu.stats.snapshots_sent, fake.posts[-1].header.min_txid) == (0, 2)
        assert_same_db(emu, fake)


async def test_node_without_the_database_pulls_it(
    tmp_path: Path, emu: LiteFSEmulator, fake: FakeBackup
) -> None:
    emu.execute("CREATE TABLE t (v TEXT)")
    emu.execute("INSERT INTO t VALUES ('a')")
    await emu.sync()
    async with LiteFSEmulator(tmp_path / "other", fake.url, cluster_id=emu.cluster_id) as other:
        assert other.txid == 0
        await other.sync()
        assert other.stats.snapshots_pulled == 1
        assert_same_db(other, fake)
        assert other.rows("SELECT v FROM t") == [("a",)]


async def test_prune_below_hwm_keeps_the_latest_file(emu: LiteFSEmulator, fake: FakeBackup) -> None:
    fake.hwm = "0000000000000003"
    for i in range(4):
        emu.execute(f"CREATE TABLE t{i} (v)")
    await emu.sync()
    assert emu.hwm == 3
    assert emu.prune_below_hwm() == 2
    assert [parse_filename(p.name)[0] for p in emu.ltx_files()] == [3, 4]
