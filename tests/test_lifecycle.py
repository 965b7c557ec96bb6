"""The real ``lfsb-server`` process: signals, start-up failures, health, metrics, logs, Sentry, deployment."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lfsb.config import load_config
from lfsb.ltx import encode_database
from tests.lfsb_server import ServerProcess, free_port
from tests.litefs import LiteFSEmulator
from tests.s3server import S3Server, create_bucket

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data")
    await server.start()
    await server.wait_ready()
    yield server
    if server.proc.returncode is None:
        server.proc.kill()
        await server.proc.wait()


def snapshot_body(tmp_path: Path) -> bytes:
    import sqlite3

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(500)])
    out = tmp_path / "snap.ltx"
    with db.open("rb") as src, out.open("wb") as f:
        encode_database(src, f)
    return out.read_bytes()


async def test_sigterm_lets_in_flight_request_finish_and_exits_zero(
    running: ServerProcess, tmp_path: Path
) -> None:
    body = snapshot_body(tmp_path)
    sent_half = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]
        sent_half.set()
        await asyncio.sleep(1.0)
        yield body[len(body) // 2 :]

    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(
            session.post(
                running.url + "/db/tx?db=db",
                data=slow_body(),
                headers={"Authorization": "cluster test"},
            )
        )
        await sent_half.wait()
        await asyncio.sleep(0.2)
        running.proc.send_signal(signal.SIGTERM)
        resp = await request
        assert resp.status == 200
        assert re.fullmatch(r"[0-9a-f]{16}", resp.headers["Litefs-Hwm"])
        resp.release()
    code, stderr = await running.finish()
    assert code == 0, stderr
    assert "shutting down" in stderr and "server stopped" in stderr
    # The acknowledged transaction survived the shutdown.
    again = ServerProcess(tmp_path / "data")
    await again.start()
    await again.wait_ready()
    headers = {"Authorization": "cluster test"}
    async with aiohttp.ClientSession() as session, session.get(again.url + "/pos", headers=headers) as resp:
        assert (await resp.json())["db"]["TXID"] == "0000000000000001"
    again.proc.send_signal(signal.SIGINT)
    assert (await again.finish())[0] == 0


async def test_taken_port_exits_nonzero_with_message(running: ServerProcess, tmp_path: Path) -> None:
    second = ServerProcess(tmp_path / "other", port=running.port)
    await second.start()
    code, stderr = await second.finish()
    assert code != 0
    assert f"LFSB_BIND: cannot listen on 127.0.0.1:{running.port}" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LFSB_LEVELS": "1=10x/1h"}, "LFSB_LEVELS: invalid duration '10x'"),
        ({"LFSB_LEVELS": "2=10s/1h"}, "LFSB_LEVELS: level '2' out of order, expected 1"),
        ({"LFSB_LEVELS": ""}, "LFSB_LEVELS: at least one compaction level is required"),
        ({"LFSB_MAX_TX_BYTES": "lots"}, "LFSB_MAX_TX_BYTES: invalid size 'lots'"),
        ({"LFSB_BIND": "nowhere"}, "LFSB_BIND: invalid address 'nowhere'"),
        ({"LFSB_METRICS_BIND": "9091"}, "LFSB_METRICS_BIND: invalid address '9091'"),
        ({"LFSB_MAX_EXPORTS": "0"}, "LFSB_MAX_EXPORTS: '0' is not a whole number of at least 1"),
        ({"LFSB_DISK_RESERVE": "lots"}, "LFSB_DISK_RESERVE: invalid size 'lots'"),
        ({"LFSB_LOG_FORMAT": "xml"}, "LFSB_LOG_FORMAT: 'xml' is not text or json"),
        ({"LFSB_SNAPSHOT_INTERVAL": "0"}, "LFSB_SNAPSHOT_INTERVAL: must be greater than zero"),
        ({"LFSB_DATA_PATH": ""}, "LFSB_DATA_PATH: required"),
    ],
)
async def test_bad_setting_exits_at_once(tmp_path: Path, env: dict[str, str], message: str) -> None:
    server = ServerProcess(tmp_path / "data", **env)
    await server.start()
    code, stderr = await server.finish(timeout=20)
    assert code != 0
    assert message in stderr
    assert "Traceback" not in stderr


async def test_unusable_data_directory_and_missing_bucket(tmp_path: Path, s3_server: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    server = ServerProcess(blocker / "data")
    await server.start()
    code, stderr = await server.finish()
    assert code != 0 and "LFSB_DATA_PATH: cannot use" in stderr and "Traceback" not in stderr

    settings = create_bucket(s3_server)
    env = {**settings.env(), "BUCKET_NAME": "no-such-bucket-here"}
    server = ServerProcess(tmp_path / "data2", **env)
    await server.start()
    code, stderr = await server.finish()
    assert code != 0 and "BUCKET_NAME: object storage unusable" in stderr and "no-such-bucket-here" in stderr


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_move_with_ingestion_and_compaction(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", LFSB_LEVELS="1=1s/1h,2=1h/30d,3=2h/30d")
    await server.start()
    await server.wait_ready()
    try:
        async with aiohttp.ClientSession() as session, LiteFSEmulator(tmp_path / "node", server.url) as node:

            async def scrape() -> str:
                async with session.get(server.url + "/metrics") as resp:
                    assert resp.status == 200
                    assert resp.content_type == "text/plain"
                    return await resp.text()

            before = await scrape()
            names = {m.group(1) for m in re.finditer(r"^# TYPE (\S+)", before, re.M)}
            assert names and all(n.startswith("lfsb_") for n in names)
            node.execute("CREATE TABLE t (x)")
            for i in range(5):
                node.execute("INSERT INTO t VALUES (?)", (i,))
                await node.sync()
            after = await scrape()
            # The first sync sends TXIDs 1-2 as one snapshot, then one file per transaction.
            assert metric(after, "lfsb_tx_total", cluster="test") == 6
            assert metric(after, "lfsb_tx_files_total", cluster="test") == 5
            assert metric(after, "lfsb_tx_bytes_total", cluster="test") > 0
            assert metric(after, "lfsb_tx_request_duration_seconds_count") == 5
            assert metric(after, "lfsb_level_files", level="0") == 5

            node.execute_unrecorded("INSERT INTO t VALUES ('diverged')")
            node.execute("INSERT INTO t VALUES ('next')")
            await node.sync_until_synced()
            assert metric(await scrape(), "lfsb_position_mismatches_total", cluster="test") == 1

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                text = await scrape()
                lag = metric(text, "lfsb_hwm_lag", cluster="test", database="db")
                if metric(text, "lfsb_level_files", level="1") >= 1 and lag == 0:
                    break
                await asyncio.sleep(0.2)
            assert metric(text, "lfsb_compaction_runs_total", level="1") >= 1
            assert metric(text, "lfsb_compaction_duration_seconds_count", level="1") >= 1
            assert metric(text, "lfsb_level_bytes", level="1") > 0
            assert metric(text, "lfsb_hwm_lag", cluster="test", database="db") == 0
            assert metric(text, "lfsb_compaction_pending", level="1") == 0
            assert 0 <= metric(text, "lfsb_compaction_last_success_age_seconds", level="1") < 10
            assert metric(text, "lfsb_compaction_failures_total", level="1") == 0
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert (await server.finish())[0] == 0


@pytest.mark.parametrize("storage_env", [{}])
async def test_metrics_are_never_served_to_the_network(start_server: Callable[..., Any]) -> None:
    """``/metrics`` names every cluster and database: on a non-loopback main address it is a 404 unless
    ``LFSB_METRICS_BIND`` gives it an address of its own, where it is all that is served."""
    async with aiohttp.ClientSession() as session:

        async def get(url: str) -> tuple[int, str]:
            async with session.get(url) as resp:
                return resp.status, await resp.text()

        public = await start_server(LFSB_BIND="0.0.0.0:0")
        status, body = await get(public.url + "/metrics")
        assert status == 404 and "lfsb_" not in body
        assert public.metrics_url is None
        assert (await get(public.url + "/healthz"))[0] == 200

        split = await start_server(
            Path(public.config.data_path.parent / "split"), LFSB_METRICS_BIND="127.0.0.1:0"
        )
        assert (await get(split.url + "/metrics"))[0] == 404
        assert split.metrics_url is not None
        status, body = await get(split.metrics_url)
        assert status == 200 and "# TYPE lfsb_" in body
        assert (await get(split.metrics_url.removesuffix("/metrics") + "/pos"))[
            0
        ] == 404  # nothing else there


async def test_healthz_follows_object_storage(tmp_path: Path) -> None:
    with S3Server() as s3:
        settings = create_bucket(s3.endpoint)
        server = ServerProcess(tmp_path / "data", **settings.env())
        await server.start()
        await server.wait_ready()
        try:
            async with aiohttp.ClientSession() as session:

                async def health() -> tuple[int, dict]:
                    async with session.get(server.url + "/healthz") as resp:
                        return resp.status, await resp.json()

                assert await health() == (200, {"status": "ok"})
                s3.stop()
                status, body = await health()
                assert status == 503 and "storage" in body["failing"] and "metadata" not in body["failing"]
                s3.start()
                create_bucket(s3.endpoint, settings.bucket)  # moto keeps nothing across restarts
                deadline = time.monotonic() + 20
                while (await health())[0] != 200:
                    assert time.monotonic() < deadline, "storage came back but /healthz did not"
                    await asyncio.sleep(0.2)
        finally:
            server.proc.send_signal(signal.SIGTERM)
            assert (await server.finish())[0] == 0


async def test_json_logs_carry_cluster_and_database(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", LFSB_LOG_FORMAT="json", LFSB_LOG_LEVEL="debug")
    await server.start()
    await server.wait_ready()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            server.url + "/db/tx?db=app",
            data=snapshot_body(tmp_path),
            headers={"Authorization": "cluster prod"},
        ) as resp,
    ):
        assert resp.status == 200
    server.proc.send_signal(signal.SIGTERM)
    code, stderr = await server.finish()
    assert code == 0
    events = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "msg"} <= e.keys() for e in events)
    created = [e for e in events if e["msg"].startswith("database created")]
    assert created and created[0]["cluster"] == "prod" and created[0]["database"] == "app"


async def test_sentry_reports_errors_and_never_blocks(tmp_path: Path) -> None:
    envelopes: list[bytes] = []

    async def collect(request: web.Request) -> web.Response:
        envelopes.append(await request.read())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/{project}/envelope/", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        dsn = f"http://key@127.0.0.1:{port}/1"
        server = ServerProcess(tmp_path / "data", SENTRY_DSN=dsn)
        await server.start()
        await server.wait_ready()
        # A storage fault makes snapshot builds fail: the L0 file vanished behind the server's back.
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": "cluster prod"}
            async with session.post(
                server.url + "/db/tx?db=app", data=snapshot_body(tmp_path), headers=headers
            ) as resp:
                assert resp.status == 200
            for f in (tmp_path / "data" / "l0" / "prod" / "app").iterdir():
                f.unlink()
            async with session.get(server.url + "/db/snapshot?db=app", headers=headers) as resp:
                assert resp.status == 500
                assert await resp.json() == {"code": "EINTERNAL", "error": "internal error"}
        server.proc.send_signal(signal.SIGTERM)
        assert (await server.finish())[0] == 0
        events = [e for e in envelopes if b'"type":"event"' in e]
        assert events, "no event reached the Sentry endpoint"
        assert b'"cluster":"prod"' in events[0] and b'"database":"app"' in events[0]
    finally:
        await runner.cleanup()

    # An unreachable DSN: start-up and shutdown stay prompt.
    server = ServerProcess(tmp_path / "data3", SENTRY_DSN=f"http://key@127.0.0.1:{free_port()}/1")
    started = time.monotonic()
    await server.start()
    await server.wait_ready()
    server.proc.send_signal(signal.SIGTERM)
    assert (await server.finish())[0] == 0
    assert time.monotonic() - started < 15


def test_dockerfile_and_fly_toml_carry_the_deployment_settings() -> None:
    fly = tomllib.loads((REPO / "fly.toml").read_text())
    assert fly["env"]["LFSB_DATA_PATH"] == "/data"
    assert fly["mounts"][0]["destination"] == "/data"
    service = fly["http_service"]
    assert service["internal_port"] == 2200
    assert service["auto_stop_machines"] == "off"
    assert any(c["path"] == "/healthz" for c in service["checks"])
    # Metrics on their own port, the one fly's scraper reads; never on the service port.
    assert fly["metrics"]["port"] == int(fly["env"]["LFSB_METRICS_BIND"].rpartition(":")[2]) != 2200
    assert "public" not in json.dumps(fly).lower() or "no-public-ips" in (REPO / "fly.toml").read_text()
    assert fly["env"]["LFSB_AUTH"] == "tokens"  # protected mode, whatever the bind address
    assert load_config(fly["env"]).auth == "tokens"

    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    instructions = [line.split()[0] for line in lines if line and not line.startswith("#")]
    assert lines[next(i for i, line in enumerate(lines) if line.startswith("FROM"))].startswith(
        "FROM python:3.11-slim"
    )
    assert "USER" in instructions and any(line == "USER lfsb" for line in lines)
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert "/healthz" in (REPO / "Dockerfile").read_text()
    assert any(line.startswith("ENTRYPOINT") and "lfsb-server" in line for line in lines)
    assert any("LFSB_DATA_PATH=/data" in line for line in lines)
    assert any("LFSB_AUTH=tokens" in line for line in lines)
    assert any(line.startswith("RUN pip install .") for line in lines)
    assert not any(re.search(r"\b(curl|wget)\b", line) for line in lines)  # nothing but PyPI/Debian
