"""Benchmark of the dashboard's page render times for a cluster of 1,000 databases.

Run ``python bench/ui_bench.py`` (``--databases N``, default 1000; ``--points N``: restorable points of the
database whose page is timed, default 1000; ``--runs N``: requests per page, default 30).

Workload: an in-process ``lfsb.server.main.Server`` (token mode, local-directory storage) holding cluster
``bench`` with N databases (each a small SQLite snapshot ingested through ``Store.write_tx``, then pushed to
L1) and one more, ``history``, written by the LiteFS client emulator one transaction at a time, with L1
compactions along the way, so its timeline has ``--points`` points over levels 0 and 1.

Measurement: a signed-in session (root token) GETs each page ``--runs`` times over loopback HTTP; the time
is the whole request as the client sees it (server and client share one event loop, so it is an upper
bound of the server's own time). Printed: median, 95th percentile and worst in ms per page, and each
median as a ratio of the baseline measured in the same run: ``GET /pos`` of the same cluster through the
JSON API (every database's position as JSON). Goal, printed as PASS/FAIL: every page's worst under 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lfsb.config import load_config  # noqa: E402
from lfsb.ltx import encode_database  # noqa: E402
from lfsb.server.main import Server  # noqa: E402
from lfsb.store.access import Role  # noqa: E402
from tests.litefs import LiteFSEmulator  # noqa: E402

ROOT = "bench-root-" + "b" * 40
GOAL_MS = 200.0


def small_snapshot(work: Path) -> bytes:
    """An LTX snapshot of a small SQLite database (50 rows)."""
    path = work / "small.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i} " + "x" * 50,) for i in range(50)])
    conn.commit()
    conn.close()
    out = work / "small.ltx"
    with open(path, "rb") as src, open(out, "wb") as dst:
        encode_database(src, dst)
    return out.read_bytes()


async def timed(http: aiohttp.ClientSession, url: str, runs: int, **kw: object) -> list[float]:
    """Milliseconds of ``runs`` GETs of ``url`` (each must answer 200)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        async with http.get(url, **kw) as resp:
            await resp.read()
            assert resp.status == 200, (url, resp.status)
        times.append((time.perf_counter() - start) * 1000)
    return times


async def run(args: argparse.Namespace, work: Path) -> bool:
    config = load_config(
        {
            "LFSB_DATA_PATH": str(work / "data"),
            "LFSB_BIND": "127.0.0.1:0",
            "LFSB_LEVELS": "1=1h/1h,2=2h/30d,3=3h/30d",
            "LFSB_ADMIN_TOKEN": ROOT,
            "LFSB_LOG_LEVEL": "warning",
        }
    )
    server = Server(config)
    await server.start()
    try:
        store = server.store
        _, replica = await store.access.create("bench", Role.REPLICA, "bench", None)
        snapshot = small_snapshot(work)
        started = time.perf_counter()
        for i in range(args.databases):
            await store.write_tx("bench", f"db{i:04d}", snapshot)
        async with LiteFSEmulator(work / "node", server.url, name="history", token=replica) as node:
            node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            await node.sync()
            for i in range(args.points - 1):
                node.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
                await node.sync()
                if i % 200 == 199:
                    await server.scheduler.run(1)
        await server.scheduler.run(1)
        print(f"workload: {args.databases} databases + 'history' ({args.points} points) in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip

        ui = server.url + "/ui"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(ui + "/login") as resp:
                csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
            assert csrf
            async with http.post(ui + "/login", data={"csrf": csrf.group(1), "token": ROOT}) as resp:
                assert resp.status == 200 and resp.url.path == "/ui/clusters", resp.url
            base = await timed(
                http, server.url + "/pos?cluster=bench", args.runs, headers={"Authorization": ROOT}
            )
            pages = {
                "clusters": "/clusters",
                f"cluster ({args.databases + 1} dbs)": "/c/bench",
                f"database ({args.points} points)": "/c/bench/db/history",
                "database, point picked": "/c/bench/db/history?txid=0000000000000002",
                "restore confirmation": "/c/bench/db/history/restore?timestamp=2100-01-01T00:00:00Z",
            }
            ok = True
            base_median = statistics.median(base)
            print(f"{'page':32} {'median':>8} {'p95':>8} {'worst':>8} {'x /pos':>8}")
            print(f"{'baseline: GET /pos (JSON)':32} {base_median:8.1f} "
                  f"{statistics.quantiles(base, n=20)[-1]:8.1f} {max(base):8.1f} {1:8.2f}")  # fmt: skip
            for label, path in pages.items():
                times = await timed(http, ui + path, args.runs)
                median, p95, worst = (
                    statistics.median(times),
                    statistics.quantiles(times, n=20)[-1],
                    max(times),
                )
                ok &= worst < GOAL_MS
                print(f"{label:32} {median:8.1f} {p95:8.1f} {worst:8.1f} {median / base_median:8.2f}")
        print(f"goal: every page under {GOAL_MS:.0f} ms: {'PASS' if ok else 'FAIL'}")
        return ok
    finally:
        await server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=1000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lfsb-ui-bench-") as tmp:
        return 0 if asyncio.run(run(args, Path(tmp))) else 1


if __name__ == "__main__":
    sys.exit(main())
