"""The aiohttp application: LiteFS Cloud's HTTP API over the store, with auth and error mapping."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import sentry_sdk
from aiohttp import hdrs, web

from ..errors import Kind, LfsbError, bad_input, busy, internal
from ..ltx import LTXError, decode_database, format_timestamp, format_txid, parse_timestamp, parse_txid
from ..names import validate_cluster, validate_cluster_id, validate_database
from ..observability import CONTENT_TYPE, report_exception, timed
from ..storage import StorageError
from ..store.plan import Point, point_at, point_before, restorable_points
from ..store.records import Database
from ..store.restore import import_database, restore
from ..store.store import Store
from ..store.verify import Verifier, cluster_status

log = logging.getLogger(__name__)

STORE_KEY = web.AppKey("store", Store)
VERIFIER_KEY = web.AppKey("verifier", Verifier)
CLUSTER_KEY = web.RequestKey("cluster", str)
STREAM_CHUNK = 256 * 1024
BODY_BUFFER = 1024 * 1024
BODY_IDLE_TIMEOUT = 60.0
"""Seconds a request body may stall before the request is abandoned (slow-loris guard)."""
BODY_GRACE = 30.0
MIN_BODY_RATE = 16 * 1024
"""A body must arrive at ``MIN_BODY_RATE`` bytes/s on average, after ``BODY_GRACE`` seconds: a client
trickling a byte now and then cannot hold a request open forever."""
MAX_BODIES = 256
"""Request bodies received at once; another gets 503 ``EBUSY`` (LiteFS retries within a second)."""
BODY_MEMORY = 64 * 1024 * 1024
"""Bytes of all bodies held in memory at once; past it, bodies spill to disk at once."""
RETRY_AFTER = 5
"""Seconds a client is asked to wait after a 503 (storage down, or a limit reached for now)."""
PUBLIC_PATHS = frozenset({"/healthz", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InFlight:
    """Counts requests being handled, so a shutdown can wait for them before closing connections."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight (at most ``timeout`` seconds); True if idle."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


INFLIGHT_KEY = web.AppKey("inflight", InFlight)


# -- responses --------------------------------------------------------------------------------------
def json_response(data: Any) -> web.Response:
    """A success body as Go's ``json.MarshalIndent(v, "", "  ")`` writes it (HTML characters escaped)."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return web.Response(text=text, content_type="application/json")


def error_response(err: LfsbError) -> web.Response:
    """An error body as Go's ``json.Encoder`` writes it: compact, with a trailing newline."""
    text = json.dumps(err.to_json(), separators=(",", ":"), ensure_ascii=False) + "\n"
    resp = web.Response(status=err.status, text=text, content_type="application/json")
    if err.kind is Kind.UNAVAILABLE:
        resp.headers["Retry-After"] = str(RETRY_AFTER)
    return resp


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from a file write, or SQLITE_FULL from the metadata db (which reports no errno)."""
    if isinstance(exc, sqlite3.OperationalError):
        return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _as_lfsb_error(exc: BaseException, request: web.Request) -> LfsbError:
    if isinstance(exc, LfsbError):
        return exc
    if isinstance(exc, web.HTTPException):
        code = {404: "ENOTFOUND", 405: "EMETHOD", 413: "ETOOLARGE"}.get(exc.status, "EHTTP")
        message = {404: "not found", 405: "method not allowed"}.get(exc.status, exc.reason)
        kind = next((k for k in Kind if k.value == exc.status), Kind.VALIDATION)
        return LfsbError(
            kind, code, f"{message}: {request.method} {request.path}" if exc.status in (404, 405) else message
        )
    if isinstance(exc, StorageError):
        return LfsbError(Kind.UNAVAILABLE, "ESTORAGE", f"object storage unavailable: {exc}")
    if _disk_full(exc):
        return LfsbError(Kind.INSUFFICIENT_STORAGE, "ENOSPACE", "no space left in the data directory")
    return internal("internal error")


# -- middleware -------------------------------------------------------------------------------------
@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON error with its status; log our own faults with the traceback."""
    try:
        with request.app[INFLIGHT_KEY]:
            return await handler(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and _client_gone(request):
            # The client went away mid-body or mid-download: nobody to answer, nothing of ours to report
            # (re-raised, aiohttp would log it as an error with a traceback).
            log.info("client disconnected method=%s path=%s", request.method, request.path)
            return web.Response(status=499)  # never delivered; it only shows in the access log
        err = _as_lfsb_error(exc, request)
        if err.kind is Kind.INTERNAL or err.code == "ESTORAGE":  # EBUSY is a limit working, not a fault
            report_exception(exc, cluster=request.get(CLUSTER_KEY, ""), database=request.query.get("db", ""))
            log.error(
                "request failed method=%s path=%s cluster=%s database=%s code=%s",
                request.method,
                request.path,
                request.get(CLUSTER_KEY, ""),
                request.query.get("db", ""),
                err.code,
                exc_info=exc,
            )
        resp = error_response(err)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp


def too_large(limit: int) -> LfsbError:
    """413 ``ETOOLARGE`` for a body over ``LFSB_MAX_TX_BYTES``."""
    return LfsbError(Kind.TOO_LARGE, "ETOOLARGE", f"request body larger than {limit} bytes")


def check_request(request: web.Request) -> None:
    """Refuse, from the request line and headers alone, what no route accepts: an encoded body (aiohttp
    would inflate it, so the size limit would no longer bound what reaches the disk), a repeated query
    parameter or ``Authorization`` header (which one counts would be a guess), and a declared body
    over the size limit."""
    if hdrs.CONTENT_ENCODING in request.headers:
        raise LfsbError(
            Kind.UNSUPPORTED_MEDIA_TYPE,
            "EBADENCODING",
            "request Content-Encoding is not supported: send the body unencoded",
        )
    if len(request.headers.getall(hdrs.AUTHORIZATION, ())) > 1:
        raise bad_input("more than one Authorization header")
    if repeated := sorted({key for key in request.query if len(request.query.getall(key)) > 1}):
        raise bad_input(f"repeated query parameter: {repeated[0]!r}")
    limit = request.app[STORE_KEY].config.max_tx_bytes
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)


