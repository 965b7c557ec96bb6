"""The dashboard under /ui/: sessions, CSRF, roles (over HTTP), and end to end in a real headless Chromium
(Debian's ``chromium``, driven by Playwright): login, navigation, the timeline, a restore that LiteFS then
pulls, an export whose rows are checked, undelete, and a read token without admin actions."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from lfsb.ltx import format_timestamp, format_txid
from lfsb.server.main import Server
from lfsb.server.roles import PUBLIC_ROUTES, ROUTE_ROLES
from lfsb.store import overview
from lfsb.store.access import Role
from lfsb.store.db import now_ms
from lfsb.store.records import CheckRecord, LTXFile
from lfsb.ui import UI_PREFIX, UI_ROUTES, chart, create_ui_app
from tests.lfsb_server import Client, History, check_sqlite
from tests.litefs import LiteFSEmulator

ROOT_TOKEN = "root-" + "u" * 40
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ["LFSB_SCREENSHOTS"]) if os.environ.get("LFSB_SCREENSHOTS") else None
"""Where the browser tests also save their screenshots (``docs/screenshots`` for the README)."""


@pytest.fixture
def storage_env() -> dict[str, str]:
    """The dashboard reads the store through the same functions on either object store: local only."""
    return {}


@dataclass
class Site:
    """A server in token mode with database ``db`` of cluster ``test`` written by a LiteFS node."""

    server: Server
    node: LiteFSEmulator
    history: History
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url + UI_PREFIX


@pytest.fixture
async def site(start_server: Callable[..., Any], tmp_path: Path) -> AsyncIterator[Site]:
    """Token mode, tokens of every role for ``test``, and ``db`` with points at levels 0 to 2."""
    server = await start_server(LFSB_ADMIN_TOKEN=ROOT_TOKEN)
    tokens = {"root": ROOT_TOKEN}
    for role in ("replica", "read", "admin"):
        tokens[role] = (await server.store.access.create("test", Role.parse(role), "", None))[1]
    tokens["other"] = (await server.store.access.create("other", Role.ADMIN, "", None))[1]
    async with LiteFSEmulator(tmp_path / "node", server.url, token=tokens["replica"]) as node:
        history = History(node)
        await history.write(4)
        await server.scheduler.run(1)
        await history.write(3)
        await server.scheduler.run(1)
        await server.scheduler.run(2)
        await history.write(3)
        db = await server.store.database("test", "db")
        check = CheckRecord(now_ms(), 7, 12, 9000, 8192, True, "rows and integrity ok", True)
        assert await server.store.record_check(db, check)
        yield Site(server, node, history, tokens)


class Browser:
    """A cookie-keeping HTTP client of the dashboard (no JavaScript, like the pages themselves)."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def get(self, path: str, **kw: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(self.site.url + path, allow_redirects=kw.pop("follow", True), **kw) as r:
            return r.status, await r.text(errors="replace"), r

    async def post(self, path: str, data: dict[str, str], follow: bool = False) -> tuple[int, str, Any]:
        async with self.session.post(self.site.url + path, data=data, allow_redirects=follow) as r:
            return r.status, await r.text(errors="replace"), r

    async def login(self, token: str) -> tuple[int, str, Any]:
        _, page, _ = await self.get("/login")
        return await self.post("/login", {"csrf": csrf_of(page), "token": token})

    async def close(self) -> None:
        await self.session.close()


def csrf_of(page: str) -> str:
    """The CSRF token of the first form of a page."""
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, page[:2000]
    return m.group(1)


@pytest.fixture
async def browser(site: Site) -> AsyncIterator[Browser]:
    b = Browser(site)
    yield b
    await b.close()


# -- the route table ---------------------------------------------------------------------------------
async def test_every_dashboard_route_is_in_the_table(site: Site) -> None:
    """UI_ROUTES covers every route of the mounted dashboard and nothing of the JSON API; a signed-out
    request to any route that needs a session is sent to the login page (GET) or refused (POST)."""
    ui = create_ui_app(site.server.store)
    web.Application().add_subapp(UI_PREFIX, ui)  # as the server mounts it: paths get the prefix
    served = {(route.method, r.canonical.rstrip("/")) for r in ui.router.resources() for route in r}
    assert served == set(UI_ROUTES)
    assert not set(UI_ROUTES) & (set(ROUTE_ROLES) | PUBLIC_ROUTES)
    async with aiohttp.ClientSession() as http:
        for (method, path), role in UI_ROUTES.items():
            if role is None:
                continue
            path = path.replace("{cluster}", "test").replace("{db}", "db")
            url = site.server.url + (path if path != UI_PREFIX else UI_PREFIX + "/")
            async with http.request(method, url, allow_redirects=False) as r:
                if method == "GET":
                    assert (r.status, r.headers["Location"].split("?")[0]) == (303, "/ui/login"), path
                else:
                    assert r.status == 401, path


