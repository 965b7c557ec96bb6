"""Benchmark of scale: many databases on one server, on the local store and on S3 (moto).

Run ``python bench/scale_bench.py`` (``--n N`` databases, default 100,000; ``--quick``: 1,000;
``--storage local|s3|both``, default both; ``--idle S``: seconds of idle CPU measured, default 20). Needs the
test extras (``pip install -e '.[test]'``) for moto.

Workload: ``N`` databases in 100 clusters, one of which ("big") holds ``min(10,000, N/2)`` of them; each
database gets a 2-page snapshot and 2 incremental transactions, sent as LiteFS sends them (``POST /db/tx``,
chunked, 32 connections). ``lfsb-server`` runs in a subprocess with level 1 every 2 s.

Printed for each store: ingest rate (transactions/s) and p99 of ``POST /db/tx``; memory of all server
processes (Pss, shared pages once) once compaction has settled; p50 and max of ``GET /pos`` (big cluster);
idle CPU (% of one core) once compaction has settled; after a graceful restart, and after a recovery from
storage alone (a new data directory), the seconds to listening (a TCP connect succeeds) and to fully
serving (``/healthz`` says ``ok``), with the object-storage calls the recovery made per database
(``lfsb_storage_requests_total``; a listing counts once, S3 pages it per 1,000 keys). Targets (at 100,000
databases): memory < 300 MiB, idle < 2 % of a core, listening within 2 s, fully serving after a restart
within 30 s; printed as PASS/FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import ingest_bench as ib  # noqa: E402

from tests.s3server import S3Server, create_bucket  # noqa: E402

CLUSTERS = 100
BIG = 10_000
CONNECTIONS = 32
LEVELS = "1=2s/1h,2=1h/30d,3=2h/30d"
MEMORY_TARGET_MIB = 300
IDLE_TARGET = 2.0
LISTEN_TARGET = 2.0
RESTART_TARGET = 30.0


def headers(cluster: str) -> str:
    """What LiteFS sends after ``Host``, ``User-Agent`` and ``Transfer-Encoding``, for ``cluster``."""
    return f"Authorization: cluster {cluster}\r\nAccept-Encoding: gzip\r\n"


def layout(n: int) -> list[tuple[str, str]]:
    """(cluster, database) of every database: the big cluster first, the rest spread over 99 others."""
    big = min(BIG, n // 2)
    names = [("big", f"db{i:05d}") for i in range(big)]
    return names + [(f"c{i % (CLUSTERS - 1):02d}", f"db{i:06d}") for i in range(n - big)]


def bodies() -> list[bytes]:
    """The same three LTX files for every database: a 2-page snapshot and two incrementals."""
    pool = ib.page_pool(random.Random(0))
    db = ib.build_database("x", pool, commit=2, files=2, per_file=1, seed=1)
    return [db.snapshot, *db.bodies]


class Server:
    """``lfsb-server`` in a subprocess."""

    def __init__(self, data: Path, port: int, env: dict[str, str]) -> None:
        self.port = port
        full = {
            **os.environ,
            **env,
            "LFSB_DATA_PATH": str(data),
            "LFSB_BIND": f"127.0.0.1:{port}",
            "LFSB_LEVELS": LEVELS,
            "LFSB_SNAPSHOT_INTERVAL": "720h",
            "LFSB_LOG_LEVEL": "warning",
            "PYTHONPATH": str(REPO),
        }
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from lfsb.server.main import main; main()"],
            env=full,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def listening(self) -> float:
        """Seconds from start until a TCP connect succeeds."""
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lfsb-server exited with {self.proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return time.monotonic() - self.started
            await asyncio.sleep(0.01)

    async def serving(self) -> float:
        """Seconds from start until ``/healthz`` says ``ok``; the recovery's progress every 30 s meanwhile."""
        shown = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lfsb-server exited with {self.proc.returncode}")
            conn = ib.Connection(self.port)
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, RuntimeError):
                status, _, body = await conn.request("GET", "/healthz")
                health = json.loads(body)
                if status == 200 and health["status"] == "ok":
                    await conn.close()
                    return time.monotonic() - self.started
                if time.monotonic() - shown >= 30 and "progress" in health:
                    shown = time.monotonic()
                    say(f"    {shown - self.started:6.0f} s: {health['progress']}")
            await conn.close()
            await asyncio.sleep(0.05)

    async def get(self, target: str) -> bytes:
        conn = ib.Connection(self.port, headers("big"))
        try:
            status, _, body = await conn.request("GET", target)
        finally:
            await conn.close()
        if status != 200:
            raise RuntimeError(f"GET {target}: {status} {body[:200]!r}")
        return body

    async def metric(self, name: str) -> float:
        """The sum of every sample of ``name`` in ``/metrics``."""
        text = (await self.get("/metrics")).decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


