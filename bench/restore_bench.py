"""Benchmark of restore, restore/check and ``export --format sqlite`` through the HTTP API.

Run ``python bench/restore_bench.py`` (``--quick``: a 32 MiB database instead of 256 MiB; ``--runs N``: best
of N, default 3; ``--workdir DIR``: where the temporary workload lives; ``--current``: only the current
snapshot, below).

Workload: a real SQLite database (4 KiB pages, semi-compressible rows) ingested as TXID 1, then batches of
incremental LTX files (random pages rewritten in part) built with ``lfsb.ltx`` and ingested by an in-process
``lfsb.server.main.Server`` over local-directory storage; ``server.scheduler.run(1)`` after every batch,
``run(2)`` every 2nd, ``run(3)`` and ``run(9)`` every 4th, so levels 0, 1, 2, 3 and 9 all hold files. The
target is a point half-way through the second batch: its plan is an early snapshot-sized file plus L0 files.

Measurement: the in-process server is stopped and ``lfsb-server`` serves the same data directory in a
subprocess. The bench times ``GET /db/restore/check``, ``POST /db/restore`` and
``GET /db/snapshot?format=sqlite`` (written to a file) at the target through ``lfsb.client.Client``, best of
N; every timed restore starts from the end of the history (an untimed restore goes back there), so each run
diffs the same pages. Peak RSS is the server process's ``VmHWM`` (``/proc/<pid>/status``), reset before each
operation by writing ``5`` to ``/proc/<pid>/clear_refs``: each figure is that operation's own peak, the idle
server included. MB/s is the uncompressed database size at the target per second. CPU seconds (the server's
utime + stime from ``/proc/<pid>/stat``; ``time.process_time()`` for the baseline) are printed too: on a busy
machine the CPU ratio is the steadier figure.

Baseline, measured in this process in the same run: only the unavoidable byte work, i.e. copy every file of
the plan out of storage (L0 files are read in place) and ``lz4.frame.decompress(file[100:-16])`` it. Targets,
printed as PASS/FAIL: restore at most 2x the baseline, peak RSS under 150 MiB. Checked: the export hashes to
the expected state at the target, and so does the current state after the restores.

The current snapshot: ``GET /db/snapshot`` of the current state of a 5 MiB database: first after 100 small
transactions (one run: built from storage and the 100 L0 files), cold (one new transaction before each
request: built from the kept snapshot and the new file) and warm (asked again), against the floor of an
LZ4 compress and decompress of the database's bytes measured in the same run; goal: at most twice the
floor plus 10 ms.

Profile: the restore pipeline (plan download, compaction into the snapshot, diff against the current state,
verification of that diff on ingestion) is re-run in-process, each phase timed and profiled with cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import hashlib
import io
import operator
import os
import pstats
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import lz4.frame

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lfsb.client import Client  # noqa: E402
from lfsb.config import load_config  # noqa: E402
from lfsb.ltx import FLAG, FLAG_COMPRESS_LZ4, Encoder, Header, encode_database, format_txid, page_checksum  # noqa: E402
from lfsb.server.main import Server  # noqa: E402
from lfsb.store.db import now_ms  # noqa: E402
from lfsb.store.ingest import l0_path  # noqa: E402
from lfsb.store.plan import snapshot_plan  # noqa: E402
from lfsb.store.records import L0, LTXFile  # noqa: E402
from lfsb.store.restore import restore  # noqa: E402

MIB = 1 << 20
PAGE_SIZE = 4096
CLUSTER, DB = "bench", "db"
TIME_RATIO_TARGET = 2.0
RSS_TARGET_MIB = 150
QUIET = {  # nothing is compacted behind the bench's back
    "LFSB_LEVELS": "1=720h/720h,2=1440h/720h,3=2160h/720h",
    "LFSB_SNAPSHOT_INTERVAL": "8760h",
    "LFSB_LOG_LEVEL": "warning",
}


@dataclass(frozen=True)
class Params:
    """The size and shape of the workload."""

    db_mib: int
    batches: int
    txns: int
    """Transactions per batch."""
    pages: int
    """Pages rewritten per transaction."""


FULL = Params(db_mib=256, batches=8, txns=24, pages=64)
QUICK = Params(db_mib=32, batches=8, txns=12, pages=32)


@dataclass
class Workload:
    """What the bench needs to know about the history it wrote."""

    target: int
    target_size: int
    target_sha: str
    plan: list[LTXFile]
    last_txid: int


# -- workload ---------------------------------------------------------------------------------------
def make_database(path: Path, mib: int) -> None:
    """A real SQLite database of about ``mib`` MiB: rows of hex and repeated words, and an index."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        f"""PRAGMA page_size = {PAGE_SIZE}; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
        CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL);
        CREATE INDEX t_k ON t (k);"""
    )
    words = "'order shipped to customer account balance updated status pending'"
    while conn.execute("PRAGMA page_count").fetchone()[0] * PAGE_SIZE < mib * MIB:
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) "
            f"INSERT INTO t (k, v) SELECT hex(randomblob(8)), hex(randomblob(48)) || ' ' || {words} "
            f"|| ' ' || abs(random() % 100000) || ' ' || {words} FROM n"
        )
    conn.close()


class History:
    """The raw database file as LiteFS would hold it, and the LTX file of each transaction made to it."""

    def __init__(self, path: Path, rng: random.Random) -> None:
        self.path = path
        self.rng = rng
        self.commit = path.stat().st_size // PAGE_SIZE
        with path.open("rb") as f:
            self.checksums = [page_checksum(i + 1, f.read(PAGE_SIZE)) for i in range(self.commit)]
        self.txid = 1
        self.checksum = self._db_checksum()

    def _db_checksum(self) -> int:
        return FLAG | functools.reduce(operator.xor, self.checksums, 0)

    def transaction(self, dest: Path, pages: int) -> None:
        """Rewrite part of ``pages`` random pages (page 1 kept) and write the LTX file of the change."""
        self.txid += 1
        header = Header(
            page_size=PAGE_SIZE,
            commit=self.commit,
            min_txid=self.txid,
            max_txid=self.txid,
            flags=FLAG_COMPRESS_LZ4,
            timestamp=now_ms(),
            pre_apply_checksum=self.checksum,
        )
        fd = os.open(self.path, os.O_RDWR)
        try:
            with dest.open("wb") as out:
                enc = Encoder(out, header)
                for pgno in sorted(self.rng.sample(range(2, self.commit + 1), pages)):
                    data = bytearray(os.pread(fd, PAGE_SIZE, (pgno - 1) * PAGE_SIZE))
                    text = self.rng.randbytes(96).hex().encode()
                    offset = self.rng.randrange(100, PAGE_SIZE - len(text))
                    data[offset : offset + len(text)] = text
                    os.pwrite(fd, data, (pgno - 1) * PAGE_SIZE)
                    self.checksums[pgno - 1] = page_checksum(pgno, data)
                    enc.write_page(pgno, data)
                self.checksum = self._db_checksum()
                enc.close(self.checksum)
        finally:
            os.close(fd)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


async def write_workload(data: Path, scratch: Path, p: Params) -> Workload:
    """Ingest the history through an in-process server and compact it to every level."""
    state = scratch / "state.db"
    make_database(state, p.db_mib)
    server = Server(load_config({"LFSB_DATA_PATH": str(data), "LFSB_BIND": "127.0.0.1:0", **QUIET}))
    await server.start()
    await server.wait_recovered()
    try:
        incoming = scratch / "incoming.ltx"
        with state.open("rb") as src, incoming.open("wb") as out:
            encode_database(src, out, timestamp=now_ms())
        await server.store.write_tx(CLUSTER, DB, incoming)
        history = History(state, random.Random(42))
        target = 1 + p.txns + p.txns // 2
        target_sha = ""
        for batch in range(p.batches):
            for _ in range(p.txns):
                incoming.unlink()  # write_tx linked it into L0: the next transaction needs a file of its own
                history.transaction(incoming, p.pages)
                await server.store.write_tx(CLUSTER, DB, incoming)
                if history.txid == target:
                    target_sha = await asyncio.to_thread(sha256, state)
            await server.scheduler.run(1)
            if batch % 2 == 1:
                await server.scheduler.run(2)
            if batch % 4 == 3:
                await server.scheduler.run(3)
                await server.scheduler.run(9)
        db = await server.store.database(CLUSTER, DB)
        files = await server.store.files(db)
        levels = sorted({f.level for f in files})
        print(f"history: TXIDs 1..{db.txid}, {len(files)} files on levels {levels}")
        return Workload(target, history.commit * PAGE_SIZE, target_sha, snapshot_plan(files, target), db.txid)
    finally:
        await server.stop()


# -- measurement ------------------------------------------------------------------------------------
def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``lfsb-server`` in a subprocess on the workload's data directory, with its peak RSS at hand."""

    def __init__(self, data: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {**os.environ, "LFSB_DATA_PATH": str(data), "LFSB_BIND": self.url[7:], **QUIET}
        env.pop("BUCKET_NAME", None)
        code = "from lfsb.server.main import main; main()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)

    async def wait_ready(self) -> None:
        """Until ``/healthz`` answers."""
        async with Client(self.url, CLUSTER) as client:
            for _ in range(600):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"lfsb-server exited with {self.proc.returncode}")
                with contextlib.suppress(Exception):
                    await client.positions()
                    return
                await asyncio.sleep(0.1)
        raise RuntimeError("lfsb-server did not answer")

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak(self) -> None:
        """Start a new peak-RSS measurement."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def peak_rss(self) -> int:
        """Peak RSS in bytes since the last reset."""
        return self._status("VmHWM")

    def rss(self) -> int:
        """Current RSS in bytes."""
        return self._status("VmRSS")

    def cpu(self) -> float:
        """CPU seconds (user and system, every thread) the server has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM, then wait for the graceful exit."""
        self.proc.terminate()
        self.proc.wait(60)


@dataclass
class Measure:
    """Best-of-N figures of one operation."""

    seconds: float = float("inf")
    """Wall-clock seconds."""
    cpu: float = float("inf")
    """CPU seconds of the process doing the work (the server, or this process for the baseline)."""
    rss: int = 0
    """Peak server RSS in bytes over the runs (0 for the baseline)."""


async def best_of(
    runs: int,
    op: Callable[[], Awaitable[object]],
    server: ServerProcess | None = None,
    prepare: Callable[[], Awaitable[object]] | None = None,
) -> Measure:
    """Best of ``runs`` calls of ``op``; ``prepare`` (untimed) runs before each call."""
    m = Measure()
    for _ in range(runs):
        if prepare:
            await prepare()
        if server:
            server.reset_peak()
        cpu = server.cpu() if server else time.process_time()
        start = time.perf_counter()
        await op()
        m.seconds = min(m.seconds, time.perf_counter() - start)
        m.cpu = min(m.cpu, (server.cpu() if server else time.process_time()) - cpu)
        if server:
            m.rss = max(m.rss, server.peak_rss())
    return m


def plan_path(data: Path, f: LTXFile) -> Path:
    """Where a file of the plan lives in the data directory (L0, or the local-directory object store)."""
    if f.level == L0:
        return l0_path(data / "l0", CLUSTER, DB, f.filename)
    return data / "objects" / CLUSTER / DB / str(f.level) / f.filename


async def baseline(data: Path, scratch: Path, plan: list[LTXFile]) -> int:
    """Copy every file of the plan out of storage and decompress its LZ4 frame; bytes decompressed."""

    def _run() -> int:
        total = 0
        for f in plan:
            src = plan_path(data, f)
            if f.level != L0:  # a download from the local-directory store is a copy
                dest = scratch / "download.ltx"
                shutil.copyfile(src, dest)
                src = dest
            body = src.read_bytes()
            total += len(lz4.frame.decompress(body[100:-16]))
        return total

    return await asyncio.to_thread(_run)


# -- the current snapshot ---------------------------------------------------------------------------
CURRENT_MIB = 5
CURRENT_TXNS = 100
CURRENT_SLACK = 0.010
"""The goal for the current snapshot: at most twice the floor plus 10 ms."""


async def current_snapshot_bench(workdir: Path, runs: int) -> None:
    """``GET /db/snapshot`` of the current state of a 5 MiB database: first after 100 small transactions,
    cold (one more transaction before each request) and warm (asked again), against the floor:
    ``lz4.frame`` compress and decompress of the database's bytes."""
    data, scratch = workdir / "current", workdir / "current-scratch"
    scratch.mkdir(parents=True)
    state = scratch / "state.db"
    make_database(state, CURRENT_MIB)
    raw = state.read_bytes()
    floor = await best_of(
        runs, lambda: asyncio.to_thread(lambda: lz4.frame.decompress(lz4.frame.compress(raw)))
    )
    incoming = scratch / "incoming.ltx"
    with state.open("rb") as src, incoming.open("wb") as out:
        encode_database(src, out, timestamp=now_ms())
    history = History(state, random.Random(7))
    server = ServerProcess(data)
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(headers={"Authorization": f"cluster {CLUSTER}"}) as http:

            async def post() -> None:
                async with http.post(f"{server.url}/db/tx?db={DB}", data=incoming.read_bytes()) as resp:
                    assert resp.status == 200, await resp.text()

            async def one_more() -> None:
                history.transaction(incoming, 2)
                await post()

            async def get() -> None:
                async with http.get(f"{server.url}/db/snapshot?db={DB}") as resp:
                    assert resp.status == 200 and len(await resp.read()) > 0

            await post()
            for _ in range(CURRENT_TXNS):
                await one_more()
            first = await best_of(1, get, server)  # from storage and the 100 L0 files
            cold = await best_of(runs, get, server, prepare=one_more)  # the kept one and the new file
            warm = await best_of(runs, get, server)
            async with http.get(f"{server.url}/db/snapshot?db={DB}&format=sqlite") as resp:
                assert hashlib.sha256(await resp.read()).hexdigest() == sha256(state), "snapshot differs"
    finally:
        server.stop()
    goal = 2 * floor.seconds + CURRENT_SLACK
    print(
        f"\ncurrent snapshot of a {len(raw) / MIB:.1f} MiB database after {CURRENT_TXNS} small transactions"
    )
    print(
        f"floor (LZ4 compress + decompress of the database) {floor.seconds * 1000:.1f} ms;"
        f" goal <= {goal * 1000:.1f} ms"
    )
    verdict = {True: "PASS", False: "FAIL"}
    for name, m in (("first (100 new txs)", first), ("cold (1 new tx)", cold), ("warm (asked again)", warm)):
        print(
            f"  {name:<20}{m.seconds * 1000:8.1f} ms{m.seconds / floor.seconds:8.2f} x floor"
            f"  {verdict[m.seconds <= goal]}"
        )


