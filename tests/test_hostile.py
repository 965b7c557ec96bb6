"""Hostile HTTP and command-line input: the server and the CLI stay clear, bounded and harmless.

Bodies over the size limit (chunked, or with a Content-Length that lies), bodies that stall (slow loris)
or are abandoned half-way, path and name tricks (``..``, slashes, NUL and control characters, 10 KB names,
non-UTF-8 bytes) in the database name, the cluster name and the cluster ID, odd query values on every
endpoint, methods that are not allowed, and malformed ``lfsb`` command lines. Every answer is a clear 4xx,
JSON from lfsb (a plain 400 from aiohttp's HTTP parser for a request it cannot parse at all), within a
bounded time; nothing changes: positions, contents and the data directory's files stay as they were, no
temp file is left, and the CLI ends with ``Error:``/usage text and a non-zero status, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import resource
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from lfsb.ltx import HEADER_SIZE, Header
from lfsb.server import app as server_app
from lfsb.server import connections
from lfsb.server.main import Server
from tests.conftest import FIXTURES
from tests.lfsb_server import (
    DB_ROUTES,
    Client,
    ServerState,
    assert_unchanged,
    data_files,
    lfsb,
    server_state,
)
from tests.litefs import LiteFSEmulator

RESPONSE_TIMEOUT = 10.0
"""Seconds any answer may take: longer is a hang."""

ROUTES = [("GET", "/pos"), *DB_ROUTES, ("POST", "/cluster/reset-id")]
BODY_ROUTES = ["/db/tx", "/db/upload"]


@pytest.fixture
def storage_env() -> dict[str, str]:
    """The local-directory store: nothing here reaches object storage."""
    return {}


@pytest.fixture
async def seeded(server: Server, client: Client, tmp_path: Path) -> ServerState:
    """Database ``db`` with a few transactions (some compacted into L1), written by a LiteFS node; the
    server's state then."""
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        for i in range(3):
            node.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            await node.sync()
    assert await server.scheduler.run(1) >= 1
    return await server_state(server, client)


@pytest.fixture
async def snapshot(client: Client, seeded: ServerState) -> bytes:
    """A valid LTX snapshot of ``db`` (what LiteFS would send for a new database)."""
    status, _, body = await client.request("GET", "/db/snapshot?db=db")
    assert status == 200
    return body


# -- raw HTTP -----------------------------------------------------------------------------------------------
class RawReply(NamedTuple):
    """A response read off the socket: status, headers (lower-case names), body, and seconds it took."""

    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    @property
    def data(self) -> Any:
        """The JSON body (None if it is not JSON)."""
        if self.headers.get("content-type", "").startswith("application/json"):
            return json.loads(self.body)
        return None


def head(method: str, target: str, *headers: bytes, auth: bytes = b"cluster test") -> bytes:
    """A request line and headers as raw bytes (``Authorization: <auth>`` first), up to the blank line."""
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: lfsb", b"Authorization: " + auth, *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``b""``: the last one)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def exchange(server: Server, *parts: bytes | float) -> RawReply:
    """Send ``parts`` on a new connection (a float pauses that many seconds) and read the response, which may
    come before everything is sent; the sending stops then."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            for part in parts:
                if isinstance(part, float):
                    await asyncio.sleep(part)
                else:
                    writer.write(part)
                    await writer.drain()

    sender = asyncio.create_task(send())
    start = time.monotonic()
    try:
        async with asyncio.timeout(RESPONSE_TIMEOUT):
            status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines if line)}
            length = headers.get("content-length")
            body = await (reader.readexactly(int(length)) if length is not None else reader.read())
    finally:
        sender.cancel()
        writer.close()
    return RawReply(int(status_line.split()[1]), headers, body, time.monotonic() - start)


def halves(target: str, body: bytes, chunked: bool) -> tuple[bytes, bytes]:
    """A POST of ``body`` to ``target`` (with a Content-Length, or chunked) in two pieces: the head and the
    first half of the body, then the rest."""
    half = len(body) // 2
    if chunked:
        start = head("POST", target, b"Transfer-Encoding: chunked") + chunk(body[:half])
        return start, chunk(body[half:]) + chunk(b"")
    return head("POST", target, f"Content-Length: {len(body)}".encode()) + body[:half], body[half:]


def lfsb_error(reply: RawReply, status: int, code: str, message: str | None = None) -> str:
    """Check a JSON error from lfsb (status, code, optional message); returns the message."""
    assert (reply.status, reply.data and reply.data["code"]) == (status, code), reply
    assert message is None or reply.data["error"] == message, reply
    return reply.data["error"]


def parser_error(reply: RawReply) -> None:
    """Check aiohttp's answer to a request its HTTP parser refused: a plain-text 400."""
    assert reply.status == 400 and reply.headers["content-type"].startswith("text/plain"), reply


