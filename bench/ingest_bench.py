"""Benchmark of ingestion: 50 LiteFS-like writers streaming small LTX files to a real lfsb server.

Run ``python bench/ingest_bench.py`` (``--quick`` for fewer transactions; ``--profile FILE`` also writes
a py-spy profile of the server's Python code under load, its metadata writer process included:
``pip install py-spy``). The server runs as a subprocess, ``python -c 'from lfsb.server.main import
main; main()'`` (the ``lfsb-server`` entry point, from this checkout), on a free loopback port with
local-directory storage in a temp directory and compaction intervals so long that nothing is compacted
during the run. Its CPU time and memory count all its processes (the one serving HTTP, the metadata
writer, the process the writer forks from and multiprocessing's resource tracker); memory is the sum of
their ``Pss`` (shared pages counted once), sampled every 0.25 s, and its peak is checked.

Before any clock starts, the bench builds for each database a snapshot of ``--commit`` 4 KiB pages and
``2 x --transactions`` incremental LZ4 LTX files that each rewrite ``--pages`` pages, with pre/post-apply
checksums chained, and POSTs the snapshots. Every database then streams its files from its own task
and keep-alive connection (``POST /db/tx`` with LiteFS's headers, chunked as LiteFS sends it: header,
LZ4 frame, trailer), one after another, in two phases, while another task polls ``GET /pos``:

* throughput: the first half of the files as fast as the server takes them (50 requests in flight);
* latency: the second half paced so that all databases together offer the target rate (half the
  baseline's transactions/s), each database still waiting for its previous POST.

At the end every database must be at its last TXID with the expected checksum. Each phase reports
transactions/s, pages/s, MB/s (of pages and of LZ4 bodies), p50/p99 of ``POST /db/tx``, p99 of
``GET /pos``, and the CPU time per transaction of the server (user + system, from ``/proc``) and of
the bench's own client.

The baseline inserts the same pages into one SQLite table from one thread, one SQLite transaction per
LTX file, with the server's durability settings (WAL, ``synchronous=FULL``), on the same filesystem.
It runs before and after the server; the faster run counts (the machine may be shared). Targets are
printed as PASS/FAIL: throughput >= 0.5x the baseline's pages/s, p99 ``POST /db/tx`` < 50 ms at that
load (the paced phase), server memory < 200 MiB. The exit status is 0 unless the run or a check fails.

The baseline needs one cache flush per transaction; the server needs two per group commit (one syncfs for
the group's L0 files, one for the metadata commit), so it is bound by Python's work per request instead,
mostly the event loop's (the metadata writer has a process and a GIL of its own). On ext4 without a
journal, creating files stays slow for about a minute after many files were deleted nearby, as the
bench's own clean-up does: leave a minute or two between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import operator
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lfsb import ltx  # noqa: E402

PAGE_SIZE = 4096
POOL_PAGES = 256
MB = 1e6
T0 = 1_700_000_000_000
QUIET_LEVELS = "1=24h/24h,2=48h/30d,3=72h/30d"
"""Compaction intervals long enough that no level runs during a benchmark."""
REQUEST_HEADERS = (
    "Authorization: cluster bench\r\nLitefs-Cluster-Id: LFSC00000000000000BE\r\nAccept-Encoding: gzip\r\n"
)
"""What LiteFS sends after ``Host``, ``User-Agent`` and ``Transfer-Encoding``."""
POS_POLL_INTERVAL = 0.01

THROUGHPUT_RATIO_TARGET = 0.5
POST_P99_TARGET_MS = 50.0
RSS_TARGET_MIB = 200


# -- workload -----------------------------------------------------------------------------------------------
@dataclass
class Database:
    """One database's files: the snapshot, the incremental bodies, and their pages for the baseline."""

    name: str
    snapshot: bytes
    bodies: list[bytes] = field(default_factory=list)
    pages: list[list[tuple[int, int]]] = field(default_factory=list)
    """For each incremental file, its ``(pgno, index into the page pool)``."""
    pos: ltx.Pos = field(default_factory=ltx.Pos)
    """The position after the last file."""


