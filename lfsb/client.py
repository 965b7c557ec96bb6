"""Async HTTP client for the lfsb API: the CLI's only way to talk to a server."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import aiohttp

from .ltx import Pos

DEFAULT_ENDPOINT = "http://127.0.0.1:2200"
CHUNK = 256 * 1024

Progress = Callable[[int], None]
"""Called with the number of bytes just transferred."""


class APIError(Exception):
    """A failed API call: the server's code and message, or why the server could not be reached."""

    def __init__(self, message: str, code: str = "", status: int = 0, pos: Pos | None = None) -> None:
        self.message = message
        self.code = code
        self.status = status
        self.pos = pos
        super().__init__(f"{message} [{code}]" if code else message)


def base_url(endpoint: str) -> str:
    """Scheme and host of ``endpoint`` (any path is dropped, as LiteFS and the Go CLI do)."""
    try:
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        valid = parts.scheme in ("http", "https") and bool(parts.netloc)
    except ValueError:  # e.g. "http://[::1": an unclosed IPv6 bracket
        valid = False
    if not valid:
        raise APIError(f"invalid endpoint {endpoint!r} (expected e.g. {DEFAULT_ENDPOINT})")
    return f"{parts.scheme}://{parts.netloc}"


def target_params(txid: str | None = None, timestamp: str | None = None) -> dict[str, str]:
    """Query parameters naming a point in time."""
    params = {}
    if txid:
        params["txid"] = txid
    if timestamp:
        params["timestamp"] = timestamp
    return params


