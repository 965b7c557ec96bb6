"""A fault-injecting HTTP reverse proxy for tests: put it between the server and moto to make S3 misbehave.

Each request draws one seeded random number and, by the fractions set with :meth:`FaultProxy.set`, gets:

* ``fail``: a 500 ``InternalError`` S3 XML reply, without reaching the upstream;
* ``hang``: no reply at all until ``hang_seconds`` pass (the client's read timeout fires first);
* ``reset``: forwarded (so the upstream may have applied it), then the connection is reset before any reply;
* otherwise forwarded, after ``latency`` seconds.

``down`` refuses everything: the listening socket is closed (new connections are refused) and requests on
connections already open are reset. Counts of what happened, by kind, are in :attr:`FaultProxy.counts`.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
)
ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>injected fault</Message></Error>"
)


@dataclass(frozen=True)
class Faults:
    """Fractions of requests to fail (500), hang or reset, and latency added to the rest."""

    fail: float = 0.0
    hang: float = 0.0
    reset: float = 0.0
    latency: float = 0.0
    down: bool = False


def _reset(request: web.Request) -> None:
    """Abort the request's connection with a TCP RST (SO_LINGER 0), as a crashed peer would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FaultProxy:
    """A reverse proxy on 127.0.0.1 forwarding to ``upstream``, injecting :class:`Faults` (seeded)."""

    def __init__(self, upstream: str, seed: int = 0, hang_seconds: float = 30.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = Faults()
        self.counts: Counter[str] = Counter()
        self.hang_seconds = hang_seconds
        self._rng = random.Random(seed)
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """The proxy's base URL (give it to the S3 client as its endpoint)."""
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> None:
        """Listen on a free port (kept across :meth:`set` ``down=True`` and back)."""
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.AppRunner(web.Application(), shutdown_timeout=0)
        self._runner.app.router.add_route("*", "/{path:.*}", self._handle)
        await self._runner.setup()
        await self._listen()
        self._port = self._runner.addresses[0][1]

    async def _listen(self) -> None:
        self._site = web.TCPSite(self._runner, "127.0.0.1", self._port, reuse_address=True)
        await self._site.start()

    async def set(self, **faults: float | bool) -> None:
        """Switch to the given faults (unnamed ones off); going down or up closes or reopens the port."""
        new = Faults(**faults)  # type: ignore[arg-type]
        if new.down and not self.faults.down:
            await self._site.stop()
            self._site = None
        elif not new.down and self.faults.down:
            await self._listen()
        self.faults = new

    async def stop(self) -> None:
        """Close the port, every connection (hung requests included) and the upstream session."""
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _draw(self) -> str:
        """The fate of the next request: ``down``, ``fail``, ``hang``, ``reset`` or ``ok``."""
        f = self.faults
        r = self._rng.random()
        if f.down:
            return "down"
        for kind, fraction in (("fail", f.fail), ("hang", f.hang), ("reset", f.reset)):
            if r < fraction:
                return kind
            r -= fraction
        return "ok"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = self._draw()
        self.counts[kind] += 1
        body = await request.read()
        if kind == "fail":
            return web.Response(status=500, body=ERROR_BODY, content_type="application/xml")
        if kind == "hang":
            await asyncio.sleep(self.hang_seconds)
        if kind in ("hang", "down"):
            _reset(request)
            return web.Response()  # never delivered: the connection is gone
        await asyncio.sleep(self.faults.latency)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as upstream:
            reply = await upstream.read()
            reply_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            status = upstream.status
        if kind == "reset":
            _reset(request)
            return web.Response()
        if request.method == "HEAD":
            return web.Response(status=status, headers=reply_headers)
        reply_headers.pop("Content-Length", None)
        return web.Response(status=status, headers=reply_headers, body=reply)