@web.middleware
async def request_check_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """:func:`check_request` before any other work."""
    check_request(request)
    return await handler(request)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: answer a request :func:`check_request` refuses at once, before the client
    sends its body (aiohttp runs this before any middleware); otherwise invite the body."""
    try:
        check_request(request)
    except LfsbError as e:
        return error_response(e)
    if request.headers[hdrs.EXPECT].lower() != "100-continue":
        return error_response(LfsbError(Kind.EXPECTATION_FAILED, "EBADEXPECT", "unsupported Expect header"))
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the response
    return None


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def cluster_from_authorization(value: str | None) -> str:
    """The cluster of ``Authorization: cluster <name>`` (upstream §1.3), validated."""
    parts = (value or "").split(" ")
    if len(parts) != 2 or parts[0].lower() != "cluster":
        raise LfsbError(Kind.AUTH, "EINVALIDAUTH", "authorization header invalid format")
    return validate_cluster(parts[1])


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require ``Authorization: cluster <name>`` and hold the cluster to its pinned LiteFS cluster ID."""
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    cluster = cluster_from_authorization(request.headers.get("Authorization"))
    request[CLUSTER_KEY] = cluster
    sentry_sdk.set_tag("cluster", cluster)
    if "db" in request.query:
        sentry_sdk.set_tag("database", request.query["db"])
    if cluster_id := request.headers.get("Litefs-Cluster-Id"):
        await request.app[STORE_KEY].check_cluster_id(cluster, validate_cluster_id(cluster_id))
    return await handler(request)


# -- helpers ----------------------------------------------------------------------------------------
def db_name(request: web.Request) -> str:
    """The validated ``db`` query parameter."""
    return validate_database(request.query.get("db", ""))


def parse_target(request: web.Request, required: bool) -> tuple[int, int | None]:
    """``txid=`` or ``timestamp=`` of the query as (txid, timestamp ms); (0, None) when neither. TXID 0
    (``txid=0000000000000000``) names the current state, on every route."""
    txid_text = request.query.get("txid", "")
    ts_text = request.query.get("timestamp", "")
    txid, ts = 0, None
    if txid_text:
        try:
            txid = parse_txid(txid_text)
        except LTXError:
            raise bad_input(f"invalid txid: {txid_text!r} (expected 16 hex digits)") from None
    if ts_text:
        try:
            ts = parse_timestamp(ts_text)
        except LTXError as e:
            raise bad_input(str(e)) from None
    if txid and ts is not None:
        raise bad_input("can't specify both 'txid' and 'timestamp'")
    if required and not txid_text and ts is None:
        raise bad_input("'txid' or 'timestamp' required")
    return txid, ts


async def resolve_point(store: Store, db: Database, txid: int, ts: int | None) -> Point:
    """The restorable point a txid (0: the current state) or timestamp names (ENOTXID / ENOTIMESTAMP)."""
    files = await store.files(db)
    if ts is not None:
        return point_before(files, ts)
    return point_at(files, txid or db.txid)


