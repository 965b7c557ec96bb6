"""Benchmark of the LTX library: compaction, snapshot rebuild and snapshot decode.

Run ``python bench/ltx_bench.py`` (``--quick`` for a smaller workload, ``--workdir DIR`` for the
cache, default ``bench/.work``, ``--runs N`` for best-of-N, default 3). It builds, once per set of
parameters, a deterministic workload in ``<workdir>/<key>/``: a SQLite database (4 KiB pages)
filled with seeded random rows, its LZ4 snapshot (TXID 1) and one incremental LZ4 LTX file per
later committed transaction (TXIDs 2..N+1, pages from ``lfsb.ltx.diff_database``). It then times,
every run in a fresh child process:

* (a) compaction of the incremental files (``lfsb.ltx.compact``);
* (b) snapshot rebuild: the snapshot and every incremental file compacted into a new snapshot;
* (c) decode-db: the rebuilt snapshot written out as a SQLite file (``lfsb.ltx.decode_database``);

and, for each, a baseline that does only the unavoidable byte work: read every input,
``lz4.frame.decompress`` its page block (``file[100:-16]``) and CRC-64 the result, then CRC-64 and
``lz4.frame.compress`` (64 KiB independent blocks, content checksum) the uncompressed page block of
the *real* output (decompressed from the library's output before the clock starts) and write the
compressed bytes to a file. Output (c) is a raw database, so its baseline writes the decompressed
page block instead of compressing anything. Note that ``lz4.frame.decompress`` is slow on large
frames without a content size (the snapshot), which flatters the ratios of (b) and (c).

Seconds are the best of N runs; runs are interleaved (every operation once, N times over) so that
an operation and its baseline share the machine's conditions, and each output file is removed
before its run. MB/s is uncompressed input (the inputs' page blocks) per second; peak RSS is the
child's VmHWM, highest over the runs. The peak RSS of the CLI (``lfsb ltx compact`` of the
incremental files, fresh process) is measured too. Every output must verify and the rebuilt
snapshot must decode to the final database byte for byte (the outputs, in ``<key>/out/``, are
deleted once these checks pass). Targets are printed as PASS/FAIL; the exit status is 0 unless
the workload or a check fails.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import operator
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import lz4.frame
from fastcrc import crc64

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lfsb import ltx  # noqa: E402

if TYPE_CHECKING:
    import sqlite3

MIB = 1 << 20
GENERATOR_VERSION = 2
T0 = 1_700_000_000_000
"""Timestamp (ms) of TXID 0: TXID n is stamped ``T0 + n * 1000`` so the workload is reproducible."""

TIME_RATIO_TARGET = 1.5
RSS_TARGET_MIB = 100

SCHEMA = """
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL, balance INTEGER NOT NULL, bio TEXT
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL, status TEXT NOT NULL,
    total INTEGER NOT NULL, items TEXT NOT NULL, created_at INTEGER NOT NULL
);
CREATE INDEX orders_account ON orders (account_id);
CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, ts INTEGER NOT NULL, payload BLOB);
CREATE INDEX events_ts ON events (ts);
"""
STATUSES = ("new", "paid", "packed", "shipped", "delivered", "returned", "cancelled")
KINDS = ("login", "logout", "view", "search", "checkout", "error", "audit")

# Runs the command given as arguments and prints the peak RSS (KiB) of that one child process.
PEAK_RSS_OF_CHILD = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@dataclass(frozen=True)
class Params:
    """What the generated workload depends on (and is cached by)."""

    db_mib: int
    transactions: int
    page_size: int = 4096
    seed: int = 1

    @property
    def key(self) -> str:
        """Directory name of the cached workload."""
        return (
            f"ltx-{self.db_mib}mib-{self.transactions}tx-p{self.page_size}-s{self.seed}-g{GENERATOR_VERSION}"
        )


# -- workload --------------------------------------------------------------------------------------
class _Rows:
    """Seeded generator of realistic rows (mostly text, some incompressible bytes)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        letters = "etaoinshrdlucmfwypvbgkqjxz"
        self.words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(3000)]
        self.weights = list(itertools.accumulate(1 / rank for rank in range(1, 3001)))  # Zipf, like prose
        self.accounts = 0
        self.orders = 0
        self.events = 0

    def text(self, lo: int, hi: int) -> str:
        return " ".join(self.rng.choices(self.words, cum_weights=self.weights, k=self.rng.randint(lo, hi)))

    def account(self) -> tuple:
        rng = self.rng
        self.accounts += 1
        name = f"{rng.choice(self.words).title()} {rng.choice(self.words).title()}"
        email = f"{rng.choice(self.words)}.{self.accounts}@{rng.choice(self.words)}.example"
        return (name, email, T0 + rng.randrange(10**10), rng.randrange(10**7), self.text(15, 60))

    def order(self) -> tuple:
        rng = self.rng
        self.orders += 1
        items = [
            {"sku": f"{rng.choice(self.words)}-{rng.randrange(10**5)}", "qty": rng.randint(1, 9),
             "price": rng.randrange(100, 10**5), "note": self.text(0, 6)}
            for _ in range(rng.randint(1, 6))
        ]  # fmt: skip
        account = rng.randint(1, max(1, self.accounts))
        total = sum(i["qty"] * i["price"] for i in items)
        return (account, rng.choice(STATUSES), total, json.dumps(items), T0 + rng.randrange(10**10))

    def event(self) -> tuple:
        rng = self.rng
        self.events += 1
        doc = {
            "user": rng.randint(1, max(1, self.accounts)),
            "ip": rng.randbytes(4).hex(),
            "msg": self.text(5, 80),
        }
        payload = json.dumps(doc).encode() + rng.randbytes(rng.choice((0, 0, 0, 8, 16, 32, 128, 512)))
        return (rng.choice(KINDS), T0 + self.events * 1000 + rng.randrange(1000), payload)


