"""Pytest plugin: a real lfsb server on a loopback port, over local-directory storage or moto S3."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
from click.testing import CliRunner, Result
from multidict import CIMultiDictProxy

from lfsb.cli import main
from lfsb.config import Config, load_config
from lfsb.ltx import HEADER_SIZE, Header, parse_filename
from lfsb.server.main import Server
from lfsb.storage import local
from lfsb.storage.local import FileSystemSync
from tests.litefs import LiteFSEmulator

DB_ROUTES = [
    ("POST", "/db/tx"),
    ("GET", "/db/snapshot"),
    ("POST", "/db/restore"),
    ("GET", "/db/restore/check"),
    ("GET", "/db/info"),
    ("POST", "/db/upload"),
    ("DELETE", "/db"),
    ("POST", "/db/verify"),
]
"""Every route that takes a ``db`` query parameter."""

# Level intervals long enough that nothing runs by itself during a test (an in-process server's scheduler is
# stopped once it has recovered: the levels' wall-clock boundaries would still come at the top of every
# hour); tests call ``server.scheduler.run(level)`` or pass their own LFSB_LEVELS for timed scenarios.
QUIET_LEVELS = "1=1h/1h,2=2h/30d,3=3h/30d"


def server_config(data_path: Path, storage_env: dict[str, str], **env: str) -> Config:
    """A config for a test server on a free loopback port."""
    return load_config(
        {
            "LFSB_DATA_PATH": str(data_path),
            "LFSB_BIND": "127.0.0.1:0",
            "LFSB_LEVELS": QUIET_LEVELS,
            "LFSB_SNAPSHOT_INTERVAL": "24h",
            **storage_env,
            **env,
        }
    )


class Reply(NamedTuple):
    """A response: status, decoded JSON (None unless ``Content-Type: application/json``), body, headers."""

    status: int
    data: Any
    body: bytes
    headers: CIMultiDictProxy[str]


class Client:
    """A tiny HTTP client for tests: requests as a cluster (in open mode) or with a token, JSON decoded."""

    def __init__(self, url: str, cluster: str = "test", token: str | None = None) -> None:
        self.url = url
        self.cluster = cluster
        self.authorization = token or f"cluster {cluster}"
        self.session = aiohttp.ClientSession()

    async def fetch(self, method: str, path: str, **kwargs: object) -> Reply:
        """One request (``headers=`` adds to or overrides ``Authorization``)."""
        headers = {"Authorization": self.authorization, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as resp:
            body = await resp.read()
            data = None
            if resp.content_type == "application/json":
                data = await resp.json()
            return Reply(resp.status, data, body, resp.headers)

    async def request(self, method: str, path: str, **kwargs: object) -> tuple[int, object, bytes]:
        status, data, body, _ = await self.fetch(method, path, **kwargs)
        return status, data, body

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def storage_env_for(request: pytest.FixtureRequest, kind: str) -> dict[str, str]:
    """Environment selecting the object store ``kind``: ``local`` (the embedded directory) or ``s3``
    (a fresh moto bucket)."""
    if kind == "local":
        return {}
    return request.getfixturevalue("s3_bucket").env()


@pytest.fixture(params=["local", "s3"])
def storage_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment selecting the object store: the embedded local directory, or a fresh moto bucket."""
    return storage_env_for(request, request.param)


@pytest.fixture
async def start_server(tmp_path: Path, storage_env: dict[str, str]) -> AsyncIterator[Callable[..., object]]:
    """Start servers (``await start_server(**env)``) on this test's data directory, recovered from storage
    (unless ``recovered=False``); stopped at the end."""
    servers: list[Server] = []

    async def _start(data_path: Path | None = None, recovered: bool = True, **env: str) -> Server:
        server = Server(server_config(data_path or tmp_path / "data", storage_env, **env))
        await server.start()
        servers.append(server)
        if recovered:  # serving starts at once; most tests want the recovery from storage done
            await server.wait_recovered()
            if "LFSB_LEVELS" not in env:  # quiet levels still fire at the top of the hour: not at all
                await server.scheduler.stop()
        return server

    yield _start
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(start_server: Callable[..., object]) -> Server:
    """A running server with quiet compaction schedules."""
    return await start_server()  # type: ignore[misc]


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    """An HTTP client for ``server`` as cluster ``test``."""
    c = Client(server.url)
    yield c
    await c.close()


