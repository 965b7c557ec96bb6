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
from ..ltx import LTXError, format_timestamp, format_txid, parse_timestamp, parse_txid
from ..names import validate_cluster, validate_cluster_id, validate_database
from ..observability import CONTENT_TYPE, report_exception, timed
from ..storage import StorageError
from ..store import audit, deletion
from ..store.access import Principal, Role, forbidden
from ..store.audit import AuditEntry
from ..store.db import now_ms
from ..store.levels import parse_duration
from ..store.plan import restorable_points
from ..store.records import Database
from ..store.recovery import Readiness
from ..store.restore import import_database, open_export, resolve_point, restore_point
from ..store.store import Store
from ..store.verify import Verifier, cluster_status
from ..ui import UI_PREFIX, UI_ROUTES, create_ui_app, route_key
from .roles import ALL_CLUSTER_ROUTES, AUDITED, POINT_IN_TIME_ROLE, PUBLIC_ROUTES, ROUTE_ROLES, Route

log = logging.getLogger(__name__)

STORE_KEY = web.AppKey("store", Store)
VERIFIER_KEY = web.AppKey("verifier", Verifier)
CLUSTER_KEY = web.RequestKey("cluster", str)
READINESS_KEY = web.AppKey("readiness", Readiness)
PRINCIPAL_KEY = web.RequestKey("principal", Principal)
AUDIT_DETAIL_KEY = web.RequestKey("audit_detail", str)
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


def request_cluster(request: web.Request, principal: Principal, route: Route) -> str | None:
    """The cluster a request acts on: the token's, or for the root token the ``cluster`` query parameter
    (None on the routes that may cover every cluster). A ``cluster`` parameter naming another cluster
    than the token's is refused with 403."""
    named = request.query.get("cluster")
    if named is not None:
        named = validate_cluster(named)
    if principal.cluster is None:
        if named is None and route not in ALL_CLUSTER_ROUTES:
            raise bad_input("cluster required: the admin token acts on every cluster, so name one (cluster=)")
        return named
    if named is not None and named != principal.cluster:
        raise forbidden("this token belongs to another cluster")
    return principal.cluster