def go_time(ms: int) -> str:
    """A timestamp as Go's ``time.Time`` JSON: RFC 3339 with trailing fractional zeros trimmed."""
    text = format_timestamp(ms)
    fraction = text[-4:-1].rstrip("0")
    return f"{text[:-5]}.{fraction}Z" if fraction else f"{text[:-5]}Z"


class Bodies:
    """The request bodies being received: how many, and how many of their bytes are held in memory."""

    def __init__(self) -> None:
        self.count = 0
        self.buffered = 0


BODIES_KEY = web.AppKey("bodies", Bodies)


async def _next_chunk(content: web.StreamReader, deadline: float) -> bytes:
    """The next part of a body (empty at its end); 400 ``ETIMEOUT`` when none comes for a while or the
    body falls behind its ``deadline`` (loop time). What has arrived already is taken without setting up
    a timeout."""
    too_slow = LfsbError(
        Kind.VALIDATION, "ETIMEOUT", f"request body too slow (under {MIN_BODY_RATE} bytes/s)"
    )
    now = asyncio.get_running_loop().time()
    if now > deadline:
        raise too_slow
    if chunk := content.read_nowait():
        return chunk
    try:
        async with asyncio.timeout(min(BODY_IDLE_TIMEOUT, deadline - now)):
            return await content.readany()
    except TimeoutError:
        if asyncio.get_running_loop().time() >= deadline:
            raise too_slow from None
        raise LfsbError(Kind.VALIDATION, "ETIMEOUT", "request body stalled") from None


async def receive_body(request: web.Request, store: Store, keep: bool) -> bytes | Path:
    """Read the request body, refusing more than ``LFSB_MAX_TX_BYTES`` with 413, a body that falls under
    ``MIN_BODY_RATE`` with 400, and one past ``MAX_BODIES`` at once with 503.

    With ``keep``, a body of up to ``BODY_BUFFER`` bytes is returned as bytes. Any other body is
    streamed to a new temp file (fsynced; opened once the body outgrows the buffer, or at once while
    ``BODY_MEMORY`` is held by all bodies, so a small body takes one trip to a worker thread) whose path
    is returned: the caller removes it.
    """
    limit = store.config.max_tx_bytes  # a declared Content-Length over it was refused by check_request
    bodies = request.app[BODIES_KEY]
    if bodies.count >= MAX_BODIES:
        raise busy(f"{bodies.count} request bodies are being received, the most allowed")
    bodies.count += 1
    start = asyncio.get_running_loop().time() + BODY_GRACE
    spill: Path | None = None
    f: BinaryIO | None = None
    pending = bytearray()
    try:
        size = 0
        while True:
            chunk = await _next_chunk(request.content, start + size / MIN_BODY_RATE)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            pending += chunk
            bodies.buffered += len(chunk)
            if len(pending) >= BODY_BUFFER or bodies.buffered > BODY_MEMORY:
                if f is None:
                    spill = store.temp_path("body")
                    f = await asyncio.to_thread(open, spill, "wb")
                await asyncio.to_thread(f.write, bytes(pending))
                bodies.buffered -= len(pending)
                pending.clear()
        if keep and f is None:
            return bytes(pending)
        spill = spill or store.temp_path("body")

        def _finish(f: BinaryIO | None, path: Path) -> None:
            with f or open(path, "wb") as out:
                out.write(pending)
                out.flush()
                os.fsync(out.fileno())

        opened, f = f, None
        await asyncio.to_thread(_finish, opened, spill)
        return spill
    except BaseException:
        if f is not None:
            await asyncio.to_thread(f.close)
        if spill is not None:
            spill.unlink(missing_ok=True)
        raise
    finally:
        bodies.count -= 1
        bodies.buffered -= len(pending)


async def stream_file(request: web.Request, path: Path) -> web.StreamResponse:
    """Send a file as ``application/octet-stream``; a failure mid-way aborts the connection."""
    size = path.stat().st_size
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = size
    f = await asyncio.to_thread(open, path, "rb")
    try:
        await resp.prepare(request)
        while chunk := await asyncio.to_thread(f.read, STREAM_CHUNK):
            await resp.write(chunk)
        await resp.write_eof()
    finally:
        await asyncio.to_thread(f.close)
    return resp


# -- handlers ---------------------------------------------------------------------------------------
async def get_pos(request: web.Request) -> web.Response:
    """``GET /pos``: the position of every database of the cluster."""
    positions = await request.app[STORE_KEY].positions(request[CLUSTER_KEY])
    return json_response({name: pos.to_json() for name, pos in positions.items()})