async def ingest(port: int, names: list[tuple[str, str]], files: list[bytes]) -> tuple[float, float]:
    """Every database's files, 32 connections at once; transactions/s and p99 ms of ``POST /db/tx``."""
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for name in sorted(names):  # by cluster: a worker keeps one connection and changes it rarely
        queue.put_nowait(name)
    latencies: list[float] = []

    async def worker() -> None:
        conn: ib.Connection | None = None
        current = ""
        try:
            while not queue.empty():
                cluster, db = queue.get_nowait()
                if conn is None or cluster != current:
                    if conn is not None:
                        await conn.close()
                    conn, current = ib.Connection(port, headers(cluster)), cluster
                for body in files:
                    start = time.perf_counter()
                    status, _, text = await conn.request("POST", f"/db/tx?db={db}", body)
                    latencies.append(time.perf_counter() - start)
                    if status != 200:
                        raise RuntimeError(f"POST {cluster}/{db}: {status} {text!r}")
        finally:
            if conn is not None:
                await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, statistics.quantiles(latencies, n=100)[98] * 1000


async def settle(server: Server) -> None:
    """Until no database waits for level 1, then one more interval."""
    while await server.metric('lfsb_compaction_pending{level="1"}') > 0:
        await asyncio.sleep(5)  # a scrape names every database: not every second
    await asyncio.sleep(3)


VERDICT = {True: "PASS", False: "FAIL"}


def say(line: str) -> None:
    """Print ``line`` at once (a run at 100,000 databases takes most of an hour)."""
    print(line, flush=True)


async def measure(kind: str, n: int, idle_seconds: float, workdir: Path) -> None:
    """The whole run on one store, each figure printed as soon as it is measured."""
    env: dict[str, str] = {}
    moto: S3Server | None = None
    if kind == "s3":
        moto = S3Server()
        moto.start()
        env = create_bucket(moto.endpoint).env()
    say(f"\n{kind} store, {n:,} databases in {CLUSTERS} clusters (big cluster: {min(BIG, n // 2):,})")
    if n < 100_000:
        say("  (targets are for 100,000 databases; this run is smaller)")
    try:
        data = workdir / f"{kind}-data"
        names = layout(n)
        server = Server(data, ib.free_port(), env)
        await server.serving()
        rate, p99 = await ingest(server.port, names, bodies())
        say(f"  ingest               {rate:8.0f} tx/s   p99 POST /db/tx {p99:.1f} ms")
        await settle(server)
        memory = ib.memory_mib(server.proc.pid)
        memory_ok = VERDICT[memory < MEMORY_TARGET_MIB]
        say(f"  memory (Pss, all)    {memory:8.1f} MiB    target < {MEMORY_TARGET_MIB}: {memory_ok}")
        pos = []
        for _ in range(20):
            start = time.perf_counter()
            await server.get("/pos")
            pos.append((time.perf_counter() - start) * 1000)
        say(f"  GET /pos (big)       {statistics.median(pos):8.1f} ms p50, {max(pos):.1f} ms max")
        cpu = ib.cpu_seconds(server.proc.pid)
        await asyncio.sleep(idle_seconds)
        idle = (ib.cpu_seconds(server.proc.pid) - cpu) / idle_seconds * 100
        idle_ok = VERDICT[idle < IDLE_TARGET]
        say(f"  idle CPU             {idle:8.2f} % of a core  target < {IDLE_TARGET}: {idle_ok}")
        server.stop()

        restarted = Server(data, server.port, env)
        listen, serve = await restarted.listening(), await restarted.serving()
        restarted.stop()
        say(
            f"  restart              listening {listen:5.2f} s ({VERDICT[listen <= LISTEN_TARGET]}),"
            f" serving {serve:6.2f} s (target {RESTART_TARGET:.0f} s: {VERDICT[serve <= RESTART_TARGET]})"
        )

        fresh = workdir / f"{kind}-fresh"
        if kind == "local":
            shutil.copytree(data / "objects", fresh / "objects")
            os.sync()  # the copy's write-back must not be measured as part of the recovery
        recovered = Server(fresh, server.port, env)
        listen, serve = await recovered.listening(), await recovered.serving()
        requests = await recovered.metric("lfsb_storage_requests_total")
        recovered.stop()
        listen_ok = VERDICT[listen <= LISTEN_TARGET]
        say(f"  recovery             listening {listen:5.2f} s ({listen_ok}), serving {serve:6.2f} s")
        say(f"  object-storage calls of the recovery: {requests / n:.2f} per database")
        positions = json.loads(await recovered_positions(fresh, server.port, env))
        assert len(positions) == min(BIG, n // 2), "the big cluster lost databases"
    finally:
        if moto is not None:
            moto.stop()


async def recovered_positions(data: Path, port: int, env: dict[str, str]) -> bytes:
    """``GET /pos`` of the big cluster from a server restarted on ``data``."""
    server = Server(data, port, env)
    try:
        await server.serving()
        return await server.get("/pos")
    finally:
        server.stop()


def main() -> None:
    """``python bench/scale_bench.py [--n N | --quick] [--storage local|s3|both] [--idle S]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="databases (default 100,000)")
    parser.add_argument("--quick", action="store_true", help="1,000 databases")
    parser.add_argument("--storage", choices=["local", "s3", "both"], default="both")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measured")
    args = parser.parse_args()
    n = 1000 if args.quick else args.n
    kinds = ["local", "s3"] if args.storage == "both" else [args.storage]
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        for kind in kinds:
            asyncio.run(measure(kind, n, args.idle, Path(tmp)))


if __name__ == "__main__":
    main()
