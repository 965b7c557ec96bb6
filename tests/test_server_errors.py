"""Bad input against the real server: every rejection has its status, code and JSON body, and changes nothing.

Pure HTTP validation runs against the local-directory store only (a module override of ``storage_env``);
the ``POST /db/tx`` error cases run against both stores (``both_stores``). A rejected write must leave the
database's position and content, its L0 files and the temp directory exactly as they were.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import hashlib
import io
import json
import operator
import random
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from lfsb.ltx import FLAG, FLAG_COMPRESS_LZ4, HEADER_SIZE, TRAILER_SIZE, Encoder, Header, Pos, page_checksum
from lfsb.names import MAX_DATABASE_NAME
from lfsb.server import app as server_app
from lfsb.server.main import Server
from lfsb.storage import StorageError
from tests.lfsb_server import (
    DB_ROUTES,
    Client,
    Reply,
    ServerState,
    assert_unchanged,
    fail_file_syncs,
    in_writer,
    indexed_files,
    server_state,
    storage_env_for,
    stored_files,
)

PAGE_SIZE = 4096
ZERO_POS = {"TXID": "0000000000000000", "PostApplyChecksum": "0000000000000000"}
both_stores = pytest.mark.parametrize("storage_env", ["local", "s3"], indirect=True)


@pytest.fixture
def storage_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Local-directory storage, or each store in turn for tests marked ``both_stores``."""
    return storage_env_for(request, getattr(request, "param", "local"))