# -- sessions ----------------------------------------------------------------------------------------
async def test_login_cookie_logout_and_wrong_tokens(site: Site, browser: Browser) -> None:
    """A wrong or replica token is refused; a good one gets an HttpOnly, SameSite=Strict session cookie;
    logging out ends the session on the server, so the old cookie no longer works."""
    for token, status, text in [
        ("lfsb_nope", 401, "Sign-in refused: malformed token"),
        (site.tokens["read"][:-4] + "0000", 401, "Sign-in refused: unknown token"),
        (site.tokens["replica"], 403, "A replica token can&#39;t sign in"),
        ("", 401, "Sign-in refused: authorization required"),
    ]:
        code, page, resp = await browser.login(token)
        assert code == status and text in page
        assert not any(c.startswith("lfsb_session=") for c in resp.headers.getall("Set-Cookie", []))
    status, _, resp = await browser.login(site.tokens["read"])
    assert (status, resp.headers["Location"]) == (303, "/ui/")
    cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith("lfsb_session="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    status, page, resp = await browser.get("/")
    assert status == 200 and resp.url.path == "/ui/c/test" and ">db</a>" in page
    old = browser.session.cookie_jar.filter_cookies(URL(site.url))["lfsb_session"].value
    assert (await browser.post("/logout", {"csrf": csrf_of(page)}))[0] == 303
    async with (
        aiohttp.ClientSession() as other,
        other.get(
            site.url + "/c/test", headers={"Cookie": f"lfsb_session={old}"}, allow_redirects=False
        ) as r,
    ):
        assert r.status == 303 and r.headers["Location"].startswith("/ui/login")


async def test_login_form_needs_its_csrf_token(site: Site, browser: Browser) -> None:
    """A login post without the login form's token (another site's form) is refused."""
    await browser.get("/login")
    status, page, _ = await browser.post("/login", {"token": site.tokens["admin"]})
    assert status == 403 and "expired" in page
    assert "lfsb_session" not in browser.session.cookie_jar.filter_cookies(URL(site.url))


async def test_revoked_token_ends_its_session(site: Site, browser: Browser) -> None:
    """Revoking a token ends the sessions it opened at their next request."""
    token, text = await site.server.store.access.create("test", Role.ADMIN, "", None)
    assert (await browser.login(text))[0] == 303
    assert (await browser.get("/c/test", follow=False))[0] == 200
    await site.server.store.access.revoke(token.id)
    status, _, resp = await browser.get("/c/test", follow=False)
    assert status == 303 and resp.headers["Location"].startswith("/ui/login")


async def test_roles_and_clusters(site: Site, browser: Browser) -> None:
    """The root token sees the clusters list; a cluster token sees its own cluster only."""
    await browser.login(site.tokens["admin"])
    assert (await browser.get("/clusters"))[0] == 403
    status, page, _ = await browser.get("/c/other")
    assert status == 403 and "EFORBIDDEN" in page
    await browser.login(ROOT_TOKEN)
    status, page, _ = await browser.get("/clusters")
    assert status == 200 and 'href="/ui/c/test"' in page and "/ui/c/other" not in page  # no database yet
    status, page, _ = await browser.get("/c/other")
    assert status == 200 and "No database yet." in page


async def test_post_without_csrf_token_changes_nothing(site: Site, browser: Browser) -> None:
    """An admin's restore post without the session's CSRF token (or with another one) is refused."""
    await browser.login(site.tokens["admin"])
    before = await site.server.store.database("test", "db")
    for data in [{"txid": "0000000000000002", "confirm": "db"}, {"txid": "2", "confirm": "db", "csrf": "x"}]:
        status, page, _ = await browser.post("/c/test/db/db/restore", data)
        assert status == 403 and "ECSRF" in page
    assert await site.server.store.database("test", "db") == before


async def test_read_token_sees_no_admin_action_and_is_refused(site: Site, browser: Browser) -> None:
    """A read session shows no restore or undelete, and a restore it posts anyway (with its valid CSRF
    token) is refused, changes nothing and is audited."""
    await browser.login(site.tokens["read"])
    status, page, _ = await browser.get("/c/test/db/db?txid=0000000000000002")
    assert status == 200 and "Download SQLite export" in page
    assert "/restore" not in page and "Audit" not in page
    before = await site.server.store.database("test", "db")
    status, page, _ = await browser.post(
        "/c/test/db/db/restore", {"csrf": csrf_of(page), "txid": "0000000000000002", "confirm": "db"}
    )
    assert status == 403 and "EFORBIDDEN" in page
    assert (await browser.get("/c/test/db/db/restore?txid=0000000000000002"))[0] == 403
    assert await site.server.store.database("test", "db") == before
    async with Client(site.server.url, token=ROOT_TOKEN) as root:
        log = (await root.fetch("GET", "/audit", params={"cluster": "test"})).data
    assert [(e["action"], e["outcome"], e["database"]) for e in log] == [("restore", "EFORBIDDEN", "db")]


async def test_bad_input_is_a_page_not_a_trace(site: Site, browser: Browser) -> None:
    """Unknown databases, points and malformed TXIDs or times are 4xx pages naming the problem."""
    await browser.login(site.tokens["admin"])
    for path, status, text in [
        ("/c/test/db/nosuch", 404, "ENODB"),
        ("/c/test/db/db?txid=zz", 400, "EBADINPUT"),
        ("/c/test/db/db?txid=00000000000000ff", 404, "ENOTXID"),
        ("/c/test/db/db/restore?timestamp=yesterday", 400, "invalid timestamp"),
        ("/c/test/db/db/restore?timestamp=2001-01-01T00:00:00Z", 404, "ENOTIMESTAMP"),
        ("/c/test/db/db/export?txid=00000000000000ff", 404, "ENOTXID"),
        ("/c/bad%20name/db/db", 400, "EBADCLUSTER"),
    ]:
        got, page, resp = await browser.get(path)
        assert (got, resp.content_type) == (status, "text/html") and text in page, path


# -- a real browser ----------------------------------------------------------------------------------
@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    """A page of headless Debian Chromium (never a downloaded browser)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: apt-get install -y chromium (see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        context = await chromium.new_context(accept_downloads=True, viewport={"width": 1100, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(20_000)
        yield page
        await chromium.close()


async def shot(page: Any, tmp_path: Path, name: str) -> None:
    """A full-page screenshot, kept with the test (and in ``LFSB_SCREENSHOTS`` when set)."""
    path = tmp_path / "screenshots" / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / path.name)


async def sign_in(page: Any, site: Site, token: str) -> None:
    await page.goto(site.url + "/")
    await page.fill("#token", token)
    await page.press("#token", "Enter")  # the keyboard alone
    await page.wait_for_selector("text=Sign out")


async def test_browser_admin_restores_through_the_confirmation(site: Site, page: Any, tmp_path: Path) -> None:
    """Wrong token, then root: clusters → cluster → database; pick a point on the timeline and download
    its export (rows checked); restore by timestamp through the confirmation, after which the LiteFS node
    pulls the restored state; sign out."""
    h = site.history
    await page.goto(site.url + "/")
    await shot(page, tmp_path, "login")
    await page.fill("#token", "not-a-token")
    await page.click("button[type=submit]")
    assert "Sign-in refused" in await page.inner_text("[role=alert]")
    await page.fill("#token", ROOT_TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("h1:text('Clusters')")
    await shot(page, tmp_path, "clusters")
    await page.click("a[href='/ui/c/test']")
    await page.wait_for_selector("h1:text('Cluster test')")
    row = await page.inner_text("table tbody tr")
    assert row.split("\t")[:4] == [
        "db",
        format_txid(len(h.states)),
        "8.0 KiB",
        str(site.node.txid - site.node.hwm),
    ]
    assert "ok" in row and format_txid(7) in row  # the last restore check
    await shot(page, tmp_path, "cluster")
    await page.click("a[href='/ui/c/test/db/db']")
    marks = page.locator("svg circle.pt")
    assert await marks.count() == len(h.states)  # every point written is restorable, none thinned
    assert (
        await page.locator("svg circle.l0").count() >= 1 and await page.locator("svg circle.l1").count() >= 1
    )
    await shot(page, tmp_path, "database")

    picked = 5
    await page.focus(f"svg a[aria-label^='TXID {format_txid(picked)}']")  # points are keyboard links
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#picked")
    async with page.expect_download() as info:
        await page.click("text=Download SQLite export")
    download = await info.value
    assert download.suggested_filename == f"db-{format_txid(picked)}.sqlite"
    await download.save_as(tmp_path / "export.sqlite")
    assert check_sqlite(tmp_path / "export.sqlite") == h[picked].rows

    target = 6
    await page.fill("#r-ts", format_timestamp(h[target].timestamp + 5))  # a time just after TXID 6
    await page.click("#r-ts ~ button")
    await page.wait_for_selector("h1:text('Restore db?')")
    assert await page.inner_text("#point-txid") == format_txid(target)
    assert "disappear" in await page.inner_text(".consequence")
    await shot(page, tmp_path, "restore-confirm")
    await page.fill("#confirm", "wrong")
    await page.click("button.danger")
    assert "nothing was restored" in await page.inner_text("[role=alert]")
    now = (await site.server.store.database("test", "db")).txid
    await page.fill("#confirm", "db")
    await page.click("button.danger")
    await page.wait_for_selector("[role=status]")
    assert f"as TXID {format_txid(now + 1)}" in await page.inner_text("[role=status]")
    assert "restore" in await page.inner_text("#audit ~ div table")

    await site.node.sync()  # the backup is ahead: LiteFS pulls the restored state
    assert site.node.txid == now + 1
    assert site.node.rows("SELECT * FROM t ORDER BY id") == h[target].rows

    await page.click("text=Sign out")
    await page.wait_for_selector("text=Signed out.")
    await page.goto(site.url + "/c/test/db/db")
    assert "/ui/login" in page.url


async def test_browser_read_token_and_undelete(site: Site, page: Any, tmp_path: Path) -> None:
    """A read session sees no admin action; an admin brings a deleted database back through the
    confirmation."""
    async with Client(site.server.url, token=site.tokens["admin"]) as admin:
        assert (await admin.fetch("DELETE", "/db?db=db")).status == 200
    await sign_in(page, site, site.tokens["read"])
    assert page.url.endswith("/ui/c/test")
    assert "Undelete" not in await page.content()
    await page.click("text=Sign out")
    await page.wait_for_selector("text=Signed out.")

    await sign_in(page, site, site.tokens["admin"])
    await page.click("text=Undelete…")
    await page.wait_for_selector("h1:text('Undelete db?')")
    await shot(page, tmp_path, "undelete-confirm")
    await page.fill("#confirm", "db")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("[role=status]")
    assert (await site.server.store.database("test", "db")).txid == site.node.txid
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
    await shot(page, tmp_path, "database-phone")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


# -- the timeline ------------------------------------------------------------------------------------
def ltx(level: int, lo: int, hi: int, ts: int, commit: int = 2) -> LTXFile:
    return LTXFile(level, lo, hi, commit, ts, 0, 0, 100, ts)


def test_timeline_levels_and_gaps() -> None:
    """Each point names the level of the file that ends its plan; TXIDs no plan reaches make a gap."""
    files = [
        ltx(1, 1, 3, 1000),
        ltx(0, 4, 4, 2000, commit=3),
        ltx(9, 1, 6, 3000, commit=5),
        ltx(0, 8, 8, 4000),
    ]
    points = overview.timeline(files, 4096)
    assert [(p.txid, p.level, p.size) for p in points] == [(3, 1, 8192), (4, 0, 12288), (6, 9, 20480)]
    files.append(ltx(0, 7, 7, 3500))
    points = overview.timeline(files, 4096)
    assert [p.txid for p in points] == [3, 4, 6, 7, 8]
    assert [(a.txid, b.txid) for a, b in overview.gaps(points)] == [(4, 6)]
    built = chart.build(points, overview.gaps(points))
    assert built is not None and len(built.marks) == 5 and len(built.gaps) == 1
    assert [m.x for m in built.marks] == sorted(m.x for m in built.marks)  # time runs left to right
    assert [m.y for m in built.marks] == sorted((m.y for m in built.marks), reverse=True)  # TXIDs go up


def test_long_timelines_are_thinned_keeping_gap_ends() -> None:
    """A history longer than the chart draws is thinned evenly; its first, last and gap-end points stay."""
    points = [overview.TimelinePoint(t, t * 10, 4096, 0) for t in range(1, 5001) if t != 2501]
    gaps = overview.gaps(points)
    built = chart.build(points, gaps)
    assert built is not None and len(built.marks) <= chart.MAX_MARKS + 3
    drawn = {m.txid for m in built.marks}
    assert {format_txid(t) for t in (1, 2500, 2502, 5000)} <= drawn
    assert chart.build([], []) is None