def _insert(conn: sqlite3.Connection, rows: _Rows, table: str, n: int) -> None:
    if table == "accounts":
        sql, make = "INSERT INTO accounts VALUES (NULL, ?, ?, ?, ?, ?)", rows.account
    elif table == "orders":
        sql, make = "INSERT INTO orders VALUES (NULL, ?, ?, ?, ?, ?)", rows.order
    else:
        sql, make = "INSERT INTO events VALUES (NULL, ?, ?, ?)", rows.event
    conn.executemany(sql, [make() for _ in range(n)])


def _transaction(conn: sqlite3.Connection, rows: _Rows, txid: int) -> None:
    """One committed transaction of 1 to 4 random statements (every 25th a bulk load)."""
    rng = rows.rng
    conn.execute("BEGIN")
    if txid % 25 == 0:
        _insert(conn, rows, "events", 1500)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(("orders", "events", "accounts", "pay", "status", "purge"))
        if op in ("orders", "events", "accounts"):
            _insert(conn, rows, op, rng.randint(5, 150))
        elif op == "pay":
            ids = [
                (rng.randint(-5000, 5000), rng.randint(1, rows.accounts)) for _ in range(rng.randint(5, 120))
            ]
            conn.executemany("UPDATE accounts SET balance = balance + ? WHERE id = ?", ids)
        elif op == "status":
            ids = [(rng.choice(STATUSES), rng.randint(1, rows.orders)) for _ in range(rng.randint(10, 150))]
            conn.executemany("UPDATE orders SET status = ? WHERE id = ?", ids)
        else:
            (low,) = conn.execute("SELECT coalesce(min(id), 0) FROM events").fetchone()
            conn.execute("DELETE FROM events WHERE id < ?", (low + rng.randint(20, 300),))
    conn.execute("COMMIT")


def _db_checksum(page_checksums: list[int]) -> int:
    return ltx.FLAG | functools.reduce(operator.xor, page_checksums, 0)