# -- LTX files ----------------------------------------------------------------------------------------------
def page(pgno: int, version: int = 0, size: int = PAGE_SIZE) -> bytes:
    """A recognisable page: its number and a version, repeated."""
    return (pgno.to_bytes(4, "big") + version.to_bytes(4, "big")) * (size // 8)


def noise(seed: int) -> bytes:
    """An incompressible page."""
    return random.Random(seed).randbytes(PAGE_SIZE)


@dataclass(frozen=True)
class Model:
    """A database as the server should hold it after accepting some files: its pages and TXID."""

    pages: dict[int, bytes]
    txid: int

    @property
    def checksum(self) -> int:
        """The LTX database checksum of the pages."""
        return FLAG | functools.reduce(operator.xor, (page_checksum(p, d) for p, d in self.pages.items()), 0)

    @property
    def pos(self) -> dict[str, str]:
        """The position as ``GET /pos`` shows it."""
        return Pos(self.txid, self.checksum).to_json()

    @property
    def sqlite_sha256(self) -> str:
        """The sha256 of the raw database file (``/db/snapshot?format=sqlite``)."""
        return hashlib.sha256(b"".join(self.pages[p] for p in sorted(self.pages))).hexdigest()


def ltx(header: Header, pages: dict[int, bytes], post_apply_checksum: int) -> bytes:
    """Encode one LTX file."""
    out = io.BytesIO()
    enc = Encoder(out, header)
    for pgno in sorted(pages):
        enc.write_page(pgno, pages[pgno])
    enc.close(post_apply_checksum)
    return out.getvalue()


def snapshot(commit: int, txid: int = 1, post_apply_checksum: int | None = None) -> tuple[bytes, Model]:
    """A full snapshot of ``commit`` pages at ``txid`` (as LiteFS sends for a new database), and its state."""
    model = Model({p: page(p) for p in range(1, commit + 1)}, txid)
    header = Header(PAGE_SIZE, commit, 1, txid, FLAG_COMPRESS_LZ4, timestamp=1_700_000_000_000)
    post = model.checksum if post_apply_checksum is None else post_apply_checksum
    return ltx(header, model.pages, post), model


def incremental(
    base: Model,
    changes: dict[int, bytes],
    commit: int | None = None,
    post_apply_checksum: int | None = None,
    **header: int,
) -> tuple[bytes, Model]:
    """The next LZ4 LTX file after ``base`` writing ``changes`` (``header`` overrides fields), and the
    state it leads to."""
    commit = max(base.pages) if commit is None else commit
    pages = {p: d for p, d in (base.pages | changes).items() if p <= commit}
    model = Model(pages, base.txid + 1)
    fields = Header(
        PAGE_SIZE,
        commit,
        base.txid + 1,
        base.txid + 1,
        FLAG_COMPRESS_LZ4,
        timestamp=1_700_000_000_000 + base.txid,
        pre_apply_checksum=base.checksum,
    )
    post = model.checksum if post_apply_checksum is None else post_apply_checksum
    return ltx(dataclasses.replace(fields, **header), changes, post), model


# -- requests and checks ------------------------------------------------------------------------------------
async def post_tx(client: Client, body: object, name: str = "db", **kwargs: object) -> Reply:
    """``POST /db/tx?db=name`` with ``body`` (bytes or an async iterator of chunks)."""
    return await client.fetch("POST", f"/db/tx?db={name}", data=body, **kwargs)


def accepted(reply: Reply) -> None:
    """A 2xx ``POST /db/tx`` with the 16-hex ``Litefs-Hwm`` LiteFS requires."""
    assert reply.status == 200, reply.body
    assert re.fullmatch("[0-9a-f]{16}", reply.headers["Litefs-Hwm"])


def error(reply: Reply, status: int, code: str, message: str | None = None) -> dict[str, object]:
    """Check an error response: its status, compact JSON with a trailing newline, code and message."""
    assert reply.status == status
    assert reply.headers["Content-Type"].split(";")[0] == "application/json"
    assert reply.data is not None and reply.data["code"] == code, reply.body
    compact = json.dumps(reply.data, separators=(",", ":"), ensure_ascii=False) + "\n"
    assert reply.body.decode() == compact
    if message is not None:
        assert reply.data["error"] == message
    return reply.data


async def seed(client: Client, name: str = "db") -> Model:
    """Create database ``name`` with a snapshot of 3 pages and one incremental; its state."""
    body, model = snapshot(3)
    accepted(await post_tx(client, body, name))
    body, model = incremental(model, {2: page(2, 1)})
    accepted(await post_tx(client, body, name))
    return model


async def assert_model(server: Server, client: Client, models: dict[str, Model]) -> ServerState:
    """The server holds exactly ``models``; returns its state."""
    now = await server_state(server, client)
    assert now.positions == {name: m.pos for name, m in models.items()}
    assert now.contents == {name: m.sqlite_sha256 for name, m in models.items()}
    return now


@pytest.fixture
async def seeded(server: Server, client: Client) -> tuple[Model, ServerState]:
    """Database ``db`` created by :func:`seed`, and the server's state then."""
    model = await seed(client)
    return model, await assert_model(server, client, {"db": model})


# -- POST /db/tx --------------------------------------------------------------------------------------------
def malformed(valid: bytes) -> list[tuple[str, bytes, str]]:
    """Broken variants of the LTX file ``valid`` (3 pages, TXID 3): (case, body, the decoder's message)."""
    header = Header.from_bytes(valid[:HEADER_SIZE])

    def with_header(**fields: int) -> bytes:
        return dataclasses.replace(header, **fields).to_bytes() + valid[HEADER_SIZE:]

    return [
        ("empty", b"", "decode header: EOF"),
        ("garbage", b"garbage " * 20, "decode header: unmarshal header: invalid LTX file"),
        ("short header", b"LTX1" + bytes(40), "decode header: unexpected EOF"),
        ("page size", with_header(page_size=1000), "decode header: invalid page size: 1000"),
        ("flags", with_header(flags=2), "decode header: invalid flags: 0x00000002"),
        ("txid order", with_header(min_txid=5), "decode header: transaction ids out of order: (5,3)"),
        (
            "no pre-apply checksum",
            with_header(pre_apply_checksum=0),
            "decode header: pre-apply checksum required on non-snapshot files",
        ),
        ("txid range", with_header(max_txid=1 << 63), f"transaction id out of range: {1 << 63}"),
        ("timestamp range", with_header(timestamp=1 << 62), f"timestamp out of range: {1 << 62}"),
        ("beyond commit", with_header(commit=2), "page number 3 out-of-bounds for commit size 2"),
        ("header changed", with_header(timestamp=5), "close reader: file checksum mismatch"),
        ("trailer", valid[:-8] + bytes(8), "close reader: file checksum mismatch"),
        ("not lz4", valid[:HEADER_SIZE] + bytes(30), "decode page 0: lz4: bad magic number"),
    ]


@both_stores
async def test_malformed_body_is_ebadltx(
    server: Server, client: Client, seeded: tuple[Model, ServerState]
) -> None:
    model, before = seeded
    valid, after = incremental(model, {p: page(p, 4) for p in (1, 2, 3)})
    for case, body, message in malformed(valid):
        reply = await post_tx(client, body)
        assert reply.status == 400, (case, reply.body)
        error(reply, 400, "EBADLTX", message)
    await assert_unchanged(server, client, before)
    accepted(await post_tx(client, valid))
    await assert_model(server, client, {"db": after})


@both_stores
async def test_truncated_body(server: Server, client: Client, seeded: tuple[Model, ServerState]) -> None:
    model, before = seeded
    body, after = incremental(model, {p: noise(p) for p in (1, 3)})
    for cut, message in [
        (1, "decode header: unexpected EOF"),
        (HEADER_SIZE - 1, "decode header: unexpected EOF"),
        (HEADER_SIZE, "close reader: cannot close, expected page"),
        # The LZ4 frame descriptor is 7 bytes: the input ends where the first block size would start,
        # which the reference reads as the end of the frame (ltx-handmade fixtures, truncation cases).
        (HEADER_SIZE + 7, "close reader: cannot close, expected page"),
        (HEADER_SIZE + 9, "decode page 0: unexpected EOF"),
        (len(body) // 2, "decode page 0: unexpected EOF"),
        (len(body) - TRAILER_SIZE - 2, "decode page 2: expected lz4 end frame"),  # in the frame checksum
        (len(body) - TRAILER_SIZE, "close reader: EOF"),
        (len(body) - 1, "close reader: unexpected EOF"),
    ]:
        error(await post_tx(client, body[:cut]), 400, "EBADLTX", message)
    await assert_unchanged(server, client, before)
    accepted(await post_tx(client, body))
    await assert_model(server, client, {"db": after})


@both_stores
async def test_page_size_mismatch(server: Server, client: Client, seeded: tuple[Model, ServerState]) -> None:
    model, before = seeded
    body, _ = incremental(model, {1: page(1, 1, 8192)}, page_size=8192)
    error(await post_tx(client, body), 422, "EBADHEADER", "page size mismatch")
    await assert_unchanged(server, client, before)


@both_stores
async def test_wrong_post_apply_checksum(
    server: Server, client: Client, seeded: tuple[Model, ServerState]
) -> None:
    model, before = seeded
    _, good = incremental(model, {3: page(3, 1)})
    wrong = good.checksum ^ 0xFF
    body, _ = incremental(model, {3: page(3, 1)}, post_apply_checksum=wrong)
    error(
        await post_tx(client, body),
        400,
        "EBADCHECKSUM",
        f"incorrect post-apply checksum of {wrong:016x}, expected {good.checksum:016x}",
    )
    await assert_unchanged(server, client, before)


@both_stores
async def test_wrong_snapshot_checksum(
    server: Server, client: Client, seeded: tuple[Model, ServerState]
) -> None:
    _, before = seeded
    _, model = snapshot(4)
    body, _ = snapshot(4, post_apply_checksum=model.checksum ^ 0xFF)
    data = error(await post_tx(client, body, "other"), 400, "EBADCHECKSUM")
    assert f"{model.checksum ^ 0xFF:016x}" in data["error"] and f"{model.checksum:016x}" in data["error"]
    await assert_unchanged(server, client, before)  # "other" was not created


@both_stores
async def test_position_mismatch(server: Server, client: Client, seeded: tuple[Model, ServerState]) -> None:
    model, before = seeded
    change = {1: page(1, 5)}
    for body in [
        incremental(model, change, pre_apply_checksum=model.checksum ^ 0xFF)[0],
        incremental(model, change, min_txid=model.txid + 2, max_txid=model.txid + 2)[0],  # a gap
        incremental(model, change, min_txid=model.txid, max_txid=model.txid + 1)[0],  # an overlap
        snapshot(3, txid=model.txid + 1)[0],
    ]:
        data = error(await post_tx(client, body), 409, "EPOSMISMATCH", "position mismatch")
        assert set(data) == {"code", "error", "pos"}
        assert data["pos"] == model.pos
    await assert_unchanged(server, client, before)


@both_stores
async def test_incremental_for_unknown_database(
    server: Server, client: Client, seeded: tuple[Model, ServerState]
) -> None:
    model, before = seeded
    body, _ = incremental(model, {1: page(1, 5)})
    data = error(await post_tx(client, body, "unknown"), 409, "EPOSMISMATCH", "position mismatch")
    assert data["pos"] == ZERO_POS
    await assert_unchanged(server, client, before)


@both_stores
async def test_missing_pages(server: Server, client: Client, seeded: tuple[Model, ServerState]) -> None:
    model, before = seeded
    body, _ = incremental(model, {4: page(4)}, commit=6)
    error(
        await post_tx(client, body),
        400,
        "EMISSINGPAGES",
        "database extend without all pages, expected 3 new pages, found 1 pages",
    )
    await assert_unchanged(server, client, before)


async def test_page_checksums_of_large_and_sparse_transactions(server: Server, client: Client) -> None:
    """Page checksums are read and written many rows per statement: a snapshot and a rewrite larger than
    one statement's share, and a few pages far apart, each verified against the stored checksums."""
    body, model = snapshot(700)
    accepted(await post_tx(client, body))
    for changes in (
        {1: page(1, 1), 350: page(350, 1), 700: page(700, 1)},  # sparse
        {p: page(p, 2) for p in range(50, 651)},  # dense, several statements
        {2: page(2, 3), 699: noise(699)},
    ):
        body, model = incremental(model, changes)
        accepted(await post_tx(client, body))
    body, _ = incremental(model, {3: page(3, 4), 600: page(600, 4)}, post_apply_checksum=model.checksum)
    error(await post_tx(client, body), 400, "EBADCHECKSUM")
    await assert_model(server, client, {"db": model})


@both_stores
async def test_concurrent_writes_from_one_position(
    server: Server, client: Client, seeded: tuple[Model, ServerState]
) -> None:
    model, _ = seeded
    (body_a, model_a), (body_b, model_b) = (
        incremental(model, {1: page(1, 7)}),
        incremental(model, {3: page(3, 7)}),
    )
    replies = await asyncio.gather(post_tx(client, body_a), post_tx(client, body_b))
    assert sorted(r.status for r in replies) == [200, 409]
    winner = model_a if replies[0].status == 200 else model_b
    accepted(next(r for r in replies if r.status == 200))
    loser = error(next(r for r in replies if r.status == 409), 409, "EPOSMISMATCH")
    assert loser["pos"] == winner.pos
    assert list(server.store.tmp_dir.iterdir()) == []
    await assert_model(server, client, {"db": winner})


@pytest.mark.parametrize("valid", [True, False], ids=["recorded", "refused"])
async def test_cancelled_write_is_recorded_or_leaves_nothing(
    server: Server, client: Client, seeded: tuple[Model, ServerState], valid: bool
) -> None:
    """A write whose caller goes away while its L0 file is being placed still ends one way: recorded
    with its file, or (refused: a wrong pre-apply checksum) neither."""
    model, before = seeded
    body, after = incremental(model, {2: page(2, 3)}, **({} if valid else {"pre_apply_checksum": FLAG | 1}))
    write = asyncio.ensure_future(server.store.write_tx("test", "db", body))
    await asyncio.sleep(0)  # verified; its file is placed and recorded by a shielded task
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    async with asyncio.timeout(10), server.store.locks("test", "db").files:
        pass  # held by the placing and recording, which went on without the caller
    if valid:
        await assert_model(server, client, {"db": after})
    else:
        await assert_unchanged(server, client, before)
    assert await indexed_files(server) == await stored_files(server)


async def test_a_file_already_in_place_wins(
    server: Server, client: Client, seeded: tuple[Model, ServerState]
) -> None:
    """A file at the L0 path of the incoming transactions (another request placing the same TXIDs) is
    never overwritten: the newcomer gets 409 with the current position, and the file stays as it was."""
    model, before = seeded
    body, _ = incremental(model, {2: page(2, 3)})
    header = Header.from_bytes(body[:HEADER_SIZE])
    held = server.store.l0_dir / "test" / "db" / header.filename
    held.write_bytes(b"another request's file")
    data = error(await post_tx(client, body), 409, "EPOSMISMATCH", "position mismatch")
    assert data["pos"] == model.pos
    assert held.read_bytes() == b"another request's file"
    held.unlink()
    await assert_unchanged(server, client, before)
    accepted(await post_tx(client, body))  # once that request is gone, the same body goes in


async def test_a_failed_sync_refuses_the_write_and_removes_its_file(
    server: Server, client: Client, seeded: tuple[Model, ServerState]
) -> None:
    """When the L0 files of a group commit cannot be made durable (here the disk is full), the write is
    refused (507), nothing is recorded and its file is gone; once the disk is fine, the same body goes in."""
    model, before = seeded
    body, after = incremental(model, {2: page(2, 3)})
    await in_writer(server, fail_file_syncs, errno.ENOSPC)
    error(await post_tx(client, body), 507, "ENOSPACE")
    await assert_unchanged(server, client, before)  # its L0 file included
    await in_writer(server, fail_file_syncs, 0)
    accepted(await post_tx(client, body))
    await assert_model(server, client, {"db": after})


async def test_stalled_body_still_succeeds(
    server: Server, client: Client, seeded: tuple[Model, ServerState]
) -> None:
    model, _ = seeded
    body, after = incremental(model, {2: page(2, 3)})

    async def stalling() -> AsyncIterator[bytes]:
        yield body[:HEADER_SIZE]
        await asyncio.sleep(1.0)
        yield body[HEADER_SIZE:]

    accepted(await post_tx(client, stalling()))
    await assert_model(server, client, {"db": after})


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_too_large(start_server: Callable[..., object], chunked: bool) -> None:
    server: Server = await start_server(LFSB_MAX_TX_BYTES="16KiB")  # type: ignore[assignment]
    client = Client(server.url)
    try:
        model = await seed(client)
        before = await server_state(server, client)
        body, _ = incremental(model, {p: noise(p) for p in range(4, 12)}, commit=11)
        assert len(body) > 16 * 1024

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 4096):
                yield body[i : i + 4096]

        reply = await post_tx(client, chunks() if chunked else body)
        error(reply, 413, "ETOOLARGE", "request body larger than 16384 bytes")
        await assert_unchanged(server, client, before)
        small, after = incremental(model, {1: page(1, 4)})
        accepted(await post_tx(client, small))
        await assert_model(server, client, {"db": after})
    finally:
        await client.close()


# -- authorization and cluster names ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer x",
        "cluster",
        "cluster  test",
        "cluster a b",
        "FlyV1 fm2_x",
        "",
        "clustertest",
    ],
)
async def test_invalid_authorization(client: Client, authorization: str) -> None:
    reply = await client.fetch("GET", "/pos", headers={"Authorization": authorization})
    message = "authorization header invalid format" if authorization else MISSING_AUTHORIZATION
    error(reply, 401, "EUNAUTHORIZED", message)