# -- profile ----------------------------------------------------------------------------------------
async def profile_restore(data: Path, target: int) -> tuple[float, str]:
    """One in-process restore to ``target`` under cProfile, worker threads included (every
    ``asyncio.to_thread`` call): its seconds, and the functions where the time went."""
    profiles: list[cProfile.Profile] = []

    def _profile_thread() -> None:
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()

    server = Server(load_config({"LFSB_DATA_PATH": str(data), "LFSB_BIND": "127.0.0.1:0", **QUIET}))
    await server.start()
    await server.wait_recovered()
    loop = asyncio.get_running_loop()
    workers = ThreadPoolExecutor(4, initializer=_profile_thread)
    loop.set_default_executor(workers)
    main_thread = cProfile.Profile()
    try:
        db = await server.store.database(CLUSTER, DB)
        start = time.perf_counter()
        main_thread.enable()
        await restore(server.store, db, target)
        main_thread.disable()
        seconds = time.perf_counter() - start
    finally:
        await server.stop()
        loop.set_default_executor(ThreadPoolExecutor())
        workers.shutdown()
    stats = pstats.Stats(main_thread)
    for prof in profiles:
        stats.add(prof)
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(12)
    stats.sort_stats("cumulative").print_stats(r"lfsb/(ltx|store)/", 14)
    idle = ("SimpleQueue", "epoll", "lock' objects", "function calls", "Ordered by", "List reduced")
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    return seconds, "\n".join(line for line in lines if not any(i in line for i in idle))


