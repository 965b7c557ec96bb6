"""Metrics (Prometheus text format, every name prefixed ``lfsb_``) and Sentry error reporting."""

from __future__ import annotations

import inspect
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sentry_sdk
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .storage import StorageError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The server's metrics, on a registry of their own (one per server instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._db_path: Path | None = None
        r = self.registry
        self.tx_total = Counter("lfsb_tx", "Transactions ingested.", ["cluster"], registry=r)
        self.tx_files = Counter(
            "lfsb_tx_files", "LTX files ingested (accepted POST /db/tx).", ["cluster"], registry=r
        )
        self.tx_bytes = Counter("lfsb_tx_bytes", "Bytes of LTX files ingested.", ["cluster"], registry=r)
        self.tx_seconds = Histogram(
            "lfsb_tx_request_duration_seconds",
            "Latency of POST /db/tx, any outcome.",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.pos_mismatches = Counter(
            "lfsb_position_mismatches", "POST /db/tx rejected with EPOSMISMATCH.", ["cluster"], registry=r
        )
        self.compaction_runs = Counter("lfsb_compaction_runs", "Compaction steps run.", ["level"], registry=r)
        self.compaction_failures = Counter(
            "lfsb_compaction_failures", "Compaction steps that failed.", ["level"], registry=r
        )
        self.compaction_seconds = Histogram(
            "lfsb_compaction_duration_seconds", "Duration of one compaction step.", ["level"], registry=r
        )
        self.auth_failures = Counter(
            "lfsb_auth_failures", "Refused authentications, by reason.", ["reason"], registry=r
        )
        self.storage_requests = Counter(
            "lfsb_storage_requests",
            "Object storage calls made (a listing of many pages counts once), by operation.",
            ["operation"],
            registry=r,
        )
        self.storage_errors = Counter(
            "lfsb_storage_errors",
            "Object storage requests that failed (after retries).",
            ["operation"],
            registry=r,
        )
        self.restore_checks = Counter(
            "lfsb_restore_checks", "Restore checks run, by outcome (ok or failed).", ["outcome"], registry=r
        )
        self.scrub_objects = Counter("lfsb_scrub_objects", "Objects read back by the scrub.", registry=r)
        self.scrub_bytes = Counter("lfsb_scrub_bytes", "Bytes read back by the scrub.", registry=r)
        self.scrub_corrupt = Counter(
            "lfsb_scrub_corrupt_found", "Objects the scrub found missing or corrupt.", registry=r
        )
        self.scrub_progress = Gauge(
            "lfsb_scrub_progress_ratio",
            "Share of the objects in storage verified within the last LFSB_SCRUB_INTERVAL.",
            registry=r,
        )
        self.storage_up = Gauge(
            "lfsb_storage_up", "1 if object storage answered the last health check, else 0.", registry=r
        )
        self.storage_up.set(1)
        self.restore_check_interval = Gauge(
            "lfsb_restore_check_interval_seconds", "LFSB_VERIFY_INTERVAL, in seconds.", registry=r
        )
        self.last_success: dict[int, float] = {}
        self.compaction_failing_since: dict[int, float] = {}
        """Levels whose runs fail, and since when (cleared by a run without failure)."""

    def compaction_succeeded(self, level: int) -> None:
        """Remember when ``level`` last ran without failure."""
        self.last_success[level] = time.time()
        self.compaction_failing_since.pop(level, None)

    def compaction_failed(self, level: int) -> None:
        """Remember that a run of ``level`` had a failure (and since when they fail)."""
        self.compaction_failing_since.setdefault(level, time.time())

    def add_state_collector(self, db_path: Path) -> None:
        """Gauges read from the metadata db at scrape time: files, bytes, pending work, and the
        per-database families (HWM lag, last check, last level-1 upload, corrupt objects)."""
        self.registry.register(_StateCollector(db_path, self))
        self._db_path = db_path

    def render(self) -> Iterator[bytes]:
        """The Prometheus text exposition, in chunks of about 64 KiB (blocking at each step: run it on a
        worker thread). The per-database families are written straight from the metadata db's rows, so
        a scrape of 100,000 databases never holds their samples in memory at once."""
        yield generate_latest(self.registry)
        if self._db_path is not None:
            yield from _per_database_text(self._db_path)


PER_DATABASE_FAMILIES = (
    (
        "lfsb_hwm_lag",
        "Current TXID minus HWM (TXIDs not yet in storage).",
        "SELECT cluster, name, txid - hwm FROM databases WHERE deleted_at IS NULL",
    ),
    (
        "lfsb_restore_check_last_success_timestamp_seconds",
        "When the last restore check that passed ended, per database.",
        "SELECT * FROM (SELECT d.cluster, d.name, (SELECT MAX(checked_at) / 1000.0 FROM restore_checks"
        " WHERE db_id = d.id AND ok = 1) AS at FROM databases d WHERE d.deleted_at IS NULL)"
        " WHERE at IS NOT NULL",
    ),
    (
        "lfsb_restore_check_ok",
        "1 if the newest restore check of the database passed, 0 if it failed.",
        "SELECT * FROM (SELECT d.cluster, d.name, (SELECT ok FROM restore_checks WHERE db_id = d.id"
        " ORDER BY checked_at DESC, id DESC LIMIT 1) AS ok FROM databases d WHERE d.deleted_at IS NULL)"
        " WHERE ok IS NOT NULL",
    ),
    (
        "lfsb_level1_last_upload_timestamp_seconds",
        "When the newest level-1 file of the database was uploaded.",
        "SELECT d.cluster, d.name, MAX(f.created_at) / 1000.0 FROM databases d"
        " JOIN remote_files f ON f.db_id = d.id AND f.level = 1 WHERE d.deleted_at IS NULL GROUP BY d.id",
    ),
    (
        "lfsb_corrupt_objects",
        "Objects in storage the scrub found corrupt or missing, per database.",
        "SELECT d.cluster, d.name, COUNT(f.corrupt) FROM databases d"
        " LEFT JOIN remote_files f ON f.db_id = d.id WHERE d.deleted_at IS NULL GROUP BY d.id",
    ),
)
"""(name, help, query of (cluster, database, value)) of every gauge with a sample per database."""

CHUNK = 64 * 1024


def _label(value: str) -> str:
    """A label value escaped for the exposition format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _per_database_text(db_path: Path) -> Iterator[bytes]:
    """The per-database gauge families as exposition text, in chunks (one read transaction)."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
    except sqlite3.Error as e:
        log.warning("metrics: cannot read the metadata db error=%s", e)
        return
    try:
        conn.execute("BEGIN")
        for name, help_text, query in PER_DATABASE_FAMILIES:
            lines = [f"# HELP {name} {help_text}\n# TYPE {name} gauge\n"]
            size = 0
            for cluster, database, value in conn.execute(query):
                labels = f'cluster="{_label(cluster)}",database="{_label(database)}"'
                line = f"{name}{{{labels}}} {floatToGoString(value)}\n"
                lines.append(line)
                size += len(line)
                if size >= CHUNK:
                    yield "".join(lines).encode()
                    lines, size = [], 0
            yield "".join(lines).encode()
    except sqlite3.Error as e:
        log.warning("metrics: cannot read the metadata db error=%s", e)
    finally:
        conn.close()


class _StateCollector(Collector):
    """Reads per-level state from the metadata db on every scrape."""

    def __init__(self, db_path: Path, metrics: Metrics) -> None:
        self.db_path = db_path
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        files = GaugeMetricFamily("lfsb_level_files", "LTX files per level (0 = local L0).", labels=["level"])
        size = GaugeMetricFamily("lfsb_level_bytes", "Bytes of LTX files per level.", labels=["level"])
        pending = GaugeMetricFamily(
            "lfsb_compaction_pending", "Databases with work waiting for the next L1 run.", labels=["level"]
        )
        age = GaugeMetricFamily(
            "lfsb_compaction_last_success_age_seconds",
            "Seconds since the last successful compaction run per level.",
            labels=["level"],
        )
        try:
            conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        except sqlite3.Error as e:
            log.warning("metrics: cannot read the metadata db error=%s", e)
            return
        try:
            rows = conn.execute(
                "SELECT 0, COUNT(*), COALESCE(SUM(size), 0) FROM l0_files"
                " UNION ALL SELECT level, COUNT(*), SUM(size) FROM remote_files GROUP BY level"
            )
            for level, count, total in rows:
                files.add_metric([str(level)], count)
                size.add_metric([str(level)], total)
            (waiting,) = conn.execute(
                "SELECT COUNT(*) FROM databases d WHERE d.deleted_at IS NULL"
                " AND d.txid > (SELECT COALESCE(MAX(max_txid), 0)"
                " FROM remote_files WHERE db_id = d.id AND level = 1)"
            ).fetchone()
            pending.add_metric(["1"], waiting)
        except sqlite3.Error as e:
            log.warning("metrics: cannot read the metadata db error=%s", e)
        finally:
            conn.close()
        now = time.time()
        for level, at in sorted(self.metrics.last_success.items()):
            age.add_metric([str(level)], now - at)
        yield from (files, size, pending, age)


def init_sentry(dsn: str | None) -> bool:
    """Report errors to Sentry when a DSN is set (never blocks start-up); True if enabled."""
    if not dsn:
        return False
    from sentry_sdk.integrations.aiohttp import AioHttpIntegration

    sentry_sdk.init(
        dsn=dsn,
        integrations=[AioHttpIntegration()],
        shutdown_timeout=2,
        traces_sample_rate=0,
        send_default_pii=False,
        before_send=scrub_event,
    )
    log.info("sentry enabled")
    return True


SECRET_HEADERS = frozenset({"authorization", "cookie", "x-csrf-token"})


def scrub_event(event: dict[str, Any], hint: object = None) -> dict[str, Any]:
    """Sentry's ``before_send``: no token or cookie leaves the server in an event."""
    request = event.get("request") or {}
    headers = request.get("headers")
    if isinstance(headers, dict):
        for key in list(headers):
            if key.lower() in SECRET_HEADERS:
                headers[key] = "[Filtered]"
    request.pop("cookies", None)
    return event


def report_exception(exc: BaseException, **tags: str) -> None:
    """Send an exception to Sentry (if enabled) tagged with e.g. cluster, database and level."""
    with sentry_sdk.new_scope() as scope:
        for key, value in tags.items():
            scope.set_tag(key, value)
        sentry_sdk.capture_exception(exc)


def flush_sentry(timeout: float = 2.0) -> None:
    """Send pending Sentry events, waiting at most ``timeout`` seconds."""
    client = sentry_sdk.get_client()
    if client.is_active():
        client.flush(timeout=timeout)


def timed(histogram: Histogram) -> Callable[[], float]:
    """Start a timer; calling the result observes the elapsed seconds in ``histogram``."""
    start = time.perf_counter()

    def _stop() -> float:
        elapsed = time.perf_counter() - start
        histogram.observe(elapsed)
        return elapsed

    return _stop


class CountingObjectStore:
    """Wraps an object store so that every call counts in ``lfsb_storage_requests`` and every failed one
    in ``lfsb_storage_errors``."""

    def __init__(self, inner: object, metrics: Metrics) -> None:
        self._inner = inner
        self._requests = metrics.storage_requests
        self._errors = metrics.storage_errors

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def _counted(*args: object, **kwargs: object) -> object:
            self._requests.labels(name).inc()
            try:
                return await attr(*args, **kwargs)
            except StorageError:
                self._errors.labels(name).inc()
                raise

        return _counted

    def __str__(self) -> str:
        return str(self._inner)