MISSING_AUTHORIZATION = "authorization required: send a token in the Authorization header"


async def test_missing_authorization(client: Client) -> None:
    for method, path in [("GET", "/pos"), ("POST", "/db/tx?db=db")]:
        async with client.session.request(method, client.url + path) as resp:
            reply = Reply(resp.status, await resp.json(), await resp.read(), resp.headers)
        error(reply, 401, "EUNAUTHORIZED", MISSING_AUTHORIZATION)
    # A path no route serves is a 404 whoever asks: it tells nothing about clusters or databases.
    async with client.session.request("GET", client.url + "/no/such/route") as resp:
        reply = Reply(resp.status, await resp.json(), await resp.read(), resp.headers)
    error(reply, 404, "ENOTFOUND")


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        (".x", "cluster invalid"),
        ("a" * 33, "cluster invalid"),
        ("a/b", "cluster invalid"),
        ("a:b", "cluster invalid"),
        ("é", "cluster invalid"),
    ],
)
async def test_invalid_cluster_name(client: Client, cluster: str, message: str) -> None:
    reply = await client.fetch("GET", "/pos", headers={"Authorization": f"cluster {cluster}"})
    error(reply, 400, "EBADCLUSTER", message)


async def test_cluster_name_limits_and_case(client: Client) -> None:
    for authorization in ["cluster " + "a" * 32, "CLUSTER x.y-z_0", "Cluster a..b"]:
        reply = await client.fetch("GET", "/pos", headers={"Authorization": authorization})
        assert (reply.status, reply.data) == (200, {}), authorization