# -- main -------------------------------------------------------------------------------------------
async def run(workdir: Path, p: Params, runs: int) -> int:
    """Build the workload, measure, profile, print; the exit status."""
    data, scratch = workdir / "data", workdir / "scratch"
    scratch.mkdir(parents=True)
    started = time.perf_counter()
    w = await write_workload(data, scratch, p)
    kinds = ", ".join(f"L{f.level} {f.min_txid}-{f.max_txid}" for f in w.plan[:3])
    print(
        f"workload: {w.target_size / MIB:.0f} MiB database, target TXID {w.target} of {w.last_txid}, "
        f"plan of {len(w.plan)} files ({kinds}, ...), built in {time.perf_counter() - started:.1f}s"
    )

    base = await best_of(runs, lambda: baseline(data, scratch, w.plan))
    profiled_s, profile = await profile_restore(data, w.target)
    server = ServerProcess(data)
    try:
        await server.wait_ready()
        idle = server.rss()
        txid = format_txid(w.target)
        exported = scratch / "export.db"
        async with Client(server.url, CLUSTER) as client:
            check = await best_of(runs, lambda: client.restore_check(DB, txid), server)

            async def _export() -> int:
                with exported.open("wb") as out:
                    return await client.export(DB, out, "sqlite", txid)

            export = await best_of(runs, _export, server)
            assert sha256(exported) == w.target_sha, "the export differs from the target"
            # Each timed restore starts from the end of the history (an untimed restore goes there first),
            # so every run diffs the same pages.
            last = format_txid(w.last_txid)
            restored = await best_of(
                runs, lambda: client.restore(DB, txid), server, prepare=lambda: client.restore(DB, last)
            )
            with exported.open("wb") as out:
                await client.export(DB, out, "sqlite")
            assert sha256(exported) == w.target_sha, "the restored state differs from the target"
    finally:
        server.stop()

    print(f"\nbaseline: the {len(w.plan)} plan files copied and decompressed ({w.target_size / MIB:.0f} MiB)")
    print(f"server idle RSS {idle / MIB:.0f} MiB; best of {runs} runs\n")
    head = ["seconds", "MB/s", "x base", "CPU s", "x base"]
    print(f"{'operation':<23}" + "".join(f"{h:>8}" for h in head) + f"{'peak RSS MiB':>14}")
    rows = [
        ("baseline", base),
        ("restore/check", check),
        ("restore", restored),
        ("export --format sqlite", export),
    ]
    for name, m in rows:
        speed = "" if name == "restore/check" else f"{w.target_size / 1e6 / m.seconds:.0f}"
        versus = "" if m is base else f"{m.seconds / base.seconds:.2f}"
        cpu_versus = "" if m is base else f"{m.cpu / base.cpu:.2f}"
        peak = "" if m is base else f"{m.rss / MIB:.0f}"
        print(f"{name:<23}{m.seconds:8.3f}{speed:>8}{versus:>8}{m.cpu:8.2f}{cpu_versus:>8}{peak:>14}")
    ratio = restored.seconds / base.seconds
    peak_mib = max(m.rss for m in (check, restored, export)) / MIB
    verdict = {True: "PASS", False: "FAIL"}
    fast, small = ratio <= TIME_RATIO_TARGET, peak_mib < RSS_TARGET_MIB
    print(f"\nrestore time ratio {ratio:.2f} (target <= {TIME_RATIO_TARGET}): {verdict[fast]}")
    print(f"peak server RSS {peak_mib:.0f} MiB (target < {RSS_TARGET_MIB}): {verdict[small]}")
    print(f"\nwhere the time of a restore goes: cProfile of one in-process restore ({profiled_s:.3f}s),")
    print("event loop and worker threads together, idle waits left out; by own time, then lfsb by cumulative")
    print(profile)
    await current_snapshot_bench(workdir, runs)
    return 0


def main() -> None:
    """``python bench/restore_bench.py [--quick] [--runs N] [--workdir DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB instead of 256 MiB")
    parser.add_argument("--runs", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--workdir", type=Path, help="where to build the workload (default: a temp dir)")
    parser.add_argument("--current", action="store_true", help="only the current snapshot")
    args = parser.parse_args()
    params = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="restore-bench-") as tmp:
        if args.current:
            asyncio.run(current_snapshot_bench(Path(tmp), args.runs))
            return
        sys.exit(asyncio.run(run(Path(tmp), params, args.runs)))


if __name__ == "__main__":
    main()