@dataclass
class Workload:
    """Every database of the run and the pool of page contents their files use."""

    pool: list[bytes]
    databases: list[Database]
    commit: int


def page_pool(rng: random.Random) -> list[bytes]:
    """Page contents that compress about 2:1, as table pages with text do."""
    return [rng.randbytes(PAGE_SIZE // 2) + bytes(PAGE_SIZE // 2) for _ in range(POOL_PAGES)]


def encode(header: ltx.Header, pages: list[tuple[int, bytes]], post_apply_checksum: int | None) -> bytes:
    """One LTX file (a snapshot computes its own post-apply checksum when given None)."""
    out = io.BytesIO()
    enc = ltx.Encoder(out, header)
    for pgno, data in pages:
        enc.write_page(pgno, data)
    enc.close(post_apply_checksum)
    return out.getvalue()


def build_database(
    name: str, pool: list[bytes], commit: int, files: int, per_file: int, seed: int
) -> Database:
    """A snapshot of ``commit`` pages (TXID 1), then ``files`` files of ``per_file`` pages each."""
    rng = random.Random(seed)
    current = {pgno: rng.randrange(POOL_PAGES) for pgno in range(1, commit + 1)}
    header = ltx.Header(PAGE_SIZE, commit, 1, 1, ltx.FLAG_COMPRESS_LZ4, timestamp=T0)
    db = Database(name, encode(header, [(p, pool[i]) for p, i in sorted(current.items())], None))
    checksums = {pgno: ltx.page_checksum(pgno, pool[i]) for pgno, i in current.items()}
    checksum = ltx.FLAG | functools.reduce(operator.xor, checksums.values(), 0)
    for txid in range(2, files + 2):
        changes = sorted((p, rng.randrange(POOL_PAGES)) for p in rng.sample(range(1, commit + 1), per_file))
        post = checksum
        for pgno, i in changes:
            new = ltx.page_checksum(pgno, pool[i])
            post ^= checksums[pgno] ^ new
            checksums[pgno] = new
        post |= ltx.FLAG
        header = ltx.Header(
            PAGE_SIZE, commit, txid, txid, ltx.FLAG_COMPRESS_LZ4, T0 + txid, pre_apply_checksum=checksum
        )
        db.bodies.append(encode(header, [(p, pool[i]) for p, i in changes], post))
        db.pages.append(changes)
        checksum = post
    db.pos = ltx.Pos(files + 1, checksum)
    return db


def build_workload(databases: int, files: int, commit: int, per_file: int) -> Workload:
    """Every database's files, from a fixed seed."""
    pool = page_pool(random.Random(0))
    dbs = [build_database(f"db{i:03d}", pool, commit, files, per_file, i + 1) for i in range(databases)]
    return Workload(pool, dbs, commit)


# -- baseline -----------------------------------------------------------------------------------------------
def baseline(wl: Workload, files: slice, path: Path) -> float:
    """Seconds to store the pages of ``files`` of every database in one SQLite table, one transaction per
    file, in the order the server receives them (file n of every database, then file n + 1)."""
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(
            "CREATE TABLE pages (db INTEGER, pgno INTEGER, data BLOB NOT NULL, PRIMARY KEY (db, pgno))"
        )
        upsert = "INSERT OR REPLACE INTO pages VALUES (?, ?, ?)"
        conn.execute("BEGIN")
        conn.executemany(
            upsert, [(d, p, wl.pool[0]) for d in range(len(wl.databases)) for p in range(1, wl.commit + 1)]
        )
        conn.execute("COMMIT")
        rounds = list(zip(*(db.pages[files] for db in wl.databases), strict=True))
        start = time.perf_counter()
        for per_db in rounds:
            for d, changes in enumerate(per_db):
                conn.execute("BEGIN")
                conn.executemany(upsert, [(d, pgno, wl.pool[i]) for pgno, i in changes])
                conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


# -- server -------------------------------------------------------------------------------------------------
def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``lfsb-server`` on ``127.0.0.1:port`` with local-directory storage under ``data``."""
    env = {
        **os.environ,
        "LFSB_DATA_PATH": str(data),
        "LFSB_BIND": f"127.0.0.1:{port}",
        "LFSB_LEVELS": QUIET_LEVELS,
        "LFSB_SNAPSHOT_INTERVAL": "720h",
        "LFSB_LOG_LEVEL": "warning",
    }
    for name in ("BUCKET_NAME", "SENTRY_DSN"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    code = "from lfsb.server.main import main; main()"
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT)


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """``py-spy record`` of the server's threads while they hold the GIL (collapsed stacks)."""
    cmd = [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--output",
        str(output),
        "--threads",
        "--gil",
        "--subprocesses",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def server_processes(pid: int) -> list[int]:
    """The server's process and all its descendants (the metadata writer and the process it forks from)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += parents.get(tree[-1], [])
    return tree


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the server's processes have used so far."""
    total = 0
    for p in server_processes(pid):
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> float:
    """The proportional set size (``Pss``) of the server's processes together, in MiB: a page they share
    (the writer process forks from a server of preloaded modules) is counted once, not once each."""
    total = 0
    for p in server_processes(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


async def watch_memory(pid: int, stop: asyncio.Event) -> float:
    """The peak of :func:`memory_mib` over samples every 0.25 s until ``stop``."""
    peak = 0.0
    while not stop.is_set():
        peak = max(peak, memory_mib(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    return peak


def peak_rss_mib(pid: int) -> float:
    """``VmHWM`` of one process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


class Connection:
    """One keep-alive HTTP/1.1 connection sending requests byte for byte as LiteFS's Go client does
    (headers in its order, POST bodies chunked as header, LZ4 frame, trailer; litefs-client.md).

    Written on asyncio streams rather than aiohttp's client because the bench shares the machine's
    cores with the server: this costs the bench about a quarter of the CPU per request aiohttp did.
    """

    def __init__(self, port: int, headers: str = REQUEST_HEADERS) -> None:
        """``headers``: what follows ``Host``, ``User-Agent`` and ``Transfer-Encoding``."""
        self.port = port
        self.headers = headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
        """Send one request and read its response: status, headers (lower-case names) and body."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUser-Agent: Go-http-client/1.1\r\n"
        )
        if body is not None:
            head += "Transfer-Encoding: chunked\r\n"
        self.writer.write(f"{head}{self.headers}\r\n".encode())
        if body is not None:
            for part in (body[: ltx.HEADER_SIZE], body[ltx.HEADER_SIZE : -ltx.TRAILER_SIZE]):
                self.writer.write(b"%x\r\n%b\r\n" % (len(part), part))
            trailer = body[-ltx.TRAILER_SIZE :]
            self.writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(trailer), trailer))
        await self.writer.drain()
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines if line)}
        if headers.get("transfer-encoding") == "chunked":  # a streamed response (/metrics)
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
                parts.append((await self.reader.readexactly(size + 2))[:-2])
            await self.reader.readuntil(b"\r\n")  # no trailers
            return int(status_line.split()[1]), headers, b"".join(parts)
        if "content-length" not in headers:
            raise RuntimeError(f"{method} {target}: response without Content-Length: {headers}")
        return (
            int(status_line.split()[1]),
            headers,
            await self.reader.readexactly(int(headers["content-length"])),
        )

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Wait until ``GET /healthz`` answers 200 ``ok`` (recovered from storage)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lfsb-server exited with {proc.returncode}")
        conn = Connection(port)
        try:
            status, _, body = await conn.request("GET", "/healthz")
            if status == 200 and json.loads(body)["status"] == "ok":
                return
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await conn.close()
        await asyncio.sleep(0.05)
    raise RuntimeError("lfsb-server did not become ready within 30 s")


# -- load ---------------------------------------------------------------------------------------------------
async def post(conn: Connection, name: str, body: bytes) -> None:
    """``POST /db/tx``, which must answer 200 with a 16-hex ``Litefs-Hwm``."""
    status, headers, text = await conn.request("POST", f"/db/tx?db={name}", body)
    if status != 200 or len(headers.get("litefs-hwm", "")) != 16:
        raise RuntimeError(f"POST /db/tx?db={name}: {status} {text!r}")


async def get_pos(conn: Connection) -> dict[str, ltx.Pos]:
    """``GET /pos``: every database's position."""
    status, _, text = await conn.request("GET", "/pos")
    if status != 200:
        raise RuntimeError(f"GET /pos: {status} {text!r}")
    return {name: ltx.Pos.from_json(p) for name, p in json.loads(text).items()}


@dataclass
class Phase:
    """What one phase of the load measured."""

    name: str
    transactions: int
    pages: int
    body_bytes: int
    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    post_latencies: list[float] = field(default_factory=list)
    pos_latencies: list[float] = field(default_factory=list)


async def writer(conn: Connection, db: Database, files: slice, interval: float, phase: Phase) -> None:
    """Send ``files`` of ``db`` one after another, starting one every ``interval`` seconds at most."""
    start = time.perf_counter() + random.random() * interval  # databases do not send in lockstep
    for n, body in enumerate(db.bodies[files]):
        if (delay := start + n * interval - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        await post(conn, db.name, body)
        phase.post_latencies.append(time.perf_counter() - sent)


async def poll_pos(conn: Connection, stop: asyncio.Event, phase: Phase) -> None:
    """``GET /pos`` every 10 ms until ``stop``."""
    while not stop.is_set():
        start = time.perf_counter()
        await get_pos(conn)
        phase.pos_latencies.append(time.perf_counter() - start)
        await asyncio.sleep(POS_POLL_INTERVAL)


async def run_phase(
    conns: list[Connection], wl: Workload, files: slice, rate: float | None, name: str, pid: int
) -> Phase:
    """Every database sends ``files`` on its connection (the last one polls ``/pos``); ``rate``
    (transactions/s, all databases together) or flat out."""
    phase = Phase(
        name,
        sum(len(db.bodies[files]) for db in wl.databases),
        sum(len(p) for db in wl.databases for p in db.pages[files]),
        sum(len(b) for db in wl.databases for b in db.bodies[files]),
    )
    interval = len(wl.databases) / rate if rate else 0.0
    stop = asyncio.Event()
    poller = asyncio.create_task(poll_pos(conns[-1], stop, phase))
    start, cpu, own = time.perf_counter(), cpu_seconds(pid), time.process_time()
    await asyncio.gather(
        *(writer(c, db, files, interval, phase) for c, db in zip(conns[:-1], wl.databases, strict=True))
    )
    phase.seconds, phase.server_cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    phase.client_cpu = time.process_time() - own
    stop.set()
    await poller
    return phase


async def run_load(
    port: int, wl: Workload, proc: subprocess.Popen[bytes], paced_rate: float, profile: Path | None
) -> tuple[list[Phase], float]:
    """Snapshots, then the throughput and latency phases; checks every database's final position.
    Returns the phases and the server's peak memory (:func:`watch_memory`)."""
    half = len(wl.databases[0].bodies) // 2
    await wait_ready(port, proc)
    conns = [Connection(port) for _ in range(len(wl.databases) + 1)]
    stop_watch = asyncio.Event()
    watch = asyncio.create_task(watch_memory(proc.pid, stop_watch))
    try:
        await asyncio.gather(
            *(post(c, db.name, db.snapshot) for c, db in zip(conns[:-1], wl.databases, strict=True))
        )
        profiler = start_profiler(proc.pid, profile) if profile else None
        phases = [
            await run_phase(conns, wl, slice(0, half), None, "throughput", proc.pid),
            await run_phase(conns, wl, slice(half, None), paced_rate, "latency", proc.pid),
        ]
        if profiler:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        positions = await get_pos(conns[-1])
    finally:
        await asyncio.gather(*(c.close() for c in conns))
        stop_watch.set()
        memory = await watch
    wrong = [db.name for db in wl.databases if positions.get(db.name) != db.pos]
    if wrong:
        raise RuntimeError(f"databases not at their expected position: {wrong[:5]}")
    return phases, memory


# -- report -------------------------------------------------------------------------------------------------
def ms(values: list[float], q: int) -> float:
    """The ``q``-th percentile of ``values`` (seconds), in milliseconds."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def report(phase: Phase) -> None:
    """Two lines: rates, then latencies and CPU time per transaction."""
    print(
        f"{phase.name:10s} {phase.transactions / phase.seconds:6.0f} tx/s {phase.pages / phase.seconds:6.0f}"
        f" pages/s {phase.pages * PAGE_SIZE / MB / phase.seconds:5.1f} MB/s of pages"
        f" {phase.body_bytes / MB / phase.seconds:5.1f} MB/s of LZ4 bodies ({phase.seconds:.2f} s)"
    )
    post = phase.post_latencies
    print(
        f"{'':10s} POST /db/tx p50 {ms(post, 50):.1f} ms p99 {ms(post, 99):.1f} ms;"
        f" GET /pos p99 {ms(phase.pos_latencies, 99):.1f} ms ({len(phase.pos_latencies)} polls);"
        f" CPU per tx: server {phase.server_cpu / phase.transactions * 1000:.2f} ms,"
        f" bench client {phase.client_cpu / phase.transactions * 1000:.2f} ms"
    )


def verdict(ok: bool, text: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="40 transactions per database and phase, not 100"
    )
    parser.add_argument("--databases", type=int, default=50)
    parser.add_argument("--transactions", type=int, help="files per database and phase")
    parser.add_argument("--pages", type=int, default=3, help="pages each transaction writes (default 3)")
    parser.add_argument("--commit", type=int, default=32, help="pages in each database (default 32)")
    parser.add_argument(
        "--profile", type=Path, help="write a py-spy profile of the server (collapsed stacks)"
    )
    args = parser.parse_args(argv)
    per_phase = args.transactions or (40 if args.quick else 100)

    built = time.perf_counter()
    wl = build_workload(args.databases, 2 * per_phase, args.commit, args.pages)
    print(
        f"workload: {args.databases} databases x 2 phases x {per_phase} transactions x {args.pages} pages of"
        f" {PAGE_SIZE} B (built in {time.perf_counter() - built:.1f} s)"
    )
    work = Path(tempfile.mkdtemp(prefix="lfsb-ingest-bench-"))
    try:
        first = baseline(wl, slice(0, per_phase), work / "baseline.db")
        offered = THROUGHPUT_RATIO_TARGET * per_phase * args.databases / first
        port = free_port()
        proc = start_server(work / "data", port, work / "server.log")
        try:
            phases, memory = asyncio.run(run_load(port, wl, proc, offered, args.profile))
            processes = len(server_processes(proc.pid))
            rss = peak_rss_mib(proc.pid)
        finally:
            proc.terminate()
            code = proc.wait(30)
        if code != 0:
            print(f"lfsb-server exited with {code}:\n{(work / 'server.log').read_text()[-3000:]}")
            return 1
        second = baseline(wl, slice(0, per_phase), work / "baseline.db")
    finally:
        shutil.rmtree(work)

    base_seconds = min(first, second)
    base_tx = per_phase * args.databases / base_seconds
    pages = sum(len(p) for db in wl.databases for p in db.pages[:per_phase])
    print(
        f"baseline   {base_tx:6.0f} tx/s {pages / base_seconds:6.0f} pages/s (SQLite, WAL, synchronous=FULL,"
        f" one transaction per file, one thread; best of {first:.2f} s before and {second:.2f} s after)"
    )
    throughput, latency = phases
    report(throughput)
    report(latency)
    print(
        f"server memory {memory:.1f} MiB at its peak (Pss of its {processes} processes together, sampled"
        f" every 0.25 s); peak RSS of the process serving HTTP {rss:.1f} MiB"
    )
    ratio = throughput.pages / throughput.seconds / (pages / base_seconds)
    p99 = ms(latency.post_latencies, 99)
    paced = f"{latency.transactions / latency.seconds:.0f} tx/s ({offered:.0f} offered)"
    verdict(
        ratio >= THROUGHPUT_RATIO_TARGET, f"throughput {ratio:.2f}x the baseline's pages/s (target >= 0.5x)"
    )
    verdict(p99 < POST_P99_TARGET_MS, f"POST /db/tx p99 {p99:.1f} ms at {paced} (target < 50 ms)")
    verdict(memory < RSS_TARGET_MIB, f"server memory {memory:.1f} MiB (target < {RSS_TARGET_MIB} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