def check_sqlite(path: Path, sql: str = "SELECT * FROM t ORDER BY id") -> list[tuple[Any, ...]]:
    """The rows ``sql`` selects from the SQLite file at ``path``, once ``PRAGMA integrity_check`` passed."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def write_history(
    server: Server, node: LiteFSEmulator, batches: int = 3, per_batch: int = 3
) -> dict[int, list[tuple[Any, ...]]]:
    """Write ``batches`` of transactions to table ``t`` through ``node``, compacting between them so that
    levels 1, 2, 3 and 9 all hold files; returns the rows of ``t`` at every TXID written."""
    node.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    states = {node.txid: node.rows("SELECT * FROM t ORDER BY id")}
    for batch in range(batches):
        for i in range(per_batch):
            node.execute("INSERT INTO t (v) VALUES (?)", (f"batch {batch} row {i} " + "x" * 300 * i,))
            states[node.txid] = node.rows("SELECT * FROM t ORDER BY id")
            await node.sync()
        assert await server.scheduler.run(1) >= 1
        await server.scheduler.run(2)
        if batch % 2 == 1:
            await server.scheduler.run(3)
            await server.scheduler.run(9)
    return states


@dataclass(frozen=True)
class State:
    """What a node's database held after a sync: position, LTX timestamp (ms) and the rows of ``t``."""

    txid: int
    checksum: int
    timestamp: int
    rows: list[tuple[Any, ...]]


@dataclass
class History:
    """Every state a LiteFS node's database was in, by TXID: what a restore or export of it must give.

    :meth:`write` runs a fixed workload on table ``t`` (inserts of growing rows, updates, deletes),
    one synced transaction at a time, with a pause after each so that successive points have
    timestamps tens of milliseconds apart.
    """

    node: LiteFSEmulator
    states: dict[int, State] = field(default_factory=dict)
    steps: int = 0

    def __getitem__(self, txid: int) -> State:
        return self.states[txid]

    def record(self) -> State:
        """Record the node's current state (after a sync, so that the server holds it too)."""
        with self.node.ltx_files()[-1].open("rb") as f:
            header = Header.from_bytes(f.read(HEADER_SIZE))
        assert header.max_txid == self.node.txid
        rows = self.node.rows("SELECT * FROM t ORDER BY id")
        state = State(self.node.txid, self.node.pos.post_apply_checksum, header.timestamp, rows)
        self.states[state.txid] = state
        return state

    async def write(self, count: int = 1, gap: float = 0.02) -> State:
        """``count`` transactions of the workload (the first creates ``t``); returns the last state."""
        for _ in range(count):
            step = self.steps = self.steps + 1
            txid = self.node.txid
            if step == 1:
                self.node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            elif step % 5 == 3:
                self.node.execute("UPDATE t SET v = v || ?", (f" +{step}",))
            elif step % 5 == 4:
                self.node.execute("DELETE FROM t WHERE id = (SELECT MIN(id) FROM t)")
            else:
                self.node.execute("INSERT INTO t (v) VALUES (?)", (f"step {step} " + "x" * 300 * (step % 7),))
            assert self.node.txid == txid + 1
            await self.node.sync()
            state = self.record()
            await asyncio.sleep(gap)
        return state