def build_workload(path: Path, p: Params) -> None:
    """Generate the workload into ``path`` (a fresh directory); ``meta.json`` is written last."""
    import sqlite3

    rows = _Rows(random.Random(p.seed))
    db_path = path / "db.sqlite"
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute(f"PRAGMA page_size = {p.page_size}")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA synchronous = OFF")
    conn.executescript(SCHEMA)
    target_pages = p.db_mib * MIB // p.page_size
    while conn.execute("PRAGMA page_count").fetchone()[0] < target_pages:
        conn.execute("BEGIN")
        _insert(conn, rows, "accounts", 100)
        _insert(conn, rows, "orders", 300)
        _insert(conn, rows, "events", 200)
        conn.execute("COMMIT")

    checksums: list[int] = []
    with open(db_path, "rb") as db:
        ltx.diff_database(db, p.page_size, checksums)
    snapshot = ltx.format_filename(1, 1)
    with open(db_path, "rb") as db, open(path / snapshot, "wb") as out:
        _, trailer = ltx.encode_database(db, out, compress=True, txid=1, timestamp=T0 + 1000)
    checksum = _db_checksum(checksums)
    if trailer.post_apply_checksum != checksum:
        raise RuntimeError("snapshot checksum differs from the database checksum")

    names = []
    for txid in range(2, p.transactions + 2):
        _transaction(conn, rows, txid)
        with open(db_path, "rb") as db:
            changed = ltx.diff_database(db, p.page_size, checksums)
        header = ltx.Header(
            page_size=p.page_size,
            commit=len(checksums),
            min_txid=txid,
            max_txid=txid,
            flags=ltx.FLAG_COMPRESS_LZ4,
            timestamp=T0 + txid * 1000,
            pre_apply_checksum=checksum,
        )
        checksum = _db_checksum(checksums)
        name = ltx.format_filename(txid, txid)
        with open(path / name, "wb") as out:
            enc = ltx.Encoder(out, header)
            for pgno, data in changed:
                enc.write_page(pgno, data)
            enc.close(checksum)
        names.append(name)
    conn.close()

    data = db_path.read_bytes()
    meta = {
        "params": asdict(p),
        "snapshot": snapshot,
        "incrementals": names,
        "logical_bytes": {n: len(_page_block(path / n)) for n in [snapshot, *names]},
        "final_checksum": f"{checksum:016x}",
        "final_db_size": len(data),
        "final_db_sha256": hashlib.sha256(data).hexdigest(),
    }
    db_path.unlink()
    (path / "meta.json").write_text(json.dumps(meta, indent=1))


def workload(workdir: Path, p: Params) -> tuple[Path, dict]:
    """The cached workload for ``p``, generated first if missing."""
    path = workdir / p.key
    if not (path / "meta.json").exists():
        tmp = workdir / f"{p.key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        print(f"generating workload {path} (cached for later runs) ...", flush=True)
        start = time.perf_counter()
        build_workload(tmp, p)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return path, json.loads((path / "meta.json").read_text())


# -- measured operations (each run in a fresh child process) ---------------------------------------
def _page_block(path: Path) -> bytes:
    """The uncompressed page block of an LZ4 LTX file."""
    with open(path, "rb") as f, memoryview(f.read()) as mv:
        return lz4.frame.decompress(mv[100:-16])


def _inputs(wl: Path, meta: dict, op: str) -> list[Path]:
    names = meta["incrementals"] if op == "compact" else [meta["snapshot"], *meta["incrementals"]]
    return [wl / n for n in names]


def _output(wl: Path, name: str) -> Path:
    """An output path, its previous file removed (rewriting a file in place costs extra on ext4)."""
    path = wl / "out" / name
    path.unlink(missing_ok=True)
    return path


class Timing(NamedTuple):
    """Wall-clock and CPU seconds of one run."""

    wall: float
    cpu: float


