"""Access control: every route against every kind of credential, token commands, protected mode, the
failure limit, the cluster-ID pin for replicas, and the audit log; against a real server over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from lfsb.cli import main
from lfsb.observability import scrub_event
from lfsb.server.main import Server
from lfsb.server.roles import ALL_CLUSTER_ROUTES, AUDITED, PUBLIC_ROUTES, ROUTE_ROLES
from lfsb.store.access import FAILURE_LIMIT, Role
from tests.lfsb_server import Client, lfsb, server_state
from tests.litefs import LiteFSEmulator, SyncError

local_only = pytest.mark.parametrize("storage_env", ["local"], indirect=True)

ROOT_TOKEN = "root-" + "r" * 40
CLUSTER_ID = "LFSC00000000000000AA"

ROUTE_CASES: dict[tuple[str, str], tuple[str, int]] = {
    # route: (a request that changes nothing, its status when allowed)
    ("GET", "/pos"): ("/pos", 200),
    ("POST", "/db/tx"): ("/db/tx?db=db", 400),  # an empty body: EBADLTX
    ("GET", "/db/snapshot"): ("/db/snapshot?db=db", 200),
    ("GET", "/db/info"): ("/db/info?db=db", 200),
    ("GET", "/db/restore/check"): ("/db/restore/check?db=db&txid=0000000000000001", 200),
    ("GET", "/deleted"): ("/deleted", 200),
    ("POST", "/db/verify"): ("/db/verify?db=nosuch", 404),
    ("GET", "/status"): ("/status", 200),
    ("POST", "/db/restore"): ("/db/restore?db=nosuch&txid=0000000000000001", 404),
    ("POST", "/db/upload"): ("/db/upload?db=nosuch", 422),  # an empty body: EBADHEADER
    ("DELETE", "/db"): ("/db?db=nosuch", 404),
    ("POST", "/db/undelete"): ("/db/undelete?db=nosuch", 404),
    ("POST", "/cluster/reset-id"): ("/cluster/reset-id", 200),
    ("POST", "/tokens"): ("/tokens?role=superuser", 400),
    ("GET", "/tokens"): ("/tokens", 200),
    ("DELETE", "/tokens"): ("/tokens?id=000000000000", 404),
    ("GET", "/audit"): ("/audit", 200),
}
PAST_SNAPSHOT = ("GET", "/db/snapshot?db=db&txid=0000000000000001")


def test_every_route_has_a_case() -> None:
    """The table of least roles covers every route the server serves, and this test covers the table."""
    assert set(ROUTE_CASES) == set(ROUTE_ROLES)
    assert not set(ROUTE_ROLES) & PUBLIC_ROUTES
    assert set(AUDITED) <= {r for r, role in ROUTE_ROLES.items() if role == Role.ADMIN}
    assert set(ROUTE_ROLES) >= ALL_CLUSTER_ROUTES


async def create_token(server: Server, cluster: str, role: str, **params: str) -> dict[str, Any]:
    """A new token, made with the root token."""
    async with Client(server.url, token=ROOT_TOKEN) as client:
        reply = await client.fetch("POST", "/tokens", params={"cluster": cluster, "role": role, **params})
    assert reply.status == 200, reply.body
    return reply.data


@pytest.fixture
async def token_server(start_server: Callable[..., Any], tmp_path: Path) -> Server:
    """A server in token mode (the root token is set) with database ``db`` written by LiteFS."""
    server = await start_server(LFSB_ADMIN_TOKEN=ROOT_TOKEN)
    replica = await create_token(server, "test", "replica")
    async with LiteFSEmulator(
        tmp_path / "node", server.url, token=replica["token"], cluster_id=CLUSTER_ID
    ) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await node.sync()
        node.execute("INSERT INTO t (v) VALUES ('one')")
        await node.sync()
    return server


async def credentials(server: Server) -> dict[str, tuple[str | None, int | None]]:
    """Every kind of credential: (Authorization value, the role it gives on cluster ``test``); a None
    role is a 401, and the root token is left out (it needs ``cluster=``)."""
    revoked = await create_token(server, "test", "admin")
    async with RootClient(server.url) as root:
        assert (await root.fetch("DELETE", f"/tokens?id={revoked['id']}")).status == 200
    expired = await create_token(server, "test", "admin", expires="1s")
    kinds: dict[str, tuple[str | None, int | None]] = {
        "none": (None, None),
        "malformed": ("lfsb_123_456", None),
        "unknown": (f"lfsb_{secrets.token_hex(6)}_{secrets.token_hex(32)}", None),
        "wrong secret": (revoked["token"][:-4] + "0000", None),
        "revoked": (revoked["token"], None),
        "cluster name": ("cluster test", None),
        "other cluster": ((await create_token(server, "other", "admin"))["token"], 0),  # below any role
    }
    for role in Role:
        kinds[str(role)] = ((await create_token(server, "test", str(role)))["token"], role)
        kinds[f"bearer {role}"] = ("Bearer " + kinds[str(role)][0], role)  # type: ignore[operator]
    await asyncio.sleep(1.1)  # the expiring token's second
    kinds["expired"] = (expired["token"], None)
    return kinds


@local_only
async def test_every_route_with_every_credential(token_server: Server) -> None:
    """The exact status and code of every route for every credential, and nothing changed by a refusal."""
    server = token_server
    async with RootClient(server.url) as root:
        before = await server_state(server, root)
        for i, (kind, (authorization, role)) in enumerate((await credentials(server)).items()):
            headers = {"Litefs-Cluster-Id": CLUSTER_ID}
            if authorization:
                headers["Authorization"] = authorization
            cases = [(route, *case) for route, case in ROUTE_CASES.items()]
            cases.append((("GET", "/db/snapshot"), PAST_SNAPSHOT[1], 200))
            # Each kind from its own address, so the failure limit (per address) does not step in.
            async with from_address(f"127.0.0.{i + 2}") as session:
                for route, target, allowed_status in cases:
                    need = Role.READ if target == PAST_SNAPSHOT[1] else ROUTE_ROLES[route]
                    url = f"{server.url}{target}{'&' if '?' in target else '?'}cluster=test"
                    async with session.request(route[0], url, headers=headers) as resp:
                        status, body = resp.status, await resp.read()
                    where = (kind, route, target, body)
                    if role is None:
                        assert status == 401 and json.loads(body)["code"] == "EUNAUTHORIZED", where
                    elif role < need:
                        assert status == 403 and json.loads(body)["code"] == "EFORBIDDEN", where
                    else:
                        assert status == allowed_status, where
        after = await server_state(server, root)
    assert (after.positions, after.contents) == (before.positions, before.contents)
    assert before.positions and sorted(after.files ^ before.files) == []


def from_address(address: str) -> aiohttp.ClientSession:
    """An HTTP session whose connections come from ``address`` (any 127.0.0.0/8 address is this host)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