async def post_tx(request: web.Request) -> web.Response:
    """``POST /db/tx?db=``: append one LTX file (LiteFS's stream)."""
    store = request.app[STORE_KEY]
    stop_timer = timed(store.metrics.tx_seconds)
    cluster, name = request[CLUSTER_KEY], db_name(request)
    try:
        body = await receive_body(request, store, keep=True)
        try:
            db = await store.write_tx(cluster, name, body)
        finally:
            if isinstance(body, Path):
                body.unlink(missing_ok=True)
    finally:
        stop_timer()
    return web.Response(headers={"Litefs-Hwm": format_txid(db.hwm)})


async def get_snapshot(request: web.Request) -> web.StreamResponse:
    """``GET /db/snapshot?db=[&format=ltx|sqlite][&txid=|&timestamp=]``: the database now or at a point."""
    store = request.app[STORE_KEY]
    db = await store.database(request[CLUSTER_KEY], db_name(request))
    fmt = request.query.get("format", "")
    if fmt not in ("", "ltx", "sqlite"):
        raise LfsbError(Kind.VALIDATION, "EBADFORMAT", "unsupported snapshot format")
    txid, ts = parse_target(request, required=False)
    target = db.txid if not txid and ts is None else (await resolve_point(store, db, txid, ts)).txid
    snapshot = store.temp_path("snapshot")
    raw = store.temp_path("export")
    # About the database's size (its current one; a past point's may differ, the reserve is the slack):
    # for sqlite, an uncompressed snapshot, then the database decoded from it.
    size = db.commit * db.page_size
    async with store.export_slot(2 * size if fmt == "sqlite" else size):
        try:
            await store.build_snapshot(db, target, snapshot, compress=fmt != "sqlite")  # sqlite: decoded here
            if fmt == "sqlite":

                def _decode() -> None:
                    with open(snapshot, "rb") as src, open(raw, "wb") as out:
                        decode_database(src, out)

                await asyncio.to_thread(_decode)
                snapshot.unlink()
                return await stream_file(request, raw)
            return await stream_file(request, snapshot)
        finally:
            snapshot.unlink(missing_ok=True)
            raw.unlink(missing_ok=True)


async def post_restore(request: web.Request) -> web.Response:
    """``POST /db/restore?db=&(txid=|timestamp=)``: append the state at that point as TXID current+1."""
    store = request.app[STORE_KEY]
    cluster, name = request[CLUSTER_KEY], db_name(request)
    txid, ts = parse_target(request, required=True)
    async with store.locks(cluster, name).work:
        db = await store.database(cluster, name)
        point = await resolve_point(store, db, txid, ts)
        new_txid = await restore(store, db, point.txid)
    return json_response({"txID": format_txid(new_txid)})


async def get_restore_check(request: web.Request) -> web.Response:
    """``GET /db/restore/check?db=&(txid=|timestamp=)``: the point a restore would restore (a dry run)."""
    store = request.app[STORE_KEY]
    name = db_name(request)
    txid, ts = parse_target(request, required=True)
    db = await store.database(request[CLUSTER_KEY], name)
    point = await resolve_point(store, db, txid, ts)
    return json_response({"timestamp": go_time(point.timestamp), "txID": format_txid(point.txid)})