# -- oversized, stalled and abandoned bodies ----------------------------------------------------------------
@pytest.mark.parametrize("route", BODY_ROUTES)
async def test_endless_chunked_body_is_refused_early(start_server: Callable[..., Any], route: str) -> None:
    """A chunked body that would go on for 10 s gets 413 as soon as it passes the limit."""
    server: Server = await start_server(LFSB_MAX_TX_BYTES="64KiB")
    before = data_files(server)
    start = head("POST", f"{route}?db=db", b"Transfer-Encoding: chunked")
    reply = await exchange(server, start, *[chunk(b"\xa5" * 16384), 0.01] * 1000)
    lfsb_error(reply, 413, "ETOOLARGE", "request body larger than 65536 bytes")
    assert reply.elapsed < 5
    assert (data_files(server), list(server.store.tmp_dir.iterdir())) == (before, [])


@pytest.mark.parametrize("route", BODY_ROUTES)
async def test_lying_content_length(
    server: Server, client: Client, seeded: ServerState, snapshot: bytes, route: str
) -> None:
    """A Content-Length far over the limit is refused before any body; one shorter than the body sent makes
    lfsb read only that much (a 400) and the rest is an unparseable next request; neither writes anything."""
    target = f"{route}?db=new"
    reply = await exchange(server, head("POST", target, b"Content-Length: 1099511627776"), b"LTX1", 30.0)
    lfsb_error(reply, 413, "ETOOLARGE")
    assert reply.elapsed < 5
    reply = await exchange(server, head("POST", target, b"Content-Length: 200"), snapshot * 20)
    assert reply.status == 400, reply  # EBADLTX, or aiohttp's parser refusing the bytes after the 200th
    for length in [b"-1", b"1e3", b"99999999999999999999999", b"10, 20"]:
        parser_error(await exchange(server, head("POST", target, b"Content-Length: " + length), snapshot))
    both = (b"Content-Length: 10", b"Transfer-Encoding: chunked")
    parser_error(await exchange(server, head("POST", target, *both), chunk(snapshot), chunk(b"")))
    await assert_unchanged(server, client, seeded)


@pytest.mark.parametrize("route", BODY_ROUTES)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_stalled_body_times_out(
    server: Server,
    client: Client,
    seeded: ServerState,
    snapshot: bytes,
    monkeypatch: pytest.MonkeyPatch,
    route: str,
    chunked: bool,
) -> None:
    """Slow loris: a body that stalls for longer than the idle timeout gets 400 ``ETIMEOUT`` at the timeout,
    not when (if ever) the client goes on."""
    monkeypatch.setattr(server_app, "BODY_IDLE_TIMEOUT", 0.5)
    first, rest = halves(f"{route}?db=new", snapshot, chunked)
    reply = await exchange(server, first, 5.0, rest)
    lfsb_error(reply, 400, "ETIMEOUT", "request body stalled")
    assert 0.5 <= reply.elapsed < 3
    await assert_unchanged(server, client, seeded)


