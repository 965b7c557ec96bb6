"""Notifications: a webhook message per incident (and one when it resolves), and a heartbeat ping.

The store decides what is wrong (:mod:`lfsb.store.health`, restore checks, the scrub) and calls
:meth:`Notifier.update` and :meth:`Notifier.ping`, which only queue: deliveries run on a task of their
own, are retried with backoff and never block a request or a check. The message is JSON that Slack and
Discord incoming webhooks and ntfy accept (``text`` for Slack, ``content`` for Discord; ntfy shows the
body as it is). Neither URL is ever logged: they usually carry a secret token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
"""Messages waiting for delivery at most (more are dropped, with a log line)."""
RETRY_FIRST = 1.0
RETRY_MAX = 300.0
TIMEOUT = 10.0
DISCORD_LIMIT = 2000


class Incidents(Protocol):
    """What the store reports through: whether a condition (``key``) is failing now."""

    def update(self, key: str, failing: bool, summary: str) -> None:
        """Open the incident ``key`` when it starts failing, resolve it when it stops (else nothing)."""


@dataclass(frozen=True)
class Message:
    """One webhook message: an incident opened or resolved."""

    key: str
    status: str
    """``open`` or ``resolved``."""
    summary: str

    def to_json(self) -> dict[str, str]:
        """The JSON body."""
        text = f"{'🔴 lfsb incident' if self.status == 'open' else '✅ lfsb resolved'}: {self.summary}"
        text = text[:DISCORD_LIMIT]
        return {"text": text, "content": text, "incident": self.key, "status": self.status}


class Notifier:
    """Delivers incident messages to ``LFSB_NOTIFY_URL`` and heartbeats to ``LFSB_HEARTBEAT_URL``."""

    def __init__(
        self, notify_url: str | None, heartbeat_url: str | None, retry_first: float = RETRY_FIRST
    ) -> None:
        self.notify_url = notify_url
        self.heartbeat_url = heartbeat_url
        self.retry_first = retry_first
        self.open: dict[str, str] = {}
        """The open incidents: key -> summary."""
        self.delivered = 0
        self.pings = 0
        self._queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_SIZE)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    def update(self, key: str, failing: bool, summary: str) -> None:
        """Open the incident ``key`` (one message) when it starts failing, resolve it (one message) when it
        stops; a condition that stays as it was sends nothing."""
        if failing == (key in self.open):
            return
        if failing:
            self.open[key] = summary
            log.warning("incident opened incident=%s summary=%s", key, summary)
        else:
            del self.open[key]
            log.info("incident resolved incident=%s summary=%s", key, summary)
        if self.notify_url is None:
            return
        try:
            self._queue.put_nowait(Message(key, "open" if failing else "resolved", summary))
        except asyncio.QueueFull:
            log.error("notification dropped, too many waiting incident=%s", key)

    def ping(self) -> None:
        """Request the heartbeat URL once (in the background; a failure is logged, the next ping retries)."""
        if self.heartbeat_url is not None and not any(t.get_name() == "heartbeat" for t in self._tasks):
            self._spawn(self._ping(), "heartbeat")

    def start(self) -> None:
        """Start delivering."""
        self._spawn(self._deliver(), "notify")

    async def stop(self) -> None:
        """Stop delivering (messages not yet delivered are dropped)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        return self._session

    async def _deliver(self) -> None:
        while True:
            message = await self._queue.get()
            delay = self.retry_first
            while not await self._post(message):
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            self.delivered += 1

    async def _post(self, message: Message) -> bool:
        """One delivery attempt; True when the receiver took it (2xx)."""
        assert self.notify_url is not None
        try:
            async with self._http().post(self.notify_url, json=message.to_json()) as resp:
                if resp.status < 300:
                    return True
                reason = f"status {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as e:
            reason = type(e).__name__
        log.warning("notification not delivered, retrying incident=%s reason=%s", message.key, reason)
        return False

    async def _ping(self) -> None:
        assert self.heartbeat_url is not None
        with contextlib.suppress(asyncio.CancelledError):
            try:
                async with self._http().get(self.heartbeat_url) as resp:
                    if resp.status < 300:
                        self.pings += 1
                        return
                    reason = f"status {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                reason = type(e).__name__
            log.warning("heartbeat not delivered reason=%s", reason)