def least_role(request: web.Request, route: Route) -> Role:
    """The role ``route`` needs for this request (``ROUTE_ROLES``; more for a snapshot of a past point)."""
    role = ROUTE_ROLES[route]
    if route == ("GET", "/db/snapshot"):
        txid = request.query.get("txid", "")
        if "timestamp" in request.query or txid.strip("0"):
            role = max(role, POINT_IN_TIME_ROLE)
    return role


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map ``Authorization`` to a principal, refuse what its role or cluster does not allow (401, 403,
    429 after repeated failures from one address), hold a cluster to its pinned LiteFS cluster ID, and
    write admin actions to the audit log."""
    route = route_key(request)
    if route is None or route in PUBLIC_ROUTES or route in UI_ROUTES:  # the dashboard checks its sessions
        return await handler(request)
    request.app[READINESS_KEY].check_started()  # tokens are not loaded before
    store = request.app[STORE_KEY]
    access = store.access
    remote = request.remote or ""
    if access.failures.limited(remote):
        raise LfsbError(
            Kind.RATE_LIMITED,
            "ERATELIMIT",
            "too many failed authentications from this address: wait a minute",
        )
    try:
        principal = access.authenticate(request.headers.get(hdrs.AUTHORIZATION))
    except LfsbError:
        access.failures.add(remote)
        log.warning("authentication failed remote=%s method=%s path=%s", remote, request.method, request.path)
        raise
    request[PRINCIPAL_KEY] = principal
    action = AUDITED.get(route)
    if action == "delete" and parse_flag(request, "purge"):
        action = "purge"
    cluster = None
    try:
        cluster = request_cluster(request, principal, route)
        if cluster is not None:
            request[CLUSTER_KEY] = cluster
            sentry_sdk.set_tag("cluster", cluster)
        if "db" in request.query:
            sentry_sdk.set_tag("database", request.query["db"])
        if not principal.allows(cluster, least_role(request, route)):
            raise forbidden()
        if cluster is not None:
            request.app[READINESS_KEY].check(cluster)
            await _check_cluster_id(request, store, principal, cluster)
        response = await handler(request)
    except Exception as e:
        code = _as_lfsb_error(e, request).code
        if action is not None or code == "EFORBIDDEN":
            await _audit(request, action, principal, cluster, code)
        raise
    if action is not None:
        await _audit(request, action, principal, cluster, "ok")
    return response


async def _check_cluster_id(request: web.Request, store: Store, principal: Principal, cluster: str) -> None:
    """Pin the first ``Litefs-Cluster-Id`` seen for a cluster and hold it to it; a replica must send it
    once the cluster is pinned (an admin may act on the cluster without it)."""
    if cluster_id := request.headers.get("Litefs-Cluster-Id"):
        await store.check_cluster_id(cluster, validate_cluster_id(cluster_id))
    elif principal.role == Role.REPLICA and await store.pinned_cluster_id(cluster) is not None:
        raise LfsbError(
            Kind.UNPROCESSABLE,
            "ECLUSTERID",
            f"cluster {cluster!r} is pinned to a LiteFS cluster ID: send it in Litefs-Cluster-Id",
        )


async def _audit(
    request: web.Request, action: str | None, principal: Principal, cluster: str | None, outcome: str
) -> None:
    """Record an admin action (and any refusal of a valid token) in the audit log."""
    await audit.record(
        request.app[STORE_KEY].meta,
        AuditEntry(
            now_ms(),
            principal.token_id,
            request.remote or "",
            action or f"{request.method} {request.path}",
            cluster or request.query.get("cluster") or principal.cluster or "*",
            request.query.get("db", ""),
            outcome,
            request.get(AUDIT_DETAIL_KEY, ""),
        ),
    )


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


async def stream_file(request: web.Request, f: BinaryIO) -> web.StreamResponse:
    """Send an open file from its start as ``application/octet-stream``, and close it; a failure mid-way
    aborts the connection."""
    try:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = os.fstat(f.fileno()).st_size
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
    async with open_export(store, db, target, sqlite=fmt == "sqlite") as f:
        return await stream_file(request, f)


async def post_restore(request: web.Request) -> web.Response:
    """``POST /db/restore?db=&(txid=|timestamp=)``: append the state at that point as TXID current+1."""
    store = request.app[STORE_KEY]
    cluster, name = request[CLUSTER_KEY], db_name(request)
    txid, ts = parse_target(request, required=True)
    _, new_txid = await restore_point(store, cluster, name, txid, ts)
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
    """``DELETE /db?db=[&purge=true]``: delete the database, recoverable for ``LFSB_DELETE_GRACE``
    (``lfsb undelete``); with ``purge``, remove it and every deleted copy of that name for good."""
    store = request.app[STORE_KEY]
    cluster, name = request[CLUSTER_KEY], db_name(request)
    if parse_flag(request, "purge"):
        purged = await deletion.purge(store, cluster, name)
        request[AUDIT_DETAIL_KEY] = f"copies={purged}"
        return json_response({"purged": purged})
    deleted = await deletion.soft_delete(store, cluster, name)
    request[AUDIT_DETAIL_KEY] = f"txid={format_txid(deleted.txid)}"
    return json_response(deleted_json(deleted, store.config.delete_grace))


def deleted_json(db: Database, grace: float) -> dict[str, Any]:
    """A deleted database as ``GET /deleted`` lists it."""
    return {
        "name": (deletion.parse_deleted_name(db.name) or (db.name,))[0],
        "deletedAt": go_time(db.deleted_at or 0),
        "purgeAt": go_time((db.deleted_at or 0) + int(grace * 1000)),
        "txID": format_txid(db.txid),
    }


async def get_deleted(request: web.Request) -> web.Response:
    """``GET /deleted``: the deleted databases of the cluster that can still be brought back."""
    store = request.app[STORE_KEY]
    deleted = await deletion.deleted_databases(store, request[CLUSTER_KEY])
    return json_response([deleted_json(db, store.config.delete_grace) for db in deleted])


async def post_undelete(request: web.Request) -> web.Response:
    """``POST /db/undelete?db=``: bring back the newest deleted copy of a database, its whole history."""
    store = request.app[STORE_KEY]
    db = await deletion.undelete(store, request[CLUSTER_KEY], db_name(request))
    request[AUDIT_DETAIL_KEY] = f"txid={format_txid(db.txid)}"
    return json_response({"name": db.name, "txID": format_txid(db.txid)})


MAX_NOTE = 200


async def post_token(request: web.Request) -> web.Response:
    """``POST /tokens?role=[&note=][&expires=90d]``: a new token of the cluster, shown this once."""
    store = request.app[STORE_KEY]
    cluster = request[CLUSTER_KEY]
    role = Role.parse(request.query.get("role", ""))
    note = request.query.get("note", "")
    if len(note) > MAX_NOTE or not note.isprintable():
        raise bad_input(f"note: at most {MAX_NOTE} printable characters")
    expires_at = None
    if expires := request.query.get("expires"):
        try:
            seconds = parse_duration(expires, "expires")
        except LfsbError as e:
            raise bad_input(e.message) from None
        if seconds <= 0:
            raise bad_input("expires: must be greater than zero")
        expires_at = now_ms() + int(seconds * 1000)
    token, text = await store.access.create(cluster, role, note, expires_at)
    request[AUDIT_DETAIL_KEY] = f"token={token.id} role={role}"
    return json_response({**token.to_json(now_ms()), "token": text})


async def get_tokens(request: web.Request) -> web.Response:
    """``GET /tokens``: the tokens of the cluster (the root token without a cluster: all); no secrets."""
    access = request.app[STORE_KEY].access
    now = now_ms()
    return json_response([t.to_json(now) for t in access.list(request.get(CLUSTER_KEY))])


async def delete_token(request: web.Request) -> web.Response:
    """``DELETE /tokens?id=``: revoke a token of the cluster (404 ``ENOTOKEN`` for any other ID)."""
    access = request.app[STORE_KEY].access
    token_id = request.query.get("id", "")
    request[AUDIT_DETAIL_KEY] = f"token={token_id[:16]}"
    token = access.find(token_id)
    if token is None or request.get(CLUSTER_KEY, token.cluster) != token.cluster:
        raise LfsbError(Kind.NOT_FOUND, "ENOTOKEN", "no such token in this cluster")
    return json_response((await access.revoke(token_id)).to_json(now_ms()))


MAX_AUDIT = 10_000


async def get_audit(request: web.Request) -> web.Response:
    """``GET /audit[?since=T][&limit=N]``: the audit log of the cluster (root without a cluster: all)."""
    since = 0
    if text := request.query.get("since"):
        try:
            since = parse_timestamp(text)
        except LTXError as e:
            raise bad_input(str(e)) from None
    limit = request.query.get("limit", "1000")
    if not limit.isdigit() or not 0 < int(limit) <= MAX_AUDIT:
        raise bad_input(f"limit: a whole number from 1 to {MAX_AUDIT}")
    found = await audit.entries(request.app[STORE_KEY].meta, request.get(CLUSTER_KEY), since, int(limit))
    return json_response([e.to_json() for e in found])


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
    readiness = request.app[READINESS_KEY]
    if readiness.pending is None:  # the data directory is not open yet
        return web.json_response({"status": "starting"})
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
    if readiness.recovering:  # serving already: a health check must not kill it while it recovers
        return web.json_response({"status": "recovering", "progress": readiness.progress()})
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.StreamResponse:
    """``GET /metrics``: Prometheus text format, streamed (each chunk made on a worker thread)."""
    chunks = request.app[STORE_KEY].metrics.render()
    try:
        first = await asyncio.to_thread(next, chunks)
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE})
        await response.prepare(request)
        await response.write(first)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        chunks.close()


def create_metrics_app(store: Store) -> web.Application:
    """``/metrics`` alone, for the separate ``LFSB_METRICS_BIND`` address."""
    app = web.Application()
    app[STORE_KEY] = store
    app.router.add_get("/metrics", metrics, allow_head=False)
    return app


def create_app(
    store: Store, readiness: Readiness, serve_metrics: bool, verifier: Verifier | None = None
) -> web.Application:
    """The application with every route and middleware, serving ``store``. ``/metrics`` is among them
    only with ``serve_metrics``: its labels name every cluster and database, so it is never served to
    the network without authorization."""
    app = web.Application(
        middlewares=[error_middleware, request_check_middleware, auth_middleware], client_max_size=1024**2
    )
    app[STORE_KEY] = store
    app[READINESS_KEY] = readiness
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
    app.router.add_get("/deleted", get_deleted, allow_head=False)
    app.router.add_post("/db/undelete", post_undelete, expect_handler=expect_continue)
    app.router.add_post("/tokens", post_token, expect_handler=expect_continue)
    app.router.add_get("/tokens", get_tokens, allow_head=False)
    app.router.add_delete("/tokens", delete_token)
    app.router.add_get("/audit", get_audit, allow_head=False)
    app.router.add_post("/db/verify", post_verify, expect_handler=expect_continue)
    app.router.add_get("/status", get_status, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    if serve_metrics:
        app.router.add_get("/metrics", metrics, allow_head=False)
    app.add_subapp(UI_PREFIX, create_ui_app(store))
    return app