@pytest.mark.parametrize("route", BODY_ROUTES)
async def test_trickled_body_is_cut_at_the_minimum_rate(
    server: Server, client: Client, seeded: ServerState, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    """A body that never stalls for long but trickles in under the minimum rate is cut once it falls behind
    (the idle timeout alone would let 1 byte every few seconds hold the request forever)."""
    monkeypatch.setattr(server_app, "BODY_GRACE", 0.5)
    monkeypatch.setattr(server_app, "MIN_BODY_RATE", 1000)
    start = head("POST", f"{route}?db=new", b"Transfer-Encoding: chunked")
    reply = await exchange(server, start, *[chunk(b"\xa5" * 10), 0.1] * 100)  # 100 bytes/s for 10 s
    lfsb_error(reply, 400, "ETIMEOUT", "request body too slow (under 1000 bytes/s)")
    assert reply.elapsed < 5
    await assert_unchanged(server, client, seeded)


async def test_bodies_received_at_once_are_capped(
    server: Server, client: Client, seeded: ServerState, snapshot: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``MAX_BODIES`` bodies in flight, another request is a 503 ``EBUSY`` with Retry-After, at once;
    the one in flight is not disturbed."""
    monkeypatch.setattr(server_app, "MAX_BODIES", 1)
    bodies = server._app[server_app.BODIES_KEY]
    first, rest = halves("/db/tx?db=new", snapshot, chunked=True)
    held = asyncio.create_task(exchange(server, first, 1.0, rest))
    async with asyncio.timeout(RESPONSE_TIMEOUT):
        while bodies.count == 0:
            await asyncio.sleep(0.01)
    length = f"Content-Length: {len(snapshot)}".encode()
    reply = await exchange(server, head("POST", "/db/tx?db=other", length), snapshot)
    lfsb_error(reply, 503, "EBUSY", "1 request bodies are being received, the most allowed")
    assert reply.headers["retry-after"] == str(server_app.RETRY_AFTER)
    assert (await held).status == 200
    assert (bodies.count, bodies.buffered) == (0, 0)
    positions = (await client.request("GET", "/pos"))[1]
    assert "new" in positions and "other" not in positions


async def test_bodies_spill_to_disk_once_memory_is_held(
    server: Server, client: Client, seeded: ServerState, snapshot: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While all bodies together hold ``BODY_MEMORY``, even a small one goes through a temp file at once,
    and is stored the same."""
    monkeypatch.setattr(server_app, "BODY_MEMORY", 0)
    spilled: list[str] = []
    temp_path = server.store.temp_path
    monkeypatch.setattr(server.store, "temp_path", lambda prefix: spilled.append(prefix) or temp_path(prefix))
    reply = await client.fetch("POST", "/db/tx?db=new", data=snapshot)
    assert reply.status == 200 and spilled == ["body"]
    assert server._app[server_app.BODIES_KEY].buffered == 0
    assert (await client.request("GET", "/pos"))[1]["new"] == seeded.positions["db"]


@pytest.mark.parametrize("route", BODY_ROUTES)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_client_gone_mid_body(
    server: Server,
    client: Client,
    seeded: ServerState,
    snapshot: bytes,
    caplog: pytest.LogCaptureFixture,
    route: str,
    chunked: bool,
) -> None:
    """A client that disconnects half-way through its body: no temp file, nothing written, no error logged
    (a disconnect is the client's business: one info line, no traceback)."""
    caplog.set_level(logging.INFO)
    first, _ = halves(f"{route}?db=new", snapshot, chunked)
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(first)
    await writer.drain()
    writer.close()
    async with asyncio.timeout(RESPONSE_TIMEOUT):
        while not any(r.getMessage().startswith("client disconnected") for r in caplog.records):
            await asyncio.sleep(0.01)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    await assert_unchanged(server, client, seeded)


# -- names and paths ----------------------------------------------------------------------------------------
BAD_DATABASE_NAMES = [
    "..%2Fx",
    "%2E%2E",
    ".%2E%2Fl0",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "a%5Cb",
    "C:x",
    "~",
    "%00",
    "a%00b",
    "db%00.ltx",
    "%0A",
    "a%0D%0Ab",
    "%09",
    "%7F",
    "%1B%5B31m",
    "%C3%A9",
    "%E6%97%A5%E6%9C%AC",
    "%F0%9F%92%A9",
    "%EF%BC%8E%EF%BC%8E",
    "%ED%A0%80",
    "%FF%FE",
    "%ZZ",
    "a+b",
    "x" * 4000,
    "d" * 256,
    ".hidden",
    "-x",
    "--help",
]


@pytest.mark.parametrize(("method", "route"), DB_ROUTES)
async def test_bad_database_names(
    server: Server, client: Client, seeded: ServerState, snapshot: bytes, method: str, route: str
) -> None:
    """Traversal, separators, NUL and control characters, non-ASCII and undecodable escapes, names too long,
    a leading dot: 400 ``EBADDB`` with a bounded message on every ``/db`` route, and nothing created."""
    for name in BAD_DATABASE_NAMES:
        reply = await exchange(
            server, head(method, f"{route}?db={name}", b"Content-Length: 100"), snapshot[:100]
        )
        message = lfsb_error(reply, 400, "EBADDB")
        assert message.startswith("invalid database name: ") and len(message) < 400, message
    # A repeated parameter is refused, whichever value would have counted.
    for query in ("db=..%2Fx&db=db", "db=db&db=db"):
        reply = await exchange(server, head(method, f"{route}?{query}", b"Content-Length: 0"))
        lfsb_error(reply, 400, "EBADINPUT", "repeated query parameter: 'db'")
    await assert_unchanged(server, client, seeded)


async def test_odd_valid_database_names_stay_in_their_directory(
    server: Server, client: Client, seeded: ServerState, snapshot: bytes
) -> None:
    """Names that are valid however odd they look are one directory under ``l0/<cluster>``, nowhere else."""
    names = ["a..b", "x-", "_", "x.", "A-Z_0.9", "d" * 255]
    for name in names:
        reply = await client.fetch("POST", f"/db/tx?db={name}", data=snapshot)
        assert reply.status == 200, reply
    filename = Header.from_bytes(snapshot[:HEADER_SIZE]).filename
    created = {f"l0/test/{name}{suffix}" for name in names for suffix in ["", f"/{filename}"]}
    assert data_files(server) - seeded.files == created
    assert sorted((await client.request("GET", "/pos"))[1]) == sorted(["db", *names])


async def test_names_differing_only_in_case_are_refused(
    server: Server, client: Client, seeded: ServerState, snapshot: bytes
) -> None:
    """A new database named like an existing one but for case, or in a cluster named so, is a 409: on a
    case-insensitive file system (macOS) the two would share a directory. Existing names keep working."""
    length = f"Content-Length: {len(snapshot)}".encode()
    reply = await exchange(server, head("POST", "/db/tx?db=DB", length), snapshot)
    lfsb_error(
        reply, 409, "ENAMECONFLICT", "database name 'DB' differs only in case from the existing database 'db'"
    )
    reply = await exchange(server, head("POST", "/db/tx?db=new", length, auth=b"cluster TEST"), snapshot)
    lfsb_error(reply, 409, "ENAMECONFLICT", "cluster name differs only in case from an existing cluster")
    await assert_unchanged(server, client, seeded)
    reply = await exchange(server, head("POST", "/db/tx?db=other", length), snapshot)  # a new name: fine
    assert reply.status == 200, reply


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        (b"cluster ../x", "EBADCLUSTER"),
        (b"cluster ..", "EBADCLUSTER"),
        (b"cluster a\\b", "EBADCLUSTER"),
        (b"cluster %2e%2e", "EBADCLUSTER"),
        (b"cluster \xc3\xa9", "EBADCLUSTER"),
        (b"cluster -c", "EBADCLUSTER"),
        (b"cluster \xff\xfe", "EBADCLUSTER"),
        (b"cluster " + b"c" * 5000, "EBADCLUSTER"),
        (b"cluster\ttest", "EUNAUTHORIZED"),
        (b"cluster test\xa0", "EBADCLUSTER"),
        (b"cluster " + b"c" * 10000, None),
        (b"cluster a\x00b", None),
        (b"cluster a\x01b", None),
        (b"cluster a\x7fb", None),
    ],
    ids=lambda v: repr(v[:24]) if isinstance(v, bytes) else str(v),
)
async def test_bad_cluster_names(
    server: Server, client: Client, seeded: ServerState, snapshot: bytes, auth: bytes, code: str | None
) -> None:
    """In the Authorization header: a 400/401 from lfsb (``None``: from aiohttp's parser), nothing written."""
    length = f"Content-Length: {len(snapshot)}".encode()
    reply = await exchange(server, head("POST", "/db/tx?db=new", length, auth=auth), snapshot)
    if code is None:
        parser_error(reply)
    else:
        lfsb_error(reply, 401 if code == "EUNAUTHORIZED" else 400, code)
    await assert_unchanged(server, client, seeded)