class RootClient(Client):
    """The root token acting on cluster ``test`` (``cluster=`` on every request)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, token=ROOT_TOKEN)

    async def fetch(self, method: str, path: str, **kwargs: Any) -> Any:
        sep = "&" if "?" in path else "?"
        return await super().fetch(method, f"{path}{sep}cluster=test", **kwargs)


@local_only
async def test_replica_token_runs_litefs_and_survives_restart(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """LiteFS runs end to end with a replica token, across a restart; it cannot restore, import, delete
    or read an old point."""
    server = await start_server(LFSB_ADMIN_TOKEN=ROOT_TOKEN)
    replica = await create_token(server, "test", "replica", note="app one")
    async with LiteFSEmulator(tmp_path / "node", server.url, token=replica["token"]) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await node.sync()
        await server.stop()
        server = await start_server(LFSB_ADMIN_TOKEN=ROOT_TOKEN)
        node.endpoint = server.url
        for i in range(3):
            node.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            await node.sync()
        assert (await server.store.positions("test"))["db"].txid == node.txid
        headers = {"Litefs-Cluster-Id": node.cluster_id}
        async with Client(server.url, token=replica["token"]) as client:
            for method, target in [
                ("POST", "/db/restore?db=db&txid=0000000000000001"),
                ("POST", "/db/upload?db=db"),
                ("DELETE", "/db?db=db"),
                ("GET", "/db/snapshot?db=db&txid=0000000000000001"),
                ("GET", "/db/info?db=db"),
            ]:
                reply = await client.fetch(method, target, headers=headers)
                assert (reply.status, reply.data["code"]) == (403, "EFORBIDDEN"), target
            assert (await client.fetch("GET", "/db/snapshot?db=db", headers=headers)).status == 200
    async with RootClient(server.url) as root:
        [listed] = (await root.fetch("GET", "/tokens")).data
        assert (listed["id"], listed["note"], listed["state"]) == (replica["id"], "app one", "valid")
        assert listed["lastUsedAt"] is not None and "token" not in listed
        log = (await root.fetch("GET", "/audit")).data
    refused = [(e["action"], e["outcome"], e["tokenId"]) for e in log if e["outcome"] != "ok"]
    assert ("restore", "EFORBIDDEN", replica["id"]) in refused and (
        "delete",
        "EFORBIDDEN",
        replica["id"],
    ) in refused
    assert any(e["action"] == "token-create" and e["tokenId"] == "root" for e in log)


@local_only
async def test_rotation_without_losing_a_transaction(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """Two replica tokens are valid at once while LiteFS moves to the new one; a revoked token is refused
    on the very next request, an expired one once its time is up."""
    server = await start_server(LFSB_ADMIN_TOKEN=ROOT_TOKEN)
    old = await create_token(server, "test", "replica")
    new = await create_token(server, "test", "replica", expires="1h")
    async with LiteFSEmulator(tmp_path / "node", server.url, token=old["token"]) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await node.sync()
        node.execute("INSERT INTO t (v) VALUES ('before')")
        node.token = new["token"]  # the app restarted with the new LITEFS_CLOUD_TOKEN
        await node.sync()
        async with RootClient(server.url) as root:
            assert (await root.fetch("DELETE", f"/tokens?id={old['id']}")).data["state"] == "revoked"
        node.execute("INSERT INTO t (v) VALUES ('after')")
        await node.sync()
        assert (await server.store.positions("test"))["db"].txid == node.txid
        node.token = old["token"]
        node.execute("INSERT INTO t (v) VALUES ('refused')")
        with pytest.raises(SyncError) as refused:
            await node.sync()
        assert refused.value.code == "EUNAUTHORIZED"
    async with Client(server.url, token=old["token"]) as client:
        reply = await client.fetch("GET", "/pos")
        assert (reply.status, reply.data["error"]) == (401, f"token {old['id']} is revoked")


@pytest.mark.parametrize("storage_env", [{}])
async def test_protected_mode(start_server: Callable[..., Any], tmp_path: Path, caplog: Any) -> None:
    """Tokens are required beyond loopback unless LFSB_AUTH=open (with a warning), and on loopback once
    any token exists; `cluster NAME` then gets a 401 saying how to make a token."""
    caplog.set_level(logging.INFO)
    public = await start_server(tmp_path / "public", LFSB_BIND="0.0.0.0:0")
    async with Client(public.url) as client:
        reply = await client.fetch("GET", "/pos")
        assert (reply.status, reply.data["code"]) == (401, "EUNAUTHORIZED")
        assert "lfsb token create CLUSTER --role replica" in reply.data["error"]

    caplog.clear()
    open_public = await start_server(tmp_path / "open", LFSB_BIND="0.0.0.0:0", LFSB_AUTH="open")
    assert any("LFSB_AUTH=open on a non-loopback address" in r.message for r in caplog.records)
    async with Client(open_public.url) as client:
        assert (await client.fetch("GET", "/pos")).status == 200

    local = await start_server(tmp_path / "local")
    async with Client(local.url) as client:
        assert (await client.fetch("GET", "/pos")).status == 200
        made = await client.fetch("POST", "/tokens?role=admin")
        assert made.status == 200 and made.data["token"].startswith(f"lfsb_{made.data['id']}_")
        assert (await client.fetch("GET", "/pos")).status == 401  # a token exists now
        reply = await client.fetch("GET", "/pos", headers={"Authorization": made.data["token"]})
        assert reply.status == 200
    await local.stop()
    restarted = await start_server(tmp_path / "local")  # the switch lasts: tokens are in the metadata db
    async with Client(restarted.url) as client:
        assert (await client.fetch("GET", "/pos")).status == 401
    async with RootClient(restarted.url) as root:
        assert (await root.fetch("GET", "/pos")).status == 401  # no LFSB_ADMIN_TOKEN on this one


@local_only
async def test_failure_limit(token_server: Server) -> None:
    """After 20 failed authentications within a minute an address gets 429 for everything, a valid token
    included; another address is not affected; failures are counted by reason."""
    server = token_server
    read = await create_token(server, "test", "read")
    async with from_address("127.0.0.50") as session:
        for i in range(FAILURE_LIMIT):
            bad = "lfsb_bad" if i % 2 else f"lfsb_{secrets.token_hex(6)}_{secrets.token_hex(32)}"
            async with session.get(server.url + "/pos", headers={"Authorization": bad}) as resp:
                assert resp.status == 401
        async with session.get(server.url + "/pos", headers={"Authorization": read["token"]}) as resp:
            assert (resp.status, (await resp.json())["code"]) == (429, "ERATELIMIT")
    async with (
        from_address("127.0.0.51") as session,
        session.get(server.url + "/pos", headers={"Authorization": read["token"]}) as resp,
    ):
        assert resp.status == 200
    metrics = b"".join(server.store.metrics.render()).decode()
    assert 'lfsb_auth_failures_total{reason="unknown"} 10.0' in metrics
    assert 'lfsb_auth_failures_total{reason="malformed"} 10.0' in metrics


@local_only
async def test_replica_must_carry_the_pinned_cluster_id(token_server: Server) -> None:
    """Once a cluster is pinned, a replica's requests must carry its ID; an admin may act without it, and
    only an admin may reset it; no answer echoes the pinned ID."""
    server = token_server
    replica, admin = [await create_token(server, "test", role) for role in ("replica", "admin")]
    async with Client(server.url, token=replica["token"]) as client:
        reply = await client.fetch("GET", "/pos")
        assert (reply.status, reply.data["code"]) == (
            422,
            "ECLUSTERID",
        ) and CLUSTER_ID not in reply.body.decode()
        assert (await client.fetch("GET", "/pos", headers={"Litefs-Cluster-Id": CLUSTER_ID})).status == 200
        assert (await client.fetch("POST", "/cluster/reset-id")).status == 403
    async with Client(server.url, token=admin["token"]) as client:
        reply = await client.fetch("POST", "/cluster/reset-id")
        assert reply.data == {"cluster": "test", "wasPinned": True}
    async with Client(server.url, token=replica["token"]) as client:
        assert (await client.fetch("GET", "/pos")).status == 200  # nothing pinned now


@local_only
async def test_root_token_names_its_cluster(token_server: Server) -> None:
    """The root token must name the cluster of a cluster route; it lists every cluster's tokens."""
    await create_token(token_server, "other", "read")
    async with Client(token_server.url, token=ROOT_TOKEN) as root:
        reply = await root.fetch("GET", "/pos")
        assert (reply.status, reply.data["code"]) == (400, "EBADINPUT")
        assert (await root.fetch("GET", "/pos?cluster=test")).status == 200
        clusters = {t["cluster"] for t in (await root.fetch("GET", "/tokens")).data}
        assert clusters == {"test", "other"}
        assert {t["cluster"] for t in (await root.fetch("GET", "/tokens?cluster=other")).data} == {"other"}