class Client:
    """Talks to one lfsb server with a token (``Authorization: <token>``; then ``cluster`` is sent as the
    ``cluster`` query parameter, which the root token needs), or without one as a cluster in open mode
    (``Authorization: cluster <name>``)."""

    def __init__(
        self, endpoint: str, cluster: str | None, token: str | None = None, timeout: float | None = None
    ) -> None:
        self.url = base_url(endpoint)
        self.cluster = cluster
        self.token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            authorization = self.token or f"cluster {self.cluster}"
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers={"Authorization": authorization}
            )
        return self._session

    async def _request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        if self.token and self.cluster:
            kwargs["params"] = {"cluster": self.cluster, **kwargs.get("params", {})}
        try:
            resp = await self._http().request(method, self.url + path, **kwargs)
        except aiohttp.ClientConnectorError as e:
            err = e.os_error  # asyncio's "Connect call failed ('127.0.0.1', 2200)": the errno says why
            reason = os.strerror(err.errno) if (err.errno or 0) > 0 else err.strerror or str(err) or "failed"
            raise APIError(f"cannot connect to {self.url}: {reason} (is lfsb-server running?)") from None
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:  # ValueError: a header it won't send
            raise APIError(f"request to {self.url} failed: {e or type(e).__name__}") from None
        if resp.status >= 400:
            body = await resp.read()
            resp.release()
            raise _api_error(resp.status, body)
        return resp

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = await self._request(method, path, **kwargs)
        async with resp:
            return await resp.json(content_type=None)

    async def positions(self) -> dict[str, Pos]:
        """``GET /pos``: every database of the cluster and its position."""
        data = await self._json("GET", "/pos")
        return {name: Pos.from_json(pos) for name, pos in data.items()}

    async def info(self, db: str, all_points: bool = False) -> dict[str, Any]:
        """``GET /db/info``: the restorable range, or every restorable point."""
        params = {"db": db, **({"all": "true"} if all_points else {})}
        return await self._json("GET", "/db/info", params=params)

    async def export(
        self,
        db: str,
        out: BinaryIO,
        fmt: str = "sqlite",
        txid: str | None = None,
        timestamp: str | None = None,
        progress: Callable[[int | None], Progress] | None = None,
    ) -> int:
        """``GET /db/snapshot``: write the database (now or at a point) to ``out``; returns its size."""
        params = {"db": db, "format": fmt, **target_params(txid, timestamp)}
        resp = await self._request("GET", "/db/snapshot", params=params)
        size = 0
        report = progress(resp.content_length) if progress else None
        async with resp:
            try:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    await asyncio.to_thread(out.write, chunk)
                    size += len(chunk)
                    if report:
                        report(len(chunk))
            except aiohttp.ClientPayloadError as e:
                raise APIError(f"transfer from {self.url} broke off: {e}") from None
        if resp.content_length is not None and size != resp.content_length:
            raise APIError(f"transfer from {self.url} broke off after {size} of {resp.content_length} bytes")
        return size

    async def upload(self, db: str, path: Path, progress: Progress | None = None) -> str:
        """``POST /db/upload``: import a raw SQLite file; returns the new TXID."""

        async def _body() -> AsyncIterator[bytes]:
            with path.open("rb") as f:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    if progress:
                        progress(len(chunk))
                    yield chunk

        data = await self._json("POST", "/db/upload", params={"db": db}, data=_body())
        return data["txID"]

    async def restore(self, db: str, txid: str | None = None, timestamp: str | None = None) -> str:
        """``POST /db/restore``: make a past point current; returns the new TXID."""
        params = {"db": db, **target_params(txid, timestamp)}
        return (await self._json("POST", "/db/restore", params=params))["txID"]

    async def restore_check(
        self, db: str, txid: str | None = None, timestamp: str | None = None
    ) -> dict[str, str]:
        """``GET /db/restore/check``: the point a restore would restore (its TXID and timestamp)."""
        params = {"db": db, **target_params(txid, timestamp)}
        return await self._json("GET", "/db/restore/check", params=params)

    async def verify(self, db: str, txid: str | None = None, timestamp: str | None = None) -> dict[str, Any]:
        """``POST /db/verify``: a restore check of a point (default: the newest in object storage) now."""
        params = {"db": db, **target_params(txid, timestamp)}
        return await self._json("POST", "/db/verify", params=params)

    async def status(self) -> list[dict[str, Any]]:
        """``GET /status``: every database of the cluster, its backup lag and last restore check."""
        return (await self._json("GET", "/status"))["databases"]

    async def delete(self, db: str) -> None:
        """``DELETE /db``: remove a database and all its backups."""
        resp = await self._request("DELETE", "/db", params={"db": db})
        resp.release()

    async def deleted(self) -> list[dict[str, str]]:
        """``GET /deleted``: the deleted databases that can still be brought back."""
        return await self._json("GET", "/deleted")

    async def undelete(self, db: str) -> dict[str, str]:
        """``POST /db/undelete``: bring back the newest deleted copy of a database."""
        return await self._json("POST", "/db/undelete", params={"db": db})

    async def purge(self, db: str) -> int:
        """``DELETE /db?purge=true``: remove a database and every deleted copy of it for good."""
        return (await self._json("DELETE", "/db", params={"db": db, "purge": "true"}))["purged"]

    async def create_token(self, role: str, note: str = "", expires: str | None = None) -> dict[str, Any]:
        """``POST /tokens``: a new token of the cluster (its text is in ``token``, shown this once)."""
        params = {
            "role": role,
            **({"note": note} if note else {}),
            **({"expires": expires} if expires else {}),
        }
        return await self._json("POST", "/tokens", params=params)

    async def tokens(self) -> list[dict[str, Any]]:
        """``GET /tokens``: the tokens of the cluster (every cluster's for the root token without one)."""
        return await self._json("GET", "/tokens")

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        """``DELETE /tokens``: revoke a token."""
        return await self._json("DELETE", "/tokens", params={"id": token_id})

    async def audit(self, since: str | None = None) -> list[dict[str, Any]]:
        """``GET /audit``: the audit log, oldest first."""
        return await self._json("GET", "/audit", params={"since": since} if since else {})

    async def reset_cluster_id(self) -> bool:
        """``POST /cluster/reset-id``: forget the pinned LiteFS cluster ID; whether one was pinned."""
        return bool((await self._json("POST", "/cluster/reset-id")).get("wasPinned"))


def _api_error(status: int, body: bytes) -> APIError:
    try:
        data = json.loads(body)
        return APIError(
            data.get("error", ""),
            data.get("code", ""),
            status,
            Pos.from_json(data["pos"]) if data.get("pos") else None,
        )
    except (ValueError, AttributeError, TypeError):
        return APIError(f"internal error: code={status}", status=status)