async def test_bad_cluster_ids(server: Server, client: Client, seeded: ServerState) -> None:
    """A Litefs-Cluster-Id that is not 1-64 printable ASCII characters is refused and never pinned."""
    assert (await client.request("POST", "/cluster/reset-id"))[0] == 200  # unpin the LiteFS node's ID
    for cluster_id in [b"\xff\xfe", b"LFSC\xc3\xa9", b"LFSC 0123", b"x" * 65, b"\"'<>" * 20]:
        reply = await exchange(server, head("GET", "/pos", b"Litefs-Cluster-Id: " + cluster_id))
        lfsb_error(reply, 400, "EBADCLUSTERID", "invalid Litefs-Cluster-Id header")
    # Nothing was pinned: the first valid ID is, and it keeps working while another is refused.
    for cluster_id in [b"LFSC0123456789ABCDEF", b"LFSC0123456789ABCDEF"]:
        reply = await exchange(server, head("GET", "/pos", b"Litefs-Cluster-Id: " + cluster_id))
        assert (reply.status, reply.data) == (200, seeded.positions)
    lfsb_error(await exchange(server, head("GET", "/pos", b"Litefs-Cluster-Id: x")), 422, "ECLUSTERID")
    await assert_unchanged(server, client, seeded)


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/db%2Ftx?db=db", 404),
        ("//db/tx?db=db", 404),
        ("/db%2Finfo?db=db", 404),
        ("/db%2finfo?db=db", 404),
        ("//db/info?db=db", 404),
        ("/db/info%00?db=db", 404),
        ("/db/info;x?db=db", 404),
        ("/db/info/..%2F..%2F..%2Fetc%2Fpasswd?db=db", 404),
        ("/db/info/%2e%2e/%2e%2e/server.db", 404),
        ("/l0/test/db", 404),
        ("/server.db", 404),
        ("/db/../pos", 404),
        ("/%2e%2e/pos", 404),
        ("*", 400),
        ("/" + "a" * 9000, 400),
    ],
)
async def test_path_tricks(
    server: Server, client: Client, seeded: ServerState, target: str, status: int
) -> None:
    """Encoded and doubled slashes, dot segments, NUL, data-directory paths: routed as sent, a 404 JSON, never
    resolved against the file system; a request line over 8 KB or ``*``: aiohttp's 400."""
    reply = await exchange(server, head("GET", target))
    if status == 400:
        parser_error(reply)
    else:
        lfsb_error(reply, 404, "ENOTFOUND")
    await assert_unchanged(server, client, seeded)


# -- query values, bodies, methods --------------------------------------------------------------------------
FUTURE_IN_ANOTHER_ZONE = "9999-12-31T23:59:59-23:59"
"""Later than year 9999 once in UTC: past what a datetime holds, still a valid timestamp."""

