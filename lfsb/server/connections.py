"""Limits on connections: how many are open at once (kept under the file-descriptor limit, with room
for the server's own files), and how long one may sit idle or half-way through its request headers."""

from __future__ import annotations

import asyncio
import json
import logging
import resource

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .app import RETRY_AFTER

log = logging.getLogger(__name__)

IDLE_TIMEOUT = 30.0
"""Seconds a connection may stay open without a whole request: idle before its first request or between
two (keep-alive), or with its request headers half sent. LiteFS reconnects as it needs."""
FD_RESERVE = 256
"""File descriptors kept for the server's own work (metadata db, L0 and temp files, storage sockets)."""

_BODY = json.dumps({"code": "EBUSY", "error": "too many connections"}, separators=(",", ":")) + "\n"
BUSY_RESPONSE = (
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Content-Type: application/json; charset=utf-8\r\n"
    f"Retry-After: {RETRY_AFTER}\r\n"
    "Connection: close\r\n"
    f"Content-Length: {len(_BODY)}\r\n\r\n{_BODY}"
).encode()


def connection_limit(configured: int) -> int:
    """The most connections to serve at once: ``configured``, and no more than the file-descriptor limit
    (raised to its hard limit first) leaves room for :data:`FD_RESERVE` besides."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - FD_RESERVE))


def limit_connections(server: web.Server, limit: int) -> None:
    """Answer a connection past ``limit`` open ones with 503 ``EBUSY`` (``Retry-After``) and close it,
    instead of running out of file descriptors (where accept() fails, in a loop of logged errors)."""
    accept = server.connection_made
    refused = 0

    def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
        nonlocal refused
        accept(handler, transport)
        if len(server.connections) > limit:
            refused += 1
            if refused == 1 or refused % 1000 == 0:
                log.warning("connection refused: %d open, the most allowed refused=%d", limit, refused)
            transport.write(BUSY_RESPONSE)
            handler.force_close()

    server.connection_made = connection_made  # type: ignore[method-assign]
