"""Dashboard routes: login and logout, clusters, databases, one database with its timeline, restore and
undelete behind a confirmation, and exports. Every page is rendered on the server (Jinja2); the only
assets are a stylesheet and the inline SVG chart, both served by lfsb."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from ..errors import Kind, LfsbError, bad_input
from ..ltx import LTXError, format_txid, parse_timestamp, parse_txid
from ..names import validate_cluster, validate_database
from ..store import audit, deletion, overview
from ..store.access import Principal, Role, forbidden
from ..store.audit import AuditEntry
from ..store.db import now_ms
from ..store.records import Database, LTXFile
from ..store.restore import open_export, resolve_point, restore_point
from ..store.store import Store
from . import chart
from .sessions import Session, Sessions
from .text import fmt_age, fmt_size, fmt_time, level_name

log = logging.getLogger(__name__)

UI_PREFIX = "/ui"
SESSION_COOKIE = "lfsb_session"
LOGIN_COOKIE = "lfsb_login"
"""Holds the CSRF token of the login form until the login (there is no session yet)."""
STORE = web.AppKey("ui_store", Store)
TEMPLATES = web.AppKey("ui_templates", jinja2.Environment)
SESSIONS = web.AppKey("ui_sessions", Sessions)
SESSION = web.RequestKey("ui_session", Session)
AUDIT_SHOWN = 50
CHECKS_SHOWN = 10
POINTS_LISTED = 30

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
"""Every page: no script runs, nothing loads from elsewhere, no page is framed or cached."""

Route = tuple[str, str]
UI_ROUTES: dict[Route, Role | None] = {
    ("GET", "/ui"): Role.READ,
    ("GET", "/ui/login"): None,
    ("POST", "/ui/login"): None,  # carries the login form's own CSRF token
    ("POST", "/ui/logout"): Role.READ,
    ("GET", "/ui/clusters"): Role.ADMIN,  # and the root token only (every cluster)
    ("GET", "/ui/c/{cluster}"): Role.READ,
    ("GET", "/ui/c/{cluster}/db/{db}"): Role.READ,
    ("GET", "/ui/c/{cluster}/db/{db}/export"): Role.READ,
    ("GET", "/ui/c/{cluster}/db/{db}/restore"): Role.ADMIN,
    ("POST", "/ui/c/{cluster}/db/{db}/restore"): Role.ADMIN,
    ("GET", "/ui/c/{cluster}/deleted/{db}/undelete"): Role.ADMIN,
    ("POST", "/ui/c/{cluster}/deleted/{db}/undelete"): Role.ADMIN,
    ("GET", "/ui/static"): None,
    ("HEAD", "/ui/static"): None,
}
"""The least role of every dashboard route (None: no session needed). The JSON API's auth middleware
leaves these to the dashboard's session check; a test walks the table."""
ALL_CLUSTER_ROUTES = {("GET", "/ui/clusters")}
"""Routes about every cluster: the root token only."""
UI_AUDITED = {
    "/ui/c/{cluster}/db/{db}/restore": "restore",
    "/ui/c/{cluster}/deleted/{db}/undelete": "undelete",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- sessions and errors ----------------------------------------------------------------------------
def route_key(request: web.Request) -> Route | None:
    """(method, canonical path) of the route a request matched (``DELETE /db/`` is ``DELETE /db``);
    None when it matched none (a 404 or 405 follows, which tells nothing about clusters). The JSON
    API's auth middleware uses it too."""
    if request.match_info.http_exception is not None:
        return None
    path = request.match_info.route.resource.canonical  # type: ignore[union-attr]
    return request.method, path.rstrip("/") or "/"


def see_other(url: str) -> web.Response:
    """A 303 redirect (returned, not raised: the server's error middleware turns raised ones into JSON)."""
    return web.Response(status=303, headers={"Location": url})


async def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """A page, with the session (if any) and the current time in its context, rendered on a worker
    thread (a page of 1,000 databases takes tens of milliseconds)."""
    context.update(session=request.get(SESSION), now=now_ms())
    page = request.app[TEMPLATES].get_template(template)
    text = await asyncio.to_thread(page.render, context)
    return web.Response(text=text, status=status, content_type="text/html", headers=SECURITY_HEADERS)


def _set_cookie(resp: web.StreamResponse, request: web.Request, name: str, value: str) -> None:
    resp.set_cookie(
        name, value, path=UI_PREFIX, httponly=True, samesite="Strict", secure=request.secure or None
    )


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Hold every route to its least role in ``UI_ROUTES`` through the session cookie, check the CSRF
    token of every form post, and show failures as a page (never a stack trace)."""
    try:
        route = route_key(request)
        role = UI_ROUTES[route] if route is not None else None
        if role is None:
            return await handler(request)
        session = request.app[SESSIONS].get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            if request.method == "GET":
                return see_other(f"{UI_PREFIX}/login?" + urlencode({"next": request.path_qs}))
            raise LfsbError(Kind.AUTH, "EUNAUTHORIZED", "signed out: sign in again and repeat the action")
        request[SESSION] = session
        principal = session.principal
        cluster = request.match_info.get("cluster")
        if cluster is not None:
            validate_cluster(cluster)
        elif route not in ALL_CLUSTER_ROUTES:
            cluster = principal.cluster  # a page about no cluster in particular (home, logout)
        if not principal.allows(cluster, role):
            if route is not None and route[0] == "POST" and (action := UI_AUDITED.get(route[1])):
                await _audit(request, action, "EFORBIDDEN")
            raise forbidden("this token may not do that")
        if request.method == "POST":
            form = await request.post()
            sent = form.get("csrf")
            if not session.csrf_ok(sent if isinstance(sent, str) else None):
                log.warning("ui form refused: bad CSRF token remote=%s path=%s", request.remote, request.path)
                raise LfsbError(
                    Kind.FORBIDDEN,
                    "ECSRF",
                    "this form did not come from this session: reload the page, try again",
                )
        return await handler(request)
    except LfsbError as e:
        return await render(request, "error.html", status=e.status, error=e)


async def _audit(request: web.Request, action: str, outcome: str, detail: str = "") -> None:
    """Record a dashboard admin action (or its refusal) in the audit log, as the JSON API does."""
    principal: Principal = request[SESSION].principal
    await audit.record(
        request.app[STORE].meta,
        AuditEntry(
            now_ms(),
            principal.token_id,
            request.remote or "",
            action,
            request.match_info.get("cluster", "*"),
            request.match_info.get("db", ""),
            outcome,
            ("ui " + detail).strip(),
        ),
    )


# -- login ------------------------------------------------------------------------------------------
def _next_page(text: str | None) -> str:
    """Where to go after login: a dashboard path only (never another site)."""
    if text and text.startswith(UI_PREFIX + "/") and not text.startswith("//") and "\\" not in text:
        return text
    return UI_PREFIX + "/"


async def _login_page(
    request: web.Request, status: int = 200, error: str = "", note: str = ""
) -> web.Response:
    csrf = secrets.token_urlsafe(32)
    resp = await render(
        request,
        "login.html",
        status=status,
        csrf=csrf,
        error=error,
        note=note,
        next=request.query.get("next", ""),
    )
    _set_cookie(resp, request, LOGIN_COOKIE, csrf)
    return resp


async def login_page(request: web.Request) -> web.StreamResponse:
    """``GET /ui/login``: the token form."""
    note = "Signed out." if "out" in request.query else ""
    return await _login_page(request, note=note)


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /ui/login``: a read or admin token starts a session."""
    access = request.app[STORE].access
    remote = request.remote or ""
    form = await request.post()
    sent, cookie = form.get("csrf"), request.cookies.get(LOGIN_COOKIE)
    if not (isinstance(sent, str) and cookie and secrets.compare_digest(sent.encode(), cookie.encode())):
        return await _login_page(request, 403, "The form expired: sign in again.")
    if access.failures.limited(remote):
        return await _login_page(request, 429, "Too many failed sign-ins from this address: wait a minute.")
    token = form.get("token")
    try:
        principal = access.authenticate(token if isinstance(token, str) else None)
    except LfsbError as e:
        access.failures.add(remote)
        log.warning("ui sign-in failed remote=%s", remote)
        return await _login_page(request, 401, f"Sign-in refused: {e.message}.")
    if principal.role < Role.READ:
        return await _login_page(request, 403, "A replica token can't sign in: use a read or admin token.")
    sessions = request.app[SESSIONS]
    sessions.end(request.cookies.get(SESSION_COOKIE, ""))  # signing in again replaces the session
    session = sessions.start(principal)
    log.info(
        "ui sign-in cluster=%s token=%s role=%s remote=%s",
        principal.cluster or "*",
        principal.token_id or "-",
        principal.role,
        remote,
    )
    resp = see_other(_next_page(request.query.get("next")))
    _set_cookie(resp, request, SESSION_COOKIE, session.id)
    resp.del_cookie(LOGIN_COOKIE, path=UI_PREFIX)
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    """``POST /ui/logout``: end the session on the server and forget the cookie."""
    session = request[SESSION]
    request.app[SESSIONS].end(session.id)
    log.info(
        "ui sign-out cluster=%s token=%s", session.principal.cluster or "*", session.principal.token_id or "-"
    )
    resp = see_other(UI_PREFIX + "/login?out=1")
    resp.del_cookie(SESSION_COOKIE, path=UI_PREFIX)
    return resp


# -- pages ------------------------------------------------------------------------------------------
async def index(request: web.Request) -> web.StreamResponse:
    """``GET /ui/``: the clusters for the root token, the token's cluster otherwise."""
    cluster = request[SESSION].principal.cluster
    return see_other(f"{UI_PREFIX}/clusters" if cluster is None else cluster_url(cluster))


def cluster_url(cluster: str) -> str:
    """The page of a cluster."""
    return f"{UI_PREFIX}/c/{quote(cluster, safe='')}"


def db_url(cluster: str, name: str, suffix: str = "") -> str:
    """The page of a database (or one of its actions)."""
    return f"{cluster_url(cluster)}/db/{quote(name, safe='')}{suffix}"


async def clusters_page(request: web.Request) -> web.StreamResponse:
    """``GET /ui/clusters``: every cluster (root token)."""
    return await render(request, "clusters.html", clusters=await overview.clusters(request.app[STORE]))


class DatabaseRow(NamedTuple):
    """One line of a cluster's page, formatted ahead (cheaper than a template's calls, 1,000 times)."""

    name: str
    url: str
    txid: str
    size: str
    lag: int
    backup_age: str
    backup_time: str
    check: str
    check_ok: bool | None


def database_rows(
    cluster: str, dbs: list[overview.DatabaseSummary], checks: dict[str, Any]
) -> list[DatabaseRow]:
    """The lines of the databases table; ``checks``: the last restore check of each database, by name."""
    now = now_ms()
    rows = []
    for d in dbs:
        check = checks.get(d.db.name)
        rows.append(
            DatabaseRow(
                d.db.name,
                db_url(cluster, d.db.name),
                format_txid(d.db.txid),
                fmt_size(d.size),
                d.hwm_lag,
                fmt_age(d.last_backup_at, now),
                fmt_time(d.last_backup_at),
                f"{fmt_age(check.checked_at, now)} at {format_txid(check.txid)}" if check else "",
                check.ok if check else None,
            )
        )
    return rows


async def cluster_page(request: web.Request) -> web.StreamResponse:
    """``GET /ui/c/{cluster}``: its databases (position, size, HWM lag, last backup, last restore check)
    and, apart, the deleted ones that can still come back."""
    store = request.app[STORE]
    cluster = request.match_info["cluster"]
    dbs = await overview.databases(store, cluster)
    deleted = await deletion.deleted_databases(store, cluster)
    return await render(
        request,
        "cluster.html",
        cluster=cluster,
        rows=await asyncio.to_thread(database_rows, cluster, dbs, await store.last_checks(cluster)),
        deleted=[(deletion.parse_deleted_name(d.name) or (d.name, 0))[0] for d in deleted],
        deleted_dbs=deleted,
        grace_ms=int(store.config.delete_grace * 1000),
    )


def _target(values: Any) -> tuple[int, int | None]:
    """(txid, timestamp ms) from ``txid`` or ``timestamp`` of a query or form; (0, None): the current state.
    A timestamp without a zone is taken as UTC."""
    txid_text = str(values.get("txid", "")).strip()
    ts_text = str(values.get("timestamp", "")).strip()
    if txid_text and ts_text:
        raise bad_input("give a TXID or a timestamp, not both")
    try:
        if txid_text:
            return parse_txid(txid_text.rjust(16, "0") if len(txid_text) < 16 else txid_text), None
        if ts_text:
            if ts_text[-1] not in "Zz" and "+" not in ts_text[10:] and "-" not in ts_text[10:]:
                ts_text += "Z"
            if len(ts_text) == 17:  # 2026-12-04T05:40Z: no seconds (a datetime-local field)
                ts_text = ts_text[:16] + ":00Z"
            return 0, parse_timestamp(ts_text)
    except LTXError as e:
        raise bad_input(str(e)) from None
    return 0, None


async def _database(request: web.Request) -> tuple[Store, Database]:
    store = request.app[STORE]
    name = validate_database(request.match_info["db"])
    return store, await store.database(request.match_info["cluster"], name)


async def database_page(request: web.Request) -> web.StreamResponse:
    """``GET /ui/c/{cluster}/db/{db}[?txid=]``: the timeline of restorable points (a point picked on it
    is shown with its actions), the restore checks and, for an admin, the audit entries."""
    store, db = await _database(request)
    picked_txid = _target(request.query)[0] if "txid" in request.query else None
    timeline = await asyncio.to_thread(Timeline.of, await store.files(db), db.page_size, picked_txid)
    principal = request[SESSION].principal
    entries: list[AuditEntry] = []
    if principal.allows(db.cluster, Role.ADMIN):
        entries = await audit.entries(store.meta, db.cluster, 0, AUDIT_SHOWN, database=db.name)
    return await render(
        request,
        "database.html",
        db=db,
        t=timeline,
        checks=await store.checks(db, CHECKS_SHOWN),
        entries=entries[::-1],
        admin=principal.allows(db.cluster, Role.ADMIN),
        done=request[SESSION].pop_flash(),
    )


class Timeline(NamedTuple):
    """A database's restorable points as its page shows them: chart, newest points, gaps, the one picked."""

    count: int
    chart: chart.Chart | None
    listed: list[overview.TimelinePoint]
    gaps: list[tuple[overview.TimelinePoint, overview.TimelinePoint]]
    picked: overview.TimelinePoint | None

    @classmethod
    def of(cls, files: list[LTXFile], page_size: int, picked_txid: int | None) -> Timeline:
        """From the database's files (CPU work: run on a worker thread); ENOTXID if the picked TXID is
        not a restorable point."""
        points = overview.timeline(files, page_size)
        gaps = overview.gaps(points)
        picked = None
        if picked_txid is not None:
            picked = next((p for p in points if p.txid == picked_txid), None)
            if picked is None:
                raise LfsbError(
                    Kind.NOT_FOUND, "ENOTXID", f"TXID {format_txid(picked_txid)} is not restorable"
                )
        return cls(len(points), chart.build(points, gaps), points[-POINTS_LISTED:][::-1], gaps, picked)


async def export(request: web.Request) -> web.StreamResponse:
    """``GET /ui/c/{cluster}/db/{db}/export[?txid=|?timestamp=]``: the SQLite file at that point."""
    store, db = await _database(request)
    txid, ts = _target(request.query)
    target = db.txid if not txid and ts is None else (await resolve_point(store, db, txid, ts)).txid
    filename = f"{db.name}-{format_txid(target)}.sqlite"
    async with open_export(store, db, target, sqlite=True) as f:
        resp = web.Response(
            body=f,
            headers={
                "Content-Type": "application/vnd.sqlite3",
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
                "Cache-Control": "no-store",
            },
        )
        await resp.prepare(request)
        await resp.write_eof()
    log.info("ui export cluster=%s database=%s txid=%s", db.cluster, db.name, format_txid(target))
    return resp


async def restore_confirm(request: web.Request) -> web.StreamResponse:
    """``GET …/restore?txid=|timestamp=``: which point that is, what restoring it does, and the form."""
    store, db = await _database(request)
    txid, ts = _target(request.query)
    if not txid and ts is None:
        raise bad_input("pick a point: a TXID or a timestamp")
    point = await resolve_point(store, db, txid, ts)
    return await render(request, "restore.html", db=db, point=point, asked_ts=ts, error="")


async def restore_post(request: web.Request) -> web.StreamResponse:
    """``POST …/restore`` (txid, confirm = the database's name): restore, then back to the database."""
    store, db = await _database(request)
    form = await request.post()
    txid, _ = _target({"txid": form.get("txid", "")})
    if not txid:
        raise bad_input("txid required")
    if form.get("confirm") != db.name:
        point = await resolve_point(store, db, txid, None)
        error = "Type the database's name exactly to confirm: nothing was restored."
        return await render(
            request, "restore.html", status=400, db=db, point=point, asked_ts=None, error=error
        )
    try:
        point, new_txid = await restore_point(store, db.cluster, db.name, txid, None)
    except LfsbError as e:
        await _audit(request, "restore", e.code, f"target={format_txid(txid)}")
        raise
    await _audit(request, "restore", "ok", f"target={format_txid(point.txid)} txid={format_txid(new_txid)}")
    request[
        SESSION
    ].flash = f"Restored the state of TXID {format_txid(point.txid)} as TXID {format_txid(new_txid)}."
    return see_other(db_url(db.cluster, db.name))


async def _deleted_copy(request: web.Request) -> tuple[str, Database]:
    store = request.app[STORE]
    cluster, name = request.match_info["cluster"], validate_database(request.match_info["db"])
    for db in await deletion.deleted_databases(store, cluster):
        if (deletion.parse_deleted_name(db.name) or ("",))[0] == name:
            return name, db  # the newest first
    raise LfsbError(Kind.NOT_FOUND, "ENODB", f"no deleted database {name!r} to bring back")


async def undelete_confirm(request: web.Request) -> web.StreamResponse:
    """``GET /ui/c/{cluster}/deleted/{db}/undelete``: what undelete does, and the form."""
    name, db = await _deleted_copy(request)
    return await render(request, "undelete.html", name=name, db=db, cluster=db.cluster, error="")


async def undelete_post(request: web.Request) -> web.StreamResponse:
    """``POST …/undelete`` (confirm = the database's name): bring the newest deleted copy back."""
    name, db = await _deleted_copy(request)
    store = request.app[STORE]
    form = await request.post()
    if form.get("confirm") != name:
        error = "Type the database's name exactly to confirm: nothing was brought back."
        return await render(
            request, "undelete.html", status=400, name=name, db=db, cluster=db.cluster, error=error
        )
    try:
        back = await deletion.undelete(store, db.cluster, name)
    except LfsbError as e:
        await _audit(request, "undelete", e.code)
        raise
    await _audit(request, "undelete", "ok", f"txid={format_txid(back.txid)}")
    request[SESSION].flash = f"Brought back {name} at TXID {format_txid(back.txid)}."
    return see_other(db_url(db.cluster, name))


def create_ui_app(store: Store) -> web.Application:
    """The dashboard, to mount at ``UI_PREFIX``."""
    app = web.Application(middlewares=[session_middleware])
    app[STORE] = store
    app[SESSIONS] = Sessions(store.access)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lfsb.ui", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    app[TEMPLATES] = env
    env.globals.update(
        fmt_time=fmt_time,
        fmt_age=fmt_age,
        fmt_size=fmt_size,
        txid=format_txid,
        level_name=level_name,
        cluster_url=cluster_url,
        db_url=db_url,
        prefix=UI_PREFIX,
    )
    app.router.add_get("/", index, allow_head=False)
    app.router.add_get("/login", login_page, allow_head=False)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/clusters", clusters_page, allow_head=False)
    app.router.add_get("/c/{cluster}", cluster_page, allow_head=False)
    app.router.add_get("/c/{cluster}/db/{db}", database_page, allow_head=False)
    app.router.add_get("/c/{cluster}/db/{db}/export", export, allow_head=False)
    app.router.add_get("/c/{cluster}/db/{db}/restore", restore_confirm, allow_head=False)
    app.router.add_post("/c/{cluster}/db/{db}/restore", restore_post)
    app.router.add_get("/c/{cluster}/deleted/{db}/undelete", undelete_confirm, allow_head=False)
    app.router.add_post("/c/{cluster}/deleted/{db}/undelete", undelete_post)
    app.router.add_static("/static", Path(__file__).parent / "static")
    return app
