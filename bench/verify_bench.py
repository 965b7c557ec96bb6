"""Benchmark of restore checks: their throughput, and what a running check costs ``POST /db/tx``.

Run ``python bench/verify_bench.py`` (``--quick``: a 32 MiB database instead of 256 MiB; ``--rate``: the
paced load in transactions/s, default 50). The server runs as a subprocess (``lfsb-server`` from this
checkout, local-directory storage in a temp directory, level 1 every 2 s so that the large database
reaches storage). The workload reuses ``ingest_bench``'s: a ``big`` database of 4 KiB pages that compress
about 2:1, posted as one snapshot, and a small ``load`` database with thousands of 4-page transactions.

Measurement:

* rebuild floor (in this process, same run): copy the large database's objects out of storage and
  LZ4-decompress them to a file: the byte work no check can avoid;
* check throughput: ``POST /db/verify?db=big`` (download, merge, decode to a SQLite file, database
  checksum, ``PRAGMA integrity_check``), MB/s of database, as a ratio to the floor;
* ``POST /db/tx`` p99 of the paced load on ``load``, idle (no check running) and while checks of ``big``
  run back to back. Target, printed as PASS/FAIL: p99 while checking <= 1.5x the idle p99.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lz4.frame

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

import ingest_bench as ib  # noqa: E402

from lfsb import ltx  # noqa: E402

P99_RATIO_TARGET = 1.5
LEVELS = "1=2s/24h,2=48h/30d,3=72h/30d"


def start_server(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``lfsb-server`` with level 1 every 2 s and local-directory storage under ``data``."""
    env = {
        **os.environ,
        "LFSB_DATA_PATH": str(data),
        "LFSB_BIND": f"127.0.0.1:{port}",
        "LFSB_LEVELS": LEVELS,
        "LFSB_SNAPSHOT_INTERVAL": "720h",
        "LFSB_LOG_LEVEL": "warning",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH.parent), os.environ.get("PYTHONPATH")])),
    }
    for name in ("BUCKET_NAME", "SENTRY_DSN"):
        env.pop(name, None)
    with log.open("wb") as out:
        code = "from lfsb.server.main import main; main()"
        return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT)


async def status(conn: ib.Connection) -> dict[str, dict]:
    """``GET /status`` by database name."""
    code, _, body = await conn.request("GET", "/status")
    assert code == 200, body
    return {d["name"]: d for d in json.loads(body)["databases"]}


def build_sqlite(path: Path, size_mib: int) -> bytes:
    """A real SQLite database of about ``size_mib`` MiB (rows that compress about 2:1), as an LTX snapshot."""
    rng = random.Random(1)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    conn.execute("BEGIN")
    rows = size_mib * 1024 * 1024 // 1000
    conn.executemany(
        "INSERT INTO t (v) VALUES (?)", ((rng.randbytes(450) + bytes(450),) for _ in range(rows))
    )
    conn.execute("COMMIT")
    conn.close()
    out = io.BytesIO()
    with path.open("rb") as src:
        ltx.encode_database(src, out, timestamp=ib.T0)
    return out.getvalue()


def floor(objects: Path, out: Path) -> float:
    """Seconds to copy the big database's objects out of storage and decompress their pages to a file."""
    start = time.perf_counter()
    with out.open("wb") as dest:
        for path in sorted(objects.glob("bench/big/1/*.ltx")):
            data = path.read_bytes()
            dest.write(lz4.frame.decompress(data[100:-16]))
    return time.perf_counter() - start