QUERY_CASES = [
    ("GET", "/db/restore/check?db=db&txid=zz&txid=0000000000000001", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&txid=&timestamp=", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&txid=ffffffffffffffff", 404, "ENOTXID"),
    ("POST", "/db/restore?db=db&txid=ffffffffffffffff", 404, "ENOTXID"),
    ("POST", "/db/restore?db=db&txid=FFFFFFFFFFFFFFFF", 404, "ENOTXID"),
    ("GET", "/db/snapshot?db=db&txid=ffffffffffffffff", 404, "ENOTXID"),
    ("GET", "/db/snapshot?db=db&txid=8000000000000000", 404, "ENOTXID"),
    ("GET", "/db/restore/check?db=db&txid=99999999999999999999", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&txid=%2B000000000000001", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&txid=%20000000000000001", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&txid=" + "%EF%BC%90" * 16, 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&txid=1e400", 400, "EBADINPUT"),
    ("POST", "/db/restore?db=db&txid=%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%01", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&timestamp=0000-01-01T00:00:00Z", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&timestamp=2024-02-30T00:00:00Z", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&timestamp=2024-06-08T12:22:60Z", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&timestamp=2024-06-08T24:00:00Z", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&timestamp=2024-06-08T12:22:39.1234567890Z", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&timestamp=2024-06-08T12:22:39%2B24:00", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&timestamp=2024-06-08T12:22:39z", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&timestamp=1717849359", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&timestamp=now", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&timestamp=%EF%BC%92024-06-08T12:22:39Z", 400, "EBADINPUT"),
    ("POST", "/db/restore?db=db&timestamp=-2024-06-08T12:22:39Z", 400, "EBADINPUT"),
    ("GET", "/db/restore/check?db=db&timestamp=0001-01-01T00:00:00%2B23:59", 404, "ENOTIMESTAMP"),
    ("GET", f"/db/restore/check?db=db&timestamp={FUTURE_IN_ANOTHER_ZONE}", 200, None),
    ("POST", f"/db/restore?db=db&timestamp={FUTURE_IN_ANOTHER_ZONE}", 200, None),  # the current TXID
    ("GET", f"/db/snapshot?db=db&format=sqlite&timestamp={FUTURE_IN_ANOTHER_ZONE}", 200, None),
    ("GET", "/db/snapshot?db=db&format=..%2F..%2Fetc%2Fpasswd", 400, "EBADFORMAT"),
    ("GET", "/db/snapshot?db=db&format=%00", 400, "EBADFORMAT"),
    ("GET", "/db/snapshot?db=db&format=sqlite%00", 400, "EBADFORMAT"),
    ("GET", "/db/snapshot?db=db&format=SQLITE", 400, "EBADFORMAT"),
    ("GET", "/db/snapshot?db=db&format=zip&format=ltx", 400, "EBADINPUT"),
    ("GET", "/db/snapshot?db=db&format=ltx&format=ltx", 400, "EBADINPUT"),
    ("GET", "/pos?a=1&a=1", 400, "EBADINPUT"),
    ("GET", "/db/info?db=db&all=", 200, None),
    ("GET", "/db/info?db=db&all=2", 400, "EBADINPUT"),
    ("GET", "/db/info?db=db&all=true&all=maybe", 400, "EBADINPUT"),
    ("GET", "/pos?db=..%2Fx&txid=zz&format=%00", 200, None),
    ("DELETE", "/db?db=..%2Fx&db=db", 400, "EBADINPUT"),
    ("POST", "/cluster/reset-id?cluster=..%2Fx", 400, "EBADCLUSTER"),  # cluster= names the cluster
]


async def test_odd_query_values(server: Server, client: Client, seeded: ServerState) -> None:
    """Every endpoint, odd values: the expected status, a JSON error for a 4xx, and nothing changed."""
    for method, target, status, code in QUERY_CASES:
        reply = await exchange(server, head(method, target))
        if code is None:
            assert reply.status == status, (target, reply)
        else:
            lfsb_error(reply, status, code)
    await assert_unchanged(server, client, seeded)


@pytest.mark.parametrize(("method", "route"), ROUTES)
async def test_unexpected_bodies(
    server: Server, client: Client, seeded: ServerState, method: str, route: str
) -> None:
    """Invalid JSON and random bytes as the body of every endpoint: ignored where no body is read, a 4xx where
    one is (never a 500), nothing changed."""
    target = f"{route}?db=nosuch" if route.startswith("/db") else route
    for body, content_type in [(b'{"txid": ', b"application/json"), (bytes(range(256)) * 4, b"text/plain")]:
        headers = (b"Content-Type: " + content_type, f"Content-Length: {len(body)}".encode())
        reply = await exchange(server, head(method, target, *headers), body)
        assert reply.status < 500 and (reply.status < 400 or reply.data["code"]), (route, reply)
    await assert_unchanged(server, client, seeded)


async def test_encoded_request_bodies_are_refused(
    server: Server, client: Client, seeded: ServerState, snapshot: bytes
) -> None:
    """A request ``Content-Encoding`` is a 415 before any byte of the body is read: aiohttp would inflate
    it (1 MB of gzip can become 1 GiB on disk), and a malformed one used to be a 500."""
    for route in BODY_ROUTES:
        for encoding, body in [
            (b"gzip", gzip.compress(snapshot)),
            (b"gzip", b"\x1f\x8bnot gzip"),
            (b"br", b"x"),
        ]:
            headers = (b"Content-Encoding: " + encoding, f"Content-Length: {len(body)}".encode())
            reply = await exchange(server, head("POST", f"{route}?db=fresh", *headers), body)
            lfsb_error(
                reply,
                415,
                "EBADENCODING",
                "request Content-Encoding is not supported: send the body unencoded",
            )
    await assert_unchanged(server, client, seeded)