class _Stopwatch:
    """Wall-clock and CPU time since it was made."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def read(self) -> Timing:
        return Timing(time.perf_counter() - self._wall, time.process_time() - self._cpu)


def _lib_compact(wl: Path, meta: dict, op: str) -> Timing:
    """(a) or (b): ``lfsb.ltx.compact`` of files opened as the CLI opens them."""
    paths = _inputs(wl, meta, op)
    output = _output(wl, f"{op}.ltx")
    start = _Stopwatch()
    with ExitStack() as stack:
        files = [stack.enter_context(open(p, "rb")) for p in paths]
        with open(output, "wb") as out:
            ltx.compact(files, out, compress=True)
    return start.read()


def _lib_decode(wl: Path, meta: dict, op: str) -> Timing:
    """(c): ``lfsb.ltx.decode_database`` of the rebuilt snapshot."""
    output = _output(wl, "decoded.db")
    start = _Stopwatch()
    with open(wl / "out" / "rebuild.ltx", "rb") as f, open(output, "wb") as out:
        ltx.decode_database(f, out)
    return start.read()


def _baseline(wl: Path, meta: dict, op: str) -> Timing:
    """The byte work that ``op`` cannot avoid (see the module docstring)."""
    kind = op.removeprefix("baseline-")
    paths = [wl / "out" / "rebuild.ltx"] if kind == "decode" else _inputs(wl, meta, kind)
    output = None if kind == "decode" else _page_block(wl / "out" / f"{kind}.ltx")
    dest = _output(wl, f"{op}.out")
    go_iso = crc64.go_iso
    start = _Stopwatch()
    written = []
    for p in paths:
        with open(p, "rb") as f, memoryview(f.read()) as mv:
            block = lz4.frame.decompress(mv[100:-16])
        go_iso(block)
        if output is None:
            written.append(block)
    if output is not None:
        go_iso(output)
        written.append(
            lz4.frame.compress(
                output, block_size=lz4.frame.BLOCKSIZE_MAX64KB, block_linked=False, content_checksum=True
            )
        )
    with open(dest, "wb") as out:
        for data in written:
            out.write(data)
    return start.read()


OPS: dict[str, Callable[[Path, dict, str], Timing]] = {
    "compact": _lib_compact,
    "rebuild": _lib_compact,
    "decode": _lib_decode,
    "baseline-compact": _baseline,
    "baseline-rebuild": _baseline,
    "baseline-decode": _baseline,
}


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(op: str, wl: Path) -> None:
    """Run one operation on the workload ``wl`` and print ``{"wall": …, "cpu": …, "rss_kib": …}``."""
    meta = json.loads((wl / "meta.json").read_text())
    timing = OPS[op](wl, meta, op)
    print(json.dumps({**timing._asdict(), "rss_kib": _peak_rss_kib()}))


class Result(NamedTuple):
    """An operation's best wall and CPU seconds over the runs and its highest peak RSS."""

    wall: float
    cpu: float
    rss_kib: int


def measure(wl: Path, runs: int) -> dict[str, Result]:
    """Every operation's :class:`Result`, each run in a fresh child process.

    Runs are interleaved (every operation once, ``runs`` times over) so that an operation and its
    baseline see the same conditions on a busy machine.
    """
    samples: dict[str, list[dict]] = {op: [] for op in OPS}
    for _ in range(runs):
        for op in OPS:
            cmd = [sys.executable, __file__, "--child", op, "--workdir", str(wl)]
            proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
            samples[op].append(json.loads(proc.stdout.splitlines()[-1]))
    return {
        op: Result(min(r["wall"] for r in rs), min(r["cpu"] for r in rs), max(r["rss_kib"] for r in rs))
        for op, rs in samples.items()
    }