async def lfsb(server: Server, *args: str) -> Result:
    """``lfsb -e <server> -c test ARGS`` in-process, on a worker thread: the CLI runs its own event loop
    (``asyncio.run``) while the server keeps answering on the test's loop."""
    argv = ["-e", server.url, "-c", "test", *args]
    return await asyncio.to_thread(CliRunner().invoke, main, argv, catch_exceptions=False)


async def lfsb_json(server: Server, *args: str) -> Any:
    """``lfsb ARGS --json``, which must succeed: its decoded output."""
    result = await lfsb(server, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def export_rows(server: Server, dest: Path, *target: str) -> list[tuple[Any, ...]]:
    """``lfsb export db -o DEST`` (SQLite) now or at ``--txid X`` / ``--timestamp T``: the rows of ``t``,
    after an integrity check."""
    result = await lfsb(server, "export", "db", "-o", str(dest), *target)
    assert result.exit_code == 0, result.output
    return check_sqlite(dest)


async def age_files(server: Server, seconds: float) -> None:
    """Make every L0 and remote file in the index ``seconds`` older, as if that much time had passed;
    files written afterwards are new. Retention reads file ages from the index only."""
    await server.store.meta.write(_age, int(seconds * 1000))


def _age(conn: sqlite3.Connection, ms: int) -> None:
    conn.execute("UPDATE l0_files SET created_at = created_at - ?", (ms,))
    conn.execute("UPDATE remote_files SET created_at = created_at - ?", (ms,))
    conn.execute("UPDATE databases SET retention_due_at = retention_due_at - ?", (ms,))  # time moved on


async def in_writer(server: Server, fn: Callable[..., None], *args: object) -> None:
    """Run ``fn(*args)`` in the server's metadata writer process (as a write that changes nothing): the
    way to patch what runs there, such as file syncs and directory creation."""
    await server.store.meta.write(_call, fn, args)


def _call(conn: sqlite3.Connection, fn: Callable[..., None], args: tuple[object, ...]) -> None:
    fn(*args)


_REAL_FILE_SYNC = FileSystemSync.__call__


def fail_file_syncs(err: int) -> None:
    """(For :func:`in_writer`) Make every sync of new L0 files fail with errno ``err`` from now on; 0
    makes them work again."""

    def failing(self: FileSystemSync, paths: object) -> None:
        raise OSError(err, os.strerror(err))

    FileSystemSync.__call__ = failing if err else _REAL_FILE_SYNC  # type: ignore[method-assign]


def record_fsync_dirs(log: Path) -> None:
    """(For :func:`in_writer`) Append each directory fsynced from now on to the file ``log``, a line each."""
    real = local.fsync_dir

    def recording(path: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{path}\n")
        real(path)

    local.fsync_dir = recording


async def indexed_files(server: Server, name: str = "db") -> set[tuple[int, int, int]]:
    """(level, min TXID, max TXID) of every file of database ``name`` in the server's index, L0 included."""
    db = await server.store.database("test", name)
    return {f.key for f in await server.store.files(db)}


async def stored_files(server: Server, name: str = "db") -> set[tuple[int, int, int]]:
    """(level, min TXID, max TXID) of every file of database ``name`` in object storage and in L0 on disk."""
    found = {(0, *parse_filename(p.name)) for p in (server.store.l0_dir / "test" / name).glob("*.ltx")}
    for level in await server.objects.list_levels("test", name):
        infos = await server.objects.list_files("test", name, level)
        found |= {(i.level, i.min_txid, i.max_txid) for i in infos}
    return found


SERVER_COMMAND = [sys.executable, "-c", "from lfsb.server.main import main; main()"]
"""``lfsb-server``, run by the current interpreter (no reliance on the console script being on PATH)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerExited(AssertionError):
    """The server process exited while a test waited for it to become ready."""


class ServerProcess:
    """``lfsb-server`` as a subprocess, with its stderr collected (appended to ``log`` when given, so that
    a long-running server never blocks on a full pipe)."""

    def __init__(self, data: Path, port: int | None = None, log: Path | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {
            **os.environ,
            "LFSB_DATA_PATH": str(data),
            "LFSB_BIND": f"127.0.0.1:{self.port}",
            "LFSB_LEVELS": QUIET_LEVELS,
            **env,
        }
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the process (without waiting for it to listen)."""
        if self.log is None:
            stderr: Any = asyncio.subprocess.PIPE
        else:
            stderr = self.log.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *SERVER_COMMAND, env=self.env, stderr=stderr, stdout=asyncio.subprocess.DEVNULL
            )
        finally:
            if self.log is not None:
                stderr.close()

    async def _stderr(self) -> str:
        if self.log is None:
            return (await self.proc.stderr.read()).decode(errors="replace")
        return self.log.read_text(errors="replace")

    async def wait_ready(self, timeout: float = 20) -> None:
        """Wait until ``/healthz`` answers 200 ``ok`` (recovered from storage); :class:`ServerExited` if the
        process exits first."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise ServerExited(f"exit code {self.proc.returncode}: {(await self._stderr())[-4000:]}")
                try:
                    async with session.get(self.url + "/healthz") as resp:
                        if resp.status == 200 and (await resp.json())["status"] == "ok":
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("server did not become ready")

    async def kill(self) -> int:
        """SIGKILL the process (if it still runs) and reap it; its exit code."""
        if self.proc.returncode is None:
            self.proc.kill()
        return await self.proc.wait()

    async def finish(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for the process to exit (killed if it has not after ``timeout`` seconds, then
        TimeoutError); its exit code and stderr."""
        try:
            async with asyncio.timeout(timeout):
                piped = await self._stderr() if self.log is None else None  # to EOF first: a full pipe blocks
                code = await self.proc.wait()
        except TimeoutError:
            await self.kill()
            raise
        return code, piped if piped is not None else await self._stderr()


@dataclass(frozen=True)
class ServerState:
    """What a rejected request must not change: the positions and contents (sha256 of the SQLite file) of
    every database of cluster ``test``, and the files in the data directory."""

    positions: dict[str, dict[str, str]]
    contents: dict[str, str]
    files: frozenset[str]


def data_files(server: Server) -> frozenset[str]:
    """Every path under the server's data directory (relative), except the metadata db's own files, the
    temp directory's contents (removed at the end of each request, a moment after its response) and the
    cache of current snapshots (built by reads), and the local store's probe files (written and removed
    by each storage health check)."""
    root, scratch = server.config.data_path, {server.store.tmp_dir, server.store.snapshots.root}
    paths = root.rglob("*")
    return frozenset(
        str(p.relative_to(root))
        for p in paths
        if p.parent not in scratch and not p.name.startswith(("server.db", ".check."))
    )


async def server_state(server: Server, client: Client) -> ServerState:
    """The server's state as the API shows it, and its data directory."""
    files = data_files(server)
    status, positions, _ = await client.request("GET", "/pos")
    assert status == 200
    contents = {}
    for name in positions:
        status, _, raw = await client.request("GET", f"/db/snapshot?db={name}&format=sqlite")
        assert status == 200, raw
        contents[name] = hashlib.sha256(raw).hexdigest()
    return ServerState(positions, contents, files)


async def assert_no_temp_files(server: Server) -> None:
    """No temp file is left. A request removes its temp files a moment after its response is out, so a few
    seconds are given for the temp directory to empty; a file that stays is a leak."""
    deadline = time.monotonic() + 5
    while any(server.store.tmp_dir.iterdir()) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert list(server.store.tmp_dir.iterdir()) == []


async def assert_unchanged(server: Server, client: Client, before: ServerState) -> None:
    """Nothing was written: no temp file is left, and positions, contents and files are as before."""
    await assert_no_temp_files(server)
    after = await server_state(server, client)
    assert (after.positions, after.contents) == (before.positions, before.contents)
    assert sorted(after.files ^ before.files) == []  # the paths that appeared or vanished