async def test_expect_continue_over_the_limit_is_refused_at_once(
    server: Server, client: Client, seeded: ServerState
) -> None:
    """``Expect: 100-continue`` with a Content-Length over the limit (or an encoding) is answered with the
    refusal itself, never with a 100 that invites a body the server would refuse."""
    over = server.store.config.max_tx_bytes + 1
    for route in BODY_ROUTES:
        cases = [
            ((f"Content-Length: {over}".encode(),), 413, "ETOOLARGE"),
            ((b"Content-Length: 10", b"Content-Encoding: gzip"), 415, "EBADENCODING"),
        ]
        for headers, status, code in cases:
            reply = await exchange(
                server, head("POST", f"{route}?db=fresh", b"Expect: 100-continue", *headers)
            )
            lfsb_error(reply, status, code)
        expect = (b"Expect: teapot", b"Content-Length: 1")
        reply = await exchange(server, head("POST", f"{route}?db=fresh", *expect))
        lfsb_error(reply, 417, "EBADEXPECT", "unsupported Expect header")
    await assert_unchanged(server, client, seeded)


async def test_exports_are_bounded(server: Server, client: Client, seeded: ServerState) -> None:
    """While ``LFSB_MAX_EXPORTS`` exports hold temp space, another is a 503 ``EBUSY`` with Retry-After
    (no temp file made); once one ends, exports work again. LiteFS's writes are never held back by it."""
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(server.config.max_exports):
            await stack.enter_async_context(server.store.export_slot(0))
        for query in ("db=db", "db=db&format=sqlite", "db=db&format=ltx"):
            reply = await exchange(server, head("GET", f"/db/snapshot?{query}"))
            lfsb_error(reply, 503, "EBUSY", "4 exports are running, the most allowed (LFSB_MAX_EXPORTS)")
            assert reply.headers["retry-after"] == str(server_app.RETRY_AFTER)
    await assert_unchanged(server, client, seeded)  # exports work again, and nothing was left behind


