"""Notifications and the heartbeat, against a local HTTP receiver: one message per incident and one when
it resolves, retried with backoff; the heartbeat only while every backup is current and checks pass."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lfsb.notify import Notifier
from lfsb.server.main import Server
from tests.lfsb_server import lfsb
from tests.litefs import LiteFSEmulator
from tests.test_verify import compacted_history, flip_byte

WAIT = 20.0


class Receiver:
    """A webhook and heartbeat receiver on loopback: records messages and pings; the first ``fail``
    webhook requests get a 500."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.attempts = 0
        self.pings = 0
        self.fail = 0
        self.url = ""
        self.changed = asyncio.Condition()

    async def _hook(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail:
            return web.Response(status=500)
        self.messages.append(await request.json())
        async with self.changed:
            self.changed.notify_all()
        return web.Response(text="ok")

    async def _ping(self, request: web.Request) -> web.Response:
        self.pings += 1
        async with self.changed:
            self.changed.notify_all()
        return web.Response(text="OK")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_get("/ping", self._ping)
        return app

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds (checked on every message or ping)."""
        async with asyncio.timeout(WAIT), self.changed:
            await self.changed.wait_for(predicate)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    runner = web.AppRunner(r.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    r.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield r
    await runner.cleanup()


async def evaluations(server: Server, count: int) -> None:
    """Wait until the health monitor has looked ``count`` more times."""
    target = server.monitor.evaluations + count
    async with asyncio.timeout(WAIT):
        while server.monitor.evaluations < target:
            await asyncio.sleep(server.monitor.tick / 2)


@pytest.mark.parametrize("storage_env", ["local"], indirect=True)
async def test_one_message_per_incident_retried_then_resolved(
    start_server: Callable, tmp_path: Path, receiver: Receiver
) -> None:
    """A failing check opens one incident (delivered after the receiver's 500, never one per retry or
    per failed check); the check passing again sends one 'resolved'. The shape suits Slack and Discord."""
    receiver.fail = 1
    server: Server = await start_server(LFSB_NOTIFY_URL=receiver.url + "/hook", LFSB_NOTIFY_AFTER="1s")
    server.notifier.retry_first = 0.05
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await compacted_history(server, node)
        await flip_byte(server, (1, 4, 5))
        for _ in range(2):
            assert (await lfsb(server, "verify", "db")).exit_code == 1
        await receiver.wait_for(lambda: len(receiver.messages) == 1)
        (opened,) = receiver.messages
        assert opened["status"] == "open" and opened["incident"] == "check:test/db"
        assert opened["text"] == opened["content"] and "restore check of test/db" in opened["text"]
        assert receiver.attempts == 2  # one failed delivery, retried once
        await flip_byte(server, (1, 4, 5))  # the same byte back: the object is whole again
        assert (await lfsb(server, "verify", "db")).exit_code == 0
        assert (await lfsb(server, "verify", "db")).exit_code == 0
        await receiver.wait_for(lambda: len(receiver.messages) == 2)
        assert receiver.messages[1]["status"] == "resolved"
        assert receiver.messages[1]["incident"] == "check:test/db"
        await evaluations(server, 2)
        assert len(receiver.messages) == 2


@pytest.mark.parametrize("storage_env", ["local"], indirect=True)
async def test_storage_down_incident_after_threshold(
    start_server: Callable, tmp_path: Path, receiver: Receiver
) -> None:
    """Storage down for longer than LFSB_NOTIFY_AFTER is one incident, resolved when it is back; the
    lfsb_storage_up gauge follows."""
    server: Server = await start_server(
        LFSB_NOTIFY_URL=receiver.url + "/hook", LFSB_NOTIFY_AFTER="0.3s", LFSB_HEARTBEAT_INTERVAL="0.1s"
    )
    root = server.config.objects_path
    moved = root.with_name("objects-away")
    root.rename(moved)
    root.write_text("not a directory")
    await receiver.wait_for(lambda: len(receiver.messages) == 1)
    assert receiver.messages[0]["incident"] == "storage" and receiver.messages[0]["status"] == "open"
    assert server.store.metrics.storage_up._value.get() == 0
    root.unlink()
    moved.rename(root)
    await receiver.wait_for(lambda: len(receiver.messages) == 2)
    assert receiver.messages[1]["incident"] == "storage" and receiver.messages[1]["status"] == "resolved"
    assert server.store.metrics.storage_up._value.get() == 1


@pytest.mark.parametrize("storage_env", ["local"], indirect=True)
async def test_heartbeat_only_while_healthy(
    start_server: Callable, tmp_path: Path, receiver: Receiver
) -> None:
    """The heartbeat is requested while all is well, stops while a restore check has failed, and resumes
    once it passes again."""
    server: Server = await start_server(
        LFSB_HEARTBEAT_URL=receiver.url + "/ping", LFSB_HEARTBEAT_INTERVAL="0.1s", LFSB_NOTIFY_AFTER="0.4s"
    )
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        await compacted_history(server, node)
        await server.scheduler.run(1)  # everything in L1: nothing stale
        await receiver.wait_for(lambda: receiver.pings >= 2)
        await flip_byte(server, (1, 4, 5))
        assert (await lfsb(server, "verify", "db")).exit_code == 1
        await evaluations(server, 1)
        pings = receiver.pings
        await evaluations(server, 5)
        assert receiver.pings == pings
        assert server.monitor.last.problems == ["restore check of test/db failed"]
        await flip_byte(server, (1, 4, 5))
        assert (await lfsb(server, "verify", "db")).exit_code == 0
        await receiver.wait_for(lambda: receiver.pings > pings)


async def test_notifier_without_url_only_tracks(tmp_path: Path) -> None:
    """Without LFSB_NOTIFY_URL the incidents are tracked (and logged) but nothing is sent."""
    n = Notifier(None, None)
    n.start()
    n.update("x", True, "broken")
    n.update("x", True, "still broken")
    assert n.open == {"x": "broken"}
    n.update("x", False, "fine")
    assert n.open == {} and n.delivered == 0
    n.ping()
    await n.stop()