def parse_flag(request: web.Request, name: str) -> bool:
    """A boolean query flag: absent is false; present, ``true`` or ``1`` is true; ``false`` or ``0`` false."""
    if name not in request.query:
        return False
    value = request.query[name].lower()
    if value in ("", "true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise bad_input(f"invalid {name}: {request.query[name]!r} (expected true or false)")


async def get_info(request: web.Request) -> web.Response:
    """``GET /db/info?db=[&all=true]``: the restorable range (first and last point) or every point."""
    store = request.app[STORE_KEY]
    name = db_name(request)
    everything = parse_flag(request, "all")
    db = await store.database(request[CLUSTER_KEY], name)
    points = restorable_points(await store.files(db))
    if not everything and len(points) > 2:
        points = [points[0], points[-1]]
    return json_response(
        {
            "name": name,
            "restorablePaths": [
                {
                    "maxTxId": format_txid(p.txid),
                    "maxTimestamp": go_time(p.timestamp),
                    "postApplyChecksum": format_txid(p.post_apply_checksum),
                }
                for p in points
            ],
        }
    )


async def post_upload(request: web.Request) -> web.Response:
    """``POST /db/upload?db=``: import a raw SQLite file as TXID current+1 (1 for a new database)."""
    store = request.app[STORE_KEY]
    cluster, name = request[CLUSTER_KEY], db_name(request)
    path = await receive_body(request, store, keep=False)
    assert isinstance(path, Path)
    try:
        async with store.locks(cluster, name).work:
            db = await import_database(store, cluster, name, path)
    finally:
        path.unlink(missing_ok=True)
    return json_response({"txID": format_txid(db.txid)})


async def delete_db(request: web.Request) -> web.Response:
    """``DELETE /db?db=``: remove the database, its L0 files and every file in storage."""
    store = request.app[STORE_KEY]
    await store.delete_database(request[CLUSTER_KEY], db_name(request))
    return web.Response()


async def post_reset_cluster_id(request: web.Request) -> web.Response:
    """``POST /cluster/reset-id``: forget the LiteFS cluster ID pinned to this cluster (never echoed)."""
    cluster = request[CLUSTER_KEY]
    was_pinned = await request.app[STORE_KEY].reset_cluster_id(cluster)
    return json_response({"cluster": cluster, "wasPinned": was_pinned})


async def post_verify(request: web.Request) -> web.Response:
    """``POST /db/verify?db=[&txid=|&timestamp=]``: a restore check of that point (default: the newest one in
    object storage) now; the report. A failed check is a 200 with ``"ok": false``: the request worked."""
    store = request.app[STORE_KEY]
    db = await store.database(request[CLUSTER_KEY], db_name(request))
    txid, ts = parse_target(request, required=False)
    record = await request.app[VERIFIER_KEY].check(db, txid, ts)
    return json_response({"database": db.name, **record.to_json()})


async def get_status(request: web.Request) -> web.Response:
    """``GET /status``: per database of the cluster, position, HWM lag, last L1 upload and last check."""
    statuses = await cluster_status(request.app[STORE_KEY], request[CLUSTER_KEY])
    return json_response({"databases": [s.to_json() for s in statuses]})


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 when the metadata db and object storage answer, else 503 with the names of the
    failing parts only (what failed, with bucket or path, goes to the log, never to an unauthenticated
    caller)."""
    store = request.app[STORE_KEY]
    failing = []
    try:
        await store.meta.read(lambda c: c.execute("SELECT 1").fetchone())
    except Exception as e:
        failing.append("metadata")
        log.warning("health check failed part=metadata error=%s", e)
    try:
        async with asyncio.timeout(5):
            await store.objects.check()
    except Exception as e:
        failing.append("storage")
        log.warning("health check failed part=storage error=%s", str(e) or type(e).__name__)
    if failing:
        return web.json_response({"status": "unavailable", "failing": failing}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format."""
    body = await asyncio.to_thread(request.app[STORE_KEY].metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def create_metrics_app(store: Store) -> web.Application:
    """``/metrics`` alone, for the separate ``LFSB_METRICS_BIND`` address."""
    app = web.Application()
    app[STORE_KEY] = store
    app.router.add_get("/metrics", metrics, allow_head=False)
    return app


def create_app(store: Store, serve_metrics: bool, verifier: Verifier | None = None) -> web.Application:
    """The application with every route and middleware, serving ``store``. ``/metrics`` is among them
    only with ``serve_metrics``: its labels name every cluster and database, so it is never served to
    the network without authorization."""
    app = web.Application(
        middlewares=[error_middleware, request_check_middleware, auth_middleware], client_max_size=1024**2
    )
    app[STORE_KEY] = store
    app[VERIFIER_KEY] = verifier or Verifier(store)
    app[INFLIGHT_KEY] = InFlight()
    app[BODIES_KEY] = Bodies()
    app.router.add_get("/pos", get_pos, allow_head=False)
    app.router.add_post("/db/tx", post_tx, expect_handler=expect_continue)
    app.router.add_get("/db/snapshot", get_snapshot, allow_head=False)
    app.router.add_post("/db/restore", post_restore, expect_handler=expect_continue)
    app.router.add_get("/db/restore/check", get_restore_check, allow_head=False)
    app.router.add_get("/db/info", get_info, allow_head=False)
    app.router.add_post("/db/upload", post_upload, expect_handler=expect_continue)
    app.router.add_delete("/db", delete_db)
    app.router.add_delete("/db/", delete_db)
    app.router.add_post("/cluster/reset-id", post_reset_cluster_id, expect_handler=expect_continue)
    app.router.add_post("/db/verify", post_verify, expect_handler=expect_continue)
    app.router.add_get("/status", get_status, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    if serve_metrics:
        app.router.add_get("/metrics", metrics, allow_head=False)
    return app