async def test_exports_keep_a_disk_reserve_for_ingestion(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """An export that would leave less than ``LFSB_DISK_RESERVE`` free is a 503 ``EBUSY``; ingestion is
    not held back."""
    server = await start_server(LFSB_DISK_RESERVE="1000TiB")
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (v)")
        await node.sync()
        reply = await exchange(server, head("GET", "/db/snapshot?db=db&format=sqlite"))
        lfsb_error(reply, 503, "EBUSY")
        assert "LFSB_DISK_RESERVE" in reply.data["error"]
        node.execute("INSERT INTO t VALUES (1)")
        assert await node.sync() == node.pos
    assert list(server.store.tmp_dir.iterdir()) == []


async def test_repeated_authorization_is_refused(server: Server, client: Client, seeded: ServerState) -> None:
    """Two ``Authorization`` headers: which one counts would be a guess, so neither does."""
    for method, route in ROUTES:
        target = f"{route}?db=db" if route.startswith("/db") else route
        reply = await exchange(server, head(method, target, b"Authorization: cluster other"))
        lfsb_error(reply, 400, "EBADINPUT", "more than one Authorization header")
    await assert_unchanged(server, client, seeded)


async def test_bytes_after_the_trailer_are_refused(
    server: Server, client: Client, seeded: ServerState, snapshot: bytes
) -> None:
    """An LTX body with bytes after its trailer is a 400 ``EBADLTX`` (the reference decoder never looks
    past the trailer, so ``lfsb ltx verify`` accepts the Go-made fixture; the server stores nothing of it)."""
    garbage = (FIXTURES / "bad" / "quirk_trailing_garbage_raw.ltx").read_bytes()
    for body in (snapshot + b"\0", snapshot + bytes(70_000), garbage):
        reply = await exchange(
            server, head("POST", "/db/tx?db=fresh", f"Content-Length: {len(body)}".encode()), body
        )
        lfsb_error(reply, 400, "EBADLTX", "unexpected data after the trailer")
    await assert_unchanged(server, client, seeded)


@pytest.mark.parametrize("route", sorted({route for _, route in ROUTES}))
async def test_methods_not_allowed(server: Server, client: Client, seeded: ServerState, route: str) -> None:
    """Every other method on every route: 405 ``EMETHOD`` naming it, with the ``Allow`` header; a method
    token HTTP does not know, or one in lower case: aiohttp's 400. Nothing changed."""
    target = f"{route}?db=db" if route.startswith("/db") else route
    allowed = {m for m, r in ROUTES if r == route}
    for other in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"]:
        if other not in allowed:
            reply = await exchange(server, head(other, target, b"Content-Length: 0"))
            lfsb_error(reply, 405, "EMETHOD", f"method not allowed: {other} {route}")
            assert set(reply.headers["allow"].split(",")) == allowed
    for bogus in ["get", "BREW", "G\x00T"]:
        parser_error(await exchange(server, head(bogus, target)))
    await assert_unchanged(server, client, seeded)


# -- the CLI ------------------------------------------------------------------------------------------------
CLI_CASES = [
    (["list", "extra"], "Error: Got unexpected extra argument (extra)"),
    (["list", "--bogus"], "Error: No such option '--bogus'."),
    (["list", "-c", "a\nb"], "failed: Forbidden control character detected in headers."),
    (["list", "-c", "../x"], "Error: cluster invalid [EBADCLUSTER]"),
    (["list", "-c", "\xe9"], "Error: cluster invalid [EBADCLUSTER]"),
    (
        ["list", "-e", "http://[::1"],
        "Error: invalid endpoint 'http://[::1' (expected e.g. http://127.0.0.1:2200)",
    ),
    (["list", "-e", "ftp://host"], "Error: invalid endpoint 'ftp://host'"),
    (["list", "-e", "http://host:port"], "Error: request to http://host:port failed"),
    (["info"], "Error: Missing argument 'DB'."),
    (["info", "../x"], 'Error: invalid database name: "../x" [EBADDB]'),
    (["info", "a\nb"], 'Error: invalid database name: "a\\nb" [EBADDB]'),
    (["info", "db", "--all=maybe"], "Error: Option '--all' does not take a value."),
    (["info", "db", "extra"], "Error: Got unexpected extra argument (extra)"),
    (["export"], "Error: Missing argument 'DB'."),
    (["export", "db", "--format", "xml"], "'xml' is not one of 'sqlite', 'ltx'."),
    (["export", "db", "--txid", "zz"], "invalid transaction id 'zz': expected 1 to 16 hex digits"),
    (
        ["export", "db", "--txid", "ffffffffffffffff", "-o", "{dir}/out.db"],
        "Error: tx not available [ENOTXID]",
    ),
    (["export", "db", "--timestamp", "yesterday"], 'Error: Invalid value: invalid timestamp "yesterday"'),
    (["export", "db", "-o", "{dir}"], "File '{dir}' is a directory."),
    (
        ["export", "db", "-o", "{dir}/missing/out.db"],
        "Error: {dir}/missing/.out.db.tmp: No such file or directory",
    ),
    (["export", "../x", "-o", "{dir}/out.db"], 'Error: invalid database name: "../x" [EBADDB]'),
    (["import"], "Error: Missing argument 'DB'."),
    (["import", "db"], "Error: Missing argument 'FILE'."),
    (["import", "db", "{dir}/missing.db"], "File '{dir}/missing.db' does not exist."),
    (["import", "db", "{dir}"], "File '{dir}' is a directory."),
    (
        ["import", "db", "{garbage}"],
        "Error: cannot read {garbage} as a SQLite database: file is not a database",
    ),
    (["import", "../x", "{sqlite}"], 'Error: invalid database name: "../x" [EBADDB]'),
    (["import", "a b", "{sqlite}"], 'Error: invalid database name: "a b" [EBADDB]'),
    (["restore"], "Error: Missing argument 'DB'."),
    (["restore", "db"], "Error: must specify one of --txid and --timestamp"),
    (["restore", "db", "--txid", "1g"], "invalid transaction id '1g': expected 1 to 16 hex digits"),
    (["restore", "db", "--txid", "ffffffffffffffff"], "Error: tx not available [ENOTXID]"),
    (["restore", "db", "--timestamp", "2024-06-08T12:22:39"], "expected RFC 3339 with a zone"),
    (
        ["restore", "db", "--timestamp", "0001-01-01T00:00:00+23:59"],
        "Error: timestamp not available [ENOTIMESTAMP]",
    ),
    (
        ["restore", "db", "--txid", "0000000000000001", "--timestamp", "2024-06-08T12:22:39Z"],
        "Error: cannot specify both --txid and --timestamp",
    ),
    (["restore", "../x", "--txid", "0000000000000001"], 'Error: invalid database name: "../x" [EBADDB]'),
    (["delete"], "Error: Missing argument 'DB'."),
    (["delete", "db"], "until it is purged)? [y/N]: Aborted!"),
    (["delete", "../x", "--yes"], 'Error: invalid database name: "../x" [EBADDB]'),
    (["delete", "nosuch", "--yes"], "Error: database not found [ENODB]"),
    (["cluster"], "Usage:"),
    (["cluster", "nope"], "Error: No such command 'nope'."),
    (["cluster", "reset-id", "extra"], "Error: Got unexpected extra argument (extra)"),
    (["ltx"], "Usage:"),
    (["ltx", "verify"], "Error: Missing argument 'FILES...'."),
    (["ltx", "verify", "{garbage}", "{dir}/missing.ltx"], "0 ok, 2 invalid"),
    (["ltx", "dump", "{dir}"], "Error: {dir}: Is a directory"),
    (["ltx", "list", "{garbage}"], "{garbage}: decode header: invalid flags: 0x20627574"),
    (["ltx", "checksum", "{garbage}"], "Error: {garbage}: invalid database header"),
    (["ltx", "encode-db", "{garbage}"], "Error: Missing option '-o' / '--output'."),
    (["ltx", "encode-db", "{garbage}", "-o", "{dir}/out.ltx"], "Error: {garbage}: invalid database header"),
    (
        ["ltx", "decode-db", "{garbage}", "-o", "{dir}/out.db"],
        "Error: {garbage}: decode header: invalid flags",
    ),
    (["ltx", "compact", "-o", "{dir}/out.ltx"], "Error: Missing argument 'INPUTS...'."),
    (["ltx", "compact", "-o", "{dir}/out.ltx", "{garbage}"], "Error: input 0: decode header: invalid flags"),
    (["ltx", "apply", "{garbage}"], "Error: Missing option '--db'."),
    (["ltx", "apply", "--db", "{dir}", "{garbage}"], "Error: {dir}: Is a directory"),
    (
        ["serve", "--bind", "nonsense"],
        "Error: LFSB_BIND: invalid address 'nonsense' (use host:port or :port)",
    ),
    (["serve", "--bind", "127.0.0.1:99999"], "Error: LFSB_BIND: invalid address '127.0.0.1:99999'"),
    (["nosuchcommand"], "Error: No such command 'nosuchcommand'."),
]


@pytest.fixture
def cli_files(tmp_path: Path) -> dict[str, str]:
    """Files for the command lines: a directory, a file that is neither SQLite nor LTX, a SQLite database."""
    work = tmp_path / "cli"
    work.mkdir()
    (work / "garbage").write_bytes(b"LTX1 but not really" * 10)
    with contextlib.closing(sqlite3.connect(work / "good.db")) as conn:
        conn.execute("CREATE TABLE x (a)")
        conn.commit()
    return {"dir": str(work), "garbage": str(work / "garbage"), "sqlite": str(work / "good.db")}


@pytest.mark.parametrize(
    ("args", "message"), CLI_CASES, ids=[" ".join(a).replace("\n", "\\n") for a, _ in CLI_CASES]
)
async def test_cli_rejects_malformed_arguments(
    server: Server, seeded: ServerState, cli_files: dict[str, str], args: list[str], message: str
) -> None:
    """A usage error or a clear error line, a non-zero status, no traceback, nothing changed on the server
    and no file left behind."""
    before = set(Path(cli_files["dir"]).iterdir())
    result = await lfsb(server, *(arg.format(**cli_files) for arg in args))
    assert result.exit_code != 0 and message.format(**cli_files) in result.output, result.output
    assert "Traceback" not in result.output
    positions = await server.store.positions("test")
    assert {name: pos.to_json() for name, pos in positions.items()} == seeded.positions
    assert data_files(server) == seeded.files
    assert set(Path(cli_files["dir"]).iterdir()) == before


async def test_cli_serve_with_bad_settings(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lfsb serve`` with a bad setting from the environment stops at once with the setting's name."""
    for name, value in [
        ("LFSB_LEVELS", "1=often"),
        ("LFSB_MAX_TX_BYTES", "lots"),
        ("LFSB_LOG_LEVEL", "loud"),
    ]:
        with monkeypatch.context() as env:
            env.setenv(name, value)
            result = await lfsb(server, "serve", "--bind", "127.0.0.1:0", "--data", str(tmp_path / "serve"))
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        assert name in result.output, result.output


# -- connections ------------------------------------------------------------------------------------
async def closed_after(server: Server, *parts: bytes) -> float:
    """Open a connection, send ``parts``, read until the server closes it; seconds until then."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    start = time.monotonic()
    try:
        for part in parts:
            writer.write(part)
        async with asyncio.timeout(20):
            while await reader.read(65536):
                pass
        return time.monotonic() - start
    finally:
        writer.close()


@pytest.mark.parametrize("storage_env", [{}])
async def test_idle_and_half_sent_requests_are_closed(
    start_server: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that sends nothing, stops in the middle of its headers, or idles after a request is
    closed after the idle timeout (a slow-loris client cannot hold connections open)."""
    monkeypatch.setattr(connections, "IDLE_TIMEOUT", 1.0)
    server = await start_server()
    waited = await asyncio.gather(
        closed_after(server),
        closed_after(server, b"GET /pos HTTP/1.1\r\nHost: lfsb\r\nAuthoriz"),
        closed_after(server, head("GET", "/pos")),  # answered, then idle on keep-alive
    )
    assert all(0.9 <= w < 10 for w in waited), waited


@pytest.mark.parametrize("storage_env", [{}])
async def test_connections_past_the_limit_get_503(start_server: Callable[..., Any]) -> None:
    """Past LFSB_MAX_CONNECTIONS open connections, a new one is answered 503 EBUSY with Retry-After and
    closed; once one closes, new connections are served again."""
    server = await start_server(LFSB_MAX_CONNECTIONS="3")
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    held = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
    await asyncio.sleep(0.1)  # the server has accepted them
    reply = await exchange(server, head("GET", "/pos"))
    lfsb_error(reply, 503, "EBUSY", "too many connections")
    assert reply.headers["retry-after"] == "5" and reply.headers["connection"] == "close"
    held.pop()[1].close()
    await asyncio.sleep(0.1)
    assert (await exchange(server, head("GET", "/pos"))).status == 200
    for _, writer in held:
        writer.close()


def test_connection_limit_leaves_room_for_the_server_files() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connections.connection_limit(10**9) <= soft - connections.FD_RESERVE
    assert connections.connection_limit(5) == 5