@pytest.mark.parametrize("storage_env", [{}])
async def test_cli_tokens_and_audit(start_server: Callable[..., Any], tmp_path: Path, caplog: Any) -> None:
    """`lfsb token create/list/revoke` and `lfsb audit` through a real server; the secret is printed once
    and never appears in a listing or a log line; tokens and the audit log survive a restart."""
    caplog.set_level(logging.DEBUG)
    server = await start_server()
    created = await lfsb(server, "token", "create", "test", "--role", "admin", "--note", "ops laptop")
    assert created.exit_code == 0, created.output
    text = created.stdout.strip().splitlines()[-1]
    token_id = text.split("_")[1]
    assert text.startswith("lfsb_") and "not shown again" in created.stderr
    secret = text.split("_")[2]

    await server.stop()
    server = await start_server()
    argv = ["-e", server.url, "--token", text]
    listed = await lfsb_raw(*argv, "token", "list")
    assert listed.exit_code == 0 and token_id in listed.stdout and "ops laptop" in listed.stdout
    assert secret not in listed.stdout
    assert (await lfsb_raw(*argv, "list", "--json")).exit_code == 0
    revoked = await lfsb_raw(*argv, "token", "revoke", token_id)
    assert revoked.exit_code == 0, revoked.output
    refused = await lfsb_raw(*argv, "list")
    assert refused.exit_code == 1 and f"token {token_id} is revoked [EUNAUTHORIZED]" in refused.stderr

    await server.stop()
    server = await start_server(LFSB_ADMIN_TOKEN=ROOT_TOKEN)
    entries = json.loads((await lfsb_raw("-e", server.url, "--token", ROOT_TOKEN, "audit", "--json")).stdout)
    assert [(e["action"], e["outcome"], e["tokenId"]) for e in entries] == [
        ("token-create", "ok", None),
        ("token-revoke", "ok", token_id),
    ]
    assert secret not in caplog.text and ROOT_TOKEN not in caplog.text