async def paced(conn: ib.Connection, bodies: list[bytes], rate: float, until: asyncio.Event) -> list[float]:
    """POST ``bodies`` of ``load`` one every 1/``rate`` s until ``until`` is set; their latencies."""
    latencies: list[float] = []
    start = time.perf_counter()
    while bodies and not until.is_set():
        if (delay := start + len(latencies) / rate - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        await ib.post(conn, "load", bodies.pop(0))
        latencies.append(time.perf_counter() - sent)
    return latencies


async def run(args: argparse.Namespace, work: Path) -> int:
    pool = ib.page_pool(random.Random(0))
    print(
        f"building the workload: big {args.size_mib} MiB, load {args.transactions} transactions", flush=True
    )
    big_snapshot = build_sqlite(work / "big.db", args.size_mib)
    commit = (work / "big.db").stat().st_size // ib.PAGE_SIZE
    load = ib.build_database("load", pool, 1000, args.transactions, 4, 2)
    port = ib.free_port()
    proc = start_server(work / "data", port, work / "server.log")
    conns = [ib.Connection(port) for _ in range(3)]
    try:
        await ib.wait_ready(port, proc)
        await ib.post(conns[0], "big", big_snapshot)
        await ib.post(conns[0], "load", load.snapshot)
        del big_snapshot
        while (await status(conns[0]))["big"]["hwmLag"]:
            await asyncio.sleep(0.5)
        floor_s = min(floor(work / "data" / "objects", work / "floor.db") for _ in range(2))
        size_mb = commit * ib.PAGE_SIZE / ib.MB

        bodies = list(load.bodies)
        idle_stop = asyncio.Event()
        asyncio.get_running_loop().call_later(args.seconds, idle_stop.set)
        idle = await paced(conns[1], bodies, args.rate, idle_stop)

        checking, reports = asyncio.Event(), []

        async def _checks() -> None:
            try:
                for _ in range(args.checks):
                    t = time.perf_counter()
                    code, _, body = await conns[2].request("POST", "/db/verify?db=big")
                    assert code == 200, body
                    report = json.loads(body)
                    assert report["ok"], report
                    reports.append((time.perf_counter() - t, report))
            finally:
                checking.set()

        checker = asyncio.create_task(_checks())
        busy = await paced(conns[1], bodies, args.rate, checking)
        await checker
        if not bodies:
            print("warning: the load ran out of transactions before the checks ended (raise --transactions)")
    finally:
        await asyncio.gather(*(c.close() for c in conns))
        proc.terminate()
        proc.wait(30)
    best = min(t for t, _ in reports)
    p99_idle, p99_busy = ib.ms(idle, 99), ib.ms(busy, 99)
    print(f"rebuild floor (copy + LZ4 decompress): {floor_s:.2f} s = {size_mb / floor_s:.0f} MB/s")
    for t, r in reports:
        print(
            f"check of {size_mb:.0f} MB: {t:.2f} s = {size_mb / t:.0f} MB/s"
            f" (server: {r['durationMs']} ms, {r['bytesRead']} bytes read)"
        )
    print(f"check throughput: best {size_mb / best:.0f} MB/s = {best / floor_s:.2f}x the floor's time")
    print(
        f"POST /db/tx at {args.rate:.0f} tx/s: idle p50 {ib.ms(idle, 50):.1f} ms p99 {p99_idle:.1f} ms"
        f" ({len(idle)} tx); during checks p50 {ib.ms(busy, 50):.1f} ms p99 {p99_busy:.1f} ms"
        f" ({len(busy)} tx)"
    )
    ratio = p99_busy / p99_idle
    ok = ratio <= P99_RATIO_TARGET
    print(f"{'PASS' if ok else 'FAIL'}: p99 during checks {ratio:.2f}x idle (target <= {P99_RATIO_TARGET}x)")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 32 MiB database instead of 256 MiB")
    parser.add_argument("--rate", type=float, default=50.0, help="paced load, transactions/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the idle phase")
    parser.add_argument("--checks", type=int, default=3, help="checks run back to back in the busy phase")
    parser.add_argument("--transactions", type=int, default=0, help="transactions built for the load")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    args.size_mib = 32 if args.quick else 256
    args.transactions = args.transactions or int(
        args.rate * (args.seconds + 40 * args.checks * args.size_mib / 256 + 20)
    )
    work = Path(tempfile.mkdtemp(prefix="lfsb-verify-bench-", dir=args.workdir))
    try:
        return asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