# -- database names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "route"), [*DB_ROUTES, ("DELETE", "/db/")])
async def test_invalid_database_name(server: Server, client: Client, method: str, route: str) -> None:
    before = await server_state(server, client)
    for query, message in [
        ("", "database required"),
        ("?db=", "database required"),
        ("?other=x", "database required"),
        ("?db=.x", 'invalid database name: ".x"'),
        ("?db=a%2Fb", 'invalid database name: "a/b"'),
        ("?db=a%20b", 'invalid database name: "a b"'),
        ("?db=..", 'invalid database name: ".."'),
        ("?db=" + "d" * (MAX_DATABASE_NAME + 1), 'invalid database name: "' + "d" * 64 + '…"'),
    ]:
        reply = await client.fetch(method, route + query, data=b"x")
        error(reply, 400, "EBADDB", message)
    # The longest valid name: the database just does not exist.
    if (method, route) in [("GET", "/db/snapshot"), ("GET", "/db/info"), ("DELETE", "/db")]:
        reply = await client.fetch(method, f"{route}?db={'d' * MAX_DATABASE_NAME}")
        error(reply, 404, "ENODB", "database not found")
    await assert_unchanged(server, client, before)


async def test_storage_errors_are_503_with_retry_after(
    server: Server, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Object storage failing under a request is a 503 ``ESTORAGE`` with Retry-After (the client tries
    again later), never a 500, and the refused request changes nothing."""
    body, model = snapshot(3)
    accepted(await post_tx(client, body))
    before = await assert_model(server, client, {"db": model})

    async def unavailable(*args: object) -> None:
        raise StorageError("connection refused")

    monkeypatch.setattr(server.store.objects, "list_levels", unavailable)
    monkeypatch.setattr(server.store.objects, "upload", unavailable)  # a delete uploads L0 first
    reply = await client.fetch("DELETE", "/db?db=db")
    error(reply, 503, "ESTORAGE", "object storage unavailable: connection refused")
    assert reply.headers["Retry-After"] == str(server_app.RETRY_AFTER)
    monkeypatch.undo()
    await assert_unchanged(server, client, before)


# -- cluster ID pinning -------------------------------------------------------------------------------------
async def test_cluster_id_pinned_until_reset(server: Server, client: Client) -> None:
    first, second = (
        {"Litefs-Cluster-Id": "LFSC0000000000000001"},
        {"Litefs-Cluster-Id": "LFSC0000000000000002"},
    )
    body, model = snapshot(3)
    accepted(await post_tx(client, body, headers=first))
    before = await assert_model(server, client, {"db": model})

    body, after = incremental(model, {1: page(1, 1)})
    message = (
        "cluster 'test' is pinned to another LiteFS cluster ID"
        " (run `lfsb cluster reset-id` if the cluster was re-created)"
    )
    error(await post_tx(client, body, headers=second), 422, "ECLUSTERID", message)
    error(await client.fetch("GET", "/pos", headers=second), 422, "ECLUSTERID", message)
    error(await client.fetch("POST", "/cluster/reset-id", headers=second), 422, "ECLUSTERID", message)
    await assert_unchanged(server, client, before)
    # Other clusters are not affected, and the same ID keeps working.
    other = await client.fetch("GET", "/pos", headers={**second, "Authorization": "cluster other"})
    assert (other.status, other.data) == (200, {})
    accepted(await post_tx(client, body, headers=first))

    reply = await client.fetch("POST", "/cluster/reset-id")
    assert (reply.status, reply.data) == (200, {"cluster": "test", "wasPinned": True})  # the ID is not echoed
    body, after = incremental(after, {2: page(2, 2)})
    accepted(await post_tx(client, body, headers=second))  # the next ID seen is pinned
    error(await client.fetch("GET", "/pos", headers=first), 422, "ECLUSTERID")
    await assert_model(server, client, {"db": after})


# -- routes, methods and query parameters -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("GET", "/pos/"), ("GET", "/clusters"), ("GET", "/hwm"), ("POST", "/db/tx/")],
)
async def test_unknown_route(client: Client, method: str, path: str) -> None:
    reply = await client.fetch(method, path)
    error(reply, 404, "ENOTFOUND", f"not found: {method} {path}")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/pos", "GET"),
        ("GET", "/db/tx", "POST"),
        ("PUT", "/db/snapshot", "GET"),
        ("HEAD", "/pos", "GET"),
        ("GET", "/cluster/reset-id", "POST"),
        ("GET", "/db", "DELETE"),
    ],
)
async def test_wrong_method(client: Client, method: str, path: str, allow: str) -> None:
    reply = await client.fetch(method, path + "?db=db")
    if method == "HEAD":
        assert (reply.status, reply.body) == (405, b"")
    else:
        error(reply, 405, "EMETHOD", f"method not allowed: {method} {path}")
    assert reply.headers["Allow"] == allow


async def test_snapshot_format(client: Client, seeded: tuple[Model, ServerState]) -> None:
    for fmt in ["zip", "LTX", "sqlite3"]:
        error(
            await client.fetch("GET", f"/db/snapshot?db=db&format={fmt}"),
            400,
            "EBADFORMAT",
            "unsupported snapshot format",
        )
    # The database is looked up first (upstream's order).
    reply = await client.fetch("GET", "/db/snapshot?db=missing&format=zip")
    error(reply, 404, "ENODB", "database not found")


TARGET_ERRORS = [
    ("txid=zz", "invalid txid: 'zz' (expected 16 hex digits)"),
    ("txid=000000000000001", "invalid txid: '000000000000001' (expected 16 hex digits)"),
    ("txid=0x00000000000001", "invalid txid: '0x00000000000001' (expected 16 hex digits)"),
    ("txid=-000000000000001", "invalid txid: '-000000000000001' (expected 16 hex digits)"),
    (
        "timestamp=2024-06-08T12:22:39",
        'invalid timestamp "2024-06-08T12:22:39": expected RFC 3339 with a zone, e.g. 2024-06-08T12:22:39Z',
    ),
    (
        "timestamp=2024-06-08 12:22:39Z",
        'invalid timestamp "2024-06-08 12:22:39Z": expected RFC 3339 with a zone, e.g. 2024-06-08T12:22:39Z',
    ),
    ("txid=0000000000000001&timestamp=2024-06-08T12:22:39Z", "can't specify both 'txid' and 'timestamp'"),
]


MISSING_TARGET = [("", "'txid' or 'timestamp' required")]


@pytest.mark.parametrize(
    ("method", "route", "required"),
    [("POST", "/db/restore", True), ("GET", "/db/restore/check", True), ("GET", "/db/snapshot", False)],
)
async def test_target_validation(
    server: Server, client: Client, seeded: tuple[Model, ServerState], method: str, route: str, required: bool
) -> None:
    cases = [*TARGET_ERRORS, *(MISSING_TARGET if required else [])]
    # restore and restore/check validate the query before looking the database up (upstream's order);
    # /db/snapshot looks it up first.
    for name in ["db", "missing"] if required else ["db"]:
        for query, message in cases:
            reply = await client.fetch(method, f"{route}?db={name}&{query}")
            error(reply, 400, "EBADINPUT", message)
    await assert_unchanged(server, client, seeded[1])


async def test_txid_zero_is_the_current_state(
    server: Server, client: Client, seeded: tuple[Model, ServerState]
) -> None:
    """``txid=0000000000000000`` names the current state on every route that takes a point."""
    current = (await client.fetch("GET", "/pos")).data["db"]["TXID"]
    check = await client.fetch("GET", "/db/restore/check?db=db&txid=0000000000000000")
    assert (check.status, check.data["txID"]) == (200, current)
    zero = await client.fetch("GET", "/db/snapshot?db=db&txid=0000000000000000")
    now = await client.fetch("GET", "/db/snapshot?db=db")
    assert zero.status == now.status == 200 and zero.body == now.body
    await assert_unchanged(server, client, seeded[1])


async def test_info_all_flag(client: Client, seeded: tuple[Model, ServerState]) -> None:
    error(
        await client.fetch("GET", "/db/info?db=db&all=maybe"),
        400,
        "EBADINPUT",
        "invalid all: 'maybe' (expected true or false)",
    )
    for flag in ["", "=true", "=1", "=false", "=0"]:
        reply = await client.fetch("GET", f"/db/info?db=db&all{flag}")
        assert (reply.status, reply.data["name"]) == (200, "db")