async def lfsb_raw(*argv: str) -> Any:
    """``lfsb ARGV`` in-process on a worker thread, with no endpoint or cluster added."""
    return await asyncio.to_thread(CliRunner().invoke, main, list(argv), catch_exceptions=False)


def test_sentry_events_carry_no_secret() -> None:
    event = {
        "request": {
            "headers": {"Authorization": "lfsb_x_y", "Cookie": "s=1", "Accept": "*/*"},
            "cookies": {"s": "1"},
        }
    }
    scrubbed = scrub_event(event)
    assert scrubbed["request"] == {
        "headers": {"Authorization": "[Filtered]", "Cookie": "[Filtered]", "Accept": "*/*"}
    }


@pytest.mark.parametrize("storage_env", [{}])
async def test_upgrade_keeps_open_mode_until_tokens_exist(
    start_server: Callable[..., Any], tmp_path: Path
) -> None:
    """A data directory of the previous release (migrations up to 0003) upgrades at start and keeps
    working in open mode, its databases intact, until a token is created."""
    server = await start_server()
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await node.sync()
    before = await server.store.positions("test")
    await server.stop()
    conn = sqlite3.connect(server.config.data_path / "server.db")
    conn.executescript(
        "DROP TABLE tokens; DROP TABLE audit; ALTER TABLE databases DROP COLUMN deleted_at;"
        " ALTER TABLE databases DROP COLUMN moved_from; DELETE FROM schema_migrations WHERE version = 4;"
    )
    conn.close()
    server = await start_server()
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        node.execute("INSERT INTO t (v) VALUES ('after the upgrade')")
        await node.sync()
        assert (await server.store.positions("test"))["db"].txid == before["db"].txid + 1
    async with Client(server.url) as client:
        assert (await client.fetch("POST", "/tokens?role=replica")).status == 200
        assert (await client.fetch("GET", "/pos")).status == 401