def cli_compact_rss(wl: Path, meta: dict) -> int:
    """Peak RSS (KiB) of ``lfsb ltx compact`` (the CLI, in a fresh process) on the incremental files."""
    paths = [str(p) for p in _inputs(wl, meta, "compact")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    cli = [sys.executable, "-m", "lfsb.cli", "ltx", "compact", "-o", str(_output(wl, "cli-compact.ltx"))]
    cmd = [sys.executable, "-c", PEAK_RSS_OF_CHILD, *cli, *paths]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return int(proc.stdout.split()[-1])


# -- checks and report -----------------------------------------------------------------------------
def check_outputs(wl: Path, meta: dict) -> None:
    """The outputs must verify, and the rebuilt snapshot must be the final database."""
    final = int(meta["final_checksum"], 16)
    for name in ("compact.ltx", "rebuild.ltx", "cli-compact.ltx"):
        with open(wl / "out" / name, "rb") as f:
            _, trailer, _ = ltx.verify(f)
        if trailer.post_apply_checksum != final:
            raise RuntimeError(f"{name}: post-apply checksum is not the final database's")
    data = (wl / "out" / "decoded.db").read_bytes()
    if len(data) != meta["final_db_size"] or hashlib.sha256(data).hexdigest() != meta["final_db_sha256"]:
        raise RuntimeError("decoded snapshot differs from the final database")


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 MiB database, 50 transactions")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".work")
    parser.add_argument("--runs", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--child", choices=sorted(OPS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.workdir)
        return 0

    params = Params(16, 50) if args.quick else Params(64, 200)
    wl, meta = workload(args.workdir.resolve(), params)
    (wl / "out").mkdir(exist_ok=True)
    sizes = meta["logical_bytes"]
    n_inc = len(meta["incrementals"])
    inc_bytes = sum(sizes[n] for n in meta["incrementals"])
    snap_bytes = sizes[meta["snapshot"]]
    print(f"workload: {wl}")
    print(
        f"  snapshot {snap_bytes / MIB:.1f} MiB uncompressed, {n_inc} incremental files "
        f"{inc_bytes / MIB:.1f} MiB uncompressed ({inc_bytes / n_inc / 1024:.0f} KiB average)"
    )
    print(f"  best of {args.runs} runs, each in a fresh process", flush=True)

    load_before = os.getloadavg()[0]
    results = measure(wl, args.runs)
    cli_rss = cli_compact_rss(wl, meta)
    check_outputs(wl, meta)
    rebuild_out = len(_page_block(wl / "out" / "rebuild.ltx"))
    compact_out = len(_page_block(wl / "out" / "compact.ltx"))
    shutil.rmtree(wl / "out")  # kept only when a check fails
    input_bytes = {"compact": inc_bytes, "rebuild": snap_bytes + inc_bytes, "decode": rebuild_out}
    labels = {"compact": "(a) compaction", "rebuild": "(b) snapshot rebuild", "decode": "(c) decode-db"}

    print()
    print(f"{'operation':<22}{'seconds':>9}{'MB/s':>9}{'peak RSS':>12}{'baseline s':>12}{'base MB/s':>11}"
          f"{'base RSS':>12}{'ratio':>8}{'cpu ratio':>11}  target")  # fmt: skip
    verdicts = []
    for op, label in labels.items():
        secs, cpu, rss = results[op]
        base_secs, base_cpu, base_rss = results[f"baseline-{op}"]
        ratio = secs / base_secs
        mbps, base_mbps = input_bytes[op] / secs / 1e6, input_bytes[op] / base_secs / 1e6
        if op == "decode":
            target = "(none)"
        else:
            ok = ratio <= TIME_RATIO_TARGET
            verdicts.append(ok)
            target = f"<= {TIME_RATIO_TARGET}x {'PASS' if ok else 'FAIL'}"
        print(f"{label:<22}{secs:>9.3f}{mbps:>9.1f}{_mib(rss):>12}{base_secs:>12.3f}{base_mbps:>11.1f}"
              f"{_mib(base_rss):>12}{ratio:>7.2f}x{cpu / base_cpu:>10.2f}x  {target}")  # fmt: skip
    rss_ok = cli_rss < RSS_TARGET_MIB * 1024
    verdicts.append(rss_ok)
    print()
    print(f"output page blocks: compaction {compact_out / MIB:.1f} MiB, snapshot {rebuild_out / MIB:.1f} MiB")
    print(f"peak RSS of CLI compaction (`lfsb ltx compact` of the incremental files): {_mib(cli_rss)} "
          f"(target < {RSS_TARGET_MIB} MiB) {'PASS' if rss_ok else 'FAIL'}")  # fmt: skip
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"
    print(
        f"cpu ratio: the ratio of CPU seconds (best of {args.runs}), less sensitive to a busy machine; {load}"
    )
    print("checks: outputs verify, post-apply checksums match, the rebuilt snapshot is the final database")
    print(f"targets: {'all PASS' if all(verdicts) else 'some FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
