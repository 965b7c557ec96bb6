"""``lfsb-server``: configuration, object store, store, compaction scheduler and HTTP server."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

from aiohttp import web

from ..config import Config, load_config
from ..errors import LfsbError
from ..notify import Notifier
from ..observability import flush_sentry, init_sentry
from ..storage import LocalStore, ObjectStore, StorageError
from ..store.compaction import Scheduler
from ..store.deletion import purge_loop
from ..store.health import Monitor
from ..store.recovery import Readiness, begin_run, end_run, recover
from ..store.scrub import Scrubber
from ..store.store import Store
from ..store.verify import Verifier
from . import connections
from .app import INFLIGHT_KEY, create_app, create_metrics_app
from .logs import setup_logging

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 30.0
RECOVERY_RETRY = 5
GC_THRESHOLDS = (50_000, 20, 100)
"""Collector thresholds once serving (Python's default is (700, 10, 10)): see :func:`settle_heap`."""


class StartupError(Exception):
    """The server cannot start; the message names the setting and the problem."""


def open_object_store(config: Config) -> ObjectStore:
    """S3 when ``BUCKET_NAME`` is set, else the embedded local-directory store."""
    if config.s3 is None:
        log.warning(
            "BUCKET_NAME is not set: backups are stored in the local directory path=%s", config.objects_path
        )
        return LocalStore(config.objects_path)
    from ..storage.s3 import S3Store  # aiobotocore takes a while to import: only when S3 is used

    return S3Store.from_settings(config.s3)


def _base_url(runner: web.AppRunner) -> str:
    """The base URL a runner listens on (the real port when configured with port 0)."""
    host, port = runner.addresses[0][:2]
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


class Server:
    """The whole server: start it, serve, stop it gracefully."""

    def __init__(self, config: Config, objects: ObjectStore | None = None) -> None:
        """``objects`` replaces the store the configuration selects (tests tune S3 retries and timeouts)."""
        self.config = config
        self.objects = objects if objects is not None else open_object_store(config)
        self.store = Store(config, self.objects)
        self.scheduler = Scheduler(self.store)
        self.notifier = Notifier(config.notify_url, config.heartbeat_url)
        self.verifier = Verifier(self.store, self.notifier)
        self.monitor = Monitor(self.store, self.notifier)
        self.scrubber = Scrubber(self.store, self.notifier)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._purger: asyncio.Task | None = None
        self._recovery: asyncio.Task | None = None
        self.readiness = Readiness()

    @property
    def url(self) -> str:
        """The base URL the server listens on (the real port when configured with port 0)."""
        return _base_url(self._runner)

    async def start(self) -> None:
        """Listen, open the data directory and storage, then recover from storage in the background
        (until a cluster is recovered, its routes answer 503) and start compaction after it."""
        config = self.config
        self._app = create_app(
            self.store,
            self.readiness,
            serve_metrics=config.metrics_bind is None and config.loopback,
            verifier=self.verifier,
        )
        # auto_decompress=False: a request body is never inflated (any Content-Encoding gets a 415).
        self._runner = web.AppRunner(
            self._app,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            auto_decompress=False,
            keepalive_timeout=connections.IDLE_TIMEOUT,  # also closes a connection whose headers never end
        )
        await self._runner.setup()
        assert self._runner.server is not None
        limit = connections.connection_limit(config.max_connections)
        connections.limit_connections(self._runner.server, limit)
        self._site = web.TCPSite(self._runner, config.host, config.port)
        try:
            await self._site.start()
        except OSError as e:
            raise StartupError(
                f"LFSB_BIND: cannot listen on {config.host}:{config.port}: {e.strerror or e}"
            ) from None
        try:
            full_scan = await self._open()
            if config.metrics_bind is not None:
                await self._serve_metrics(*config.metrics_bind)
            elif not config.loopback:
                log.info(
                    "/metrics is not served on a non-loopback address: set LFSB_METRICS_BIND to serve it"
                )
        except BaseException:
            await self._runner.cleanup()  # stop listening: nothing else was started
            self._runner = self._site = None
            raise
        self._log_access_mode()
        log.info("server listening url=%s data=%s storage=%s", self.url, config.data_path, self.objects)
        self._recovery = asyncio.create_task(self._recover(full_scan), name="recovery")

    async def _open(self) -> bool:
        """Open the data directory and check storage (listening already); whether storage must be
        scanned in full."""
        config = self.config
        try:
            await self.store.open()
        except OSError as e:
            raise StartupError(f"LFSB_DATA_PATH: cannot use {config.data_path}: {e.strerror or e}") from None
        try:
            await self.objects.check()
        except StorageError as e:
            setting = "BUCKET_NAME" if config.s3 else "LFSB_DATA_PATH"
            raise StartupError(f"{setting}: object storage unusable: {e}") from None
        return not await begin_run(self.store)

    async def _recover(self, full_scan: bool) -> None:
        """Recover from storage while serving (retried while storage fails), then start the scheduled
        work: compaction, retention, purges, restore checks, health monitoring and the scrub."""
        while True:
            try:
                await recover(self.store, self.readiness, full_scan)
                break
            except StorageError as e:
                log.error("recovery from storage failed, retrying in %ds: %s", RECOVERY_RETRY, e)
                await asyncio.sleep(RECOVERY_RETRY)
        self.readiness.finish()
        self.scheduler.start()
        self._purger = asyncio.create_task(purge_loop(self.store), name="purge")
        self.notifier.start()
        self.verifier.start()
        self.monitor.start()
        self.scrubber.start()

    async def wait_recovered(self) -> None:
        """Until the recovery at start is done."""
        if self._recovery is not None:
            await asyncio.shield(self._recovery)

    def _log_access_mode(self) -> None:
        if self.store.access.token_mode:
            log.info("access: tokens required")
        elif not self.config.loopback:
            log.warning(
                "access: LFSB_AUTH=open on a non-loopback address: anyone who can reach %s:%d and knows a"
                " cluster name can read, restore and delete its backups",
                self.config.host,
                self.config.port,
            )
        else:
            log.warning("access: open (loopback only): `Authorization: cluster NAME` is admin of NAME")

    async def _serve_metrics(self, host: str, port: int) -> None:
        self._metrics_runner = web.AppRunner(create_metrics_app(self.store), handle_signals=False)
        await self._metrics_runner.setup()
        try:
            await web.TCPSite(self._metrics_runner, host, port).start()
        except OSError as e:
            raise StartupError(
                f"LFSB_METRICS_BIND: cannot listen on {host}:{port}: {e.strerror or e}"
            ) from None

    @property
    def metrics_url(self) -> str | None:
        """The URL of ``/metrics`` on the separate ``LFSB_METRICS_BIND`` address, if there is one."""
        if self._metrics_runner is None:
            return None
        return _base_url(self._metrics_runner) + "/metrics"

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests and the running compaction step finish, close."""
        if self._site is not None:
            site, self._site = self._site, None  # a second stop() has nothing left to stop
            await site.stop()  # stop accepting; open connections carry on

            async def _drain() -> None:
                if not await self._app[INFLIGHT_KEY].wait_idle(SHUTDOWN_TIMEOUT):
                    log.warning("shutdown: requests still in flight after %ss", SHUTDOWN_TIMEOUT)

            recovered = self._recovery is not None and self._recovery.done()
            for task in (self._recovery, self._purger):
                if task is not None:
                    task.cancel()
            await asyncio.gather(
                _drain(),
                self.scheduler.stop(SHUTDOWN_TIMEOUT),
                self.verifier.stop(),
                self.monitor.stop(),
                self.scrubber.stop(),
            )
            await self.notifier.stop()
            if recovered:
                await end_run(self.store)  # the metadata db matches storage: the next start need not list it
        if self._runner is not None:
            await self._runner.cleanup()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        await self.store.close()
        await self.objects.close()
        await asyncio.to_thread(flush_sentry)
        log.info("server stopped")


def settle_heap() -> None:
    """Freeze what startup built (modules, configuration, clients) out of the garbage collector's way and
    let it run less often. Requests allocate many short-lived objects that reference counting frees, and
    every collection holds the GIL: it pauses the event loop."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(config: Config) -> None:
    """Run the server until SIGTERM or SIGINT, then shut down gracefully."""
    server = Server(config)
    try:
        await server.start()
        settle_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.stop()


def run(config: Config) -> int:
    """Run the server with logging set up; the process exit code."""
    setup_logging(config.log_level, config.log_format)
    init_sentry(config.sentry_dsn)
    try:
        asyncio.run(serve(config))
    except StartupError as e:
        log.error("cannot start: %s", e)
        return 1
    return 0


def main() -> None:
    """Entry point of ``lfsb-server`` (configured by environment variables only)."""
    try:
        config = load_config()
    except LfsbError as e:
        sys.stderr.write(f"lfsb-server: error: {e.message}\n")
        sys.exit(2)
    sys.exit(run(config))
