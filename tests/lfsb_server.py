"""Pytest plugin: a real lfsb server on a loopback port, over local-directory storage or moto S3."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from lfsb.config import Config, load_config
from lfsb.server.main import Server

# Level intervals long enough that nothing runs by itself during a test; tests call
# ``server.scheduler.run(level)`` or pass their own LFSB_LEVELS for timed scenarios.
QUIET_LEVELS = "1=1h/1h,2=2h/30d,3=3h/30d"


def server_config(data_path: Path, storage_env: dict[str, str], **env: str) -> Config:
    """A config for a test server on a free loopback port."""
    return load_config(
        {
            "LFSB_DATA_PATH": str(data_path),
            "LFSB_BIND": "127.0.0.1:0",
            "LFSB_LEVELS": QUIET_LEVELS,
            "LFSB_SNAPSHOT_INTERVAL": "24h",
            **storage_env,
            **env,
        }
    )


class Client:
    """A tiny HTTP client for tests: requests as a cluster, JSON decoded."""

    def __init__(self, url: str, cluster: str = "test") -> None:
        self.url = url
        self.cluster = cluster
        self.session = aiohttp.ClientSession()

    async def request(self, method: str, path: str, **kwargs: object) -> tuple[int, object, bytes]:
        headers = {"Authorization": f"cluster {self.cluster}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as resp:
            body = await resp.read()
            data = None
            if resp.content_type == "application/json":
                data = await resp.json()
            return resp.status, data, body

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture(params=["local", "s3"])
def storage_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment selecting the object store: the embedded local directory, or a fresh moto bucket."""
    if request.param == "local":
        return {}
    return request.getfixturevalue("s3_bucket").env()


@pytest.fixture
async def start_server(tmp_path: Path, storage_env: dict[str, str]) -> AsyncIterator[Callable[..., object]]:
    """Start servers (``await start_server(**env)``) on this test's data directory; stopped at the end."""
    servers: list[Server] = []

    async def _start(data_path: Path | None = None, **env: str) -> Server:
        server = Server(server_config(data_path or tmp_path / "data", storage_env, **env))
        await server.start()
        servers.append(server)
        return server

    yield _start
    for server in servers:
        await server.stop()


@pytest.fixture
async def server(start_server: Callable[..., object]) -> Server:
    """A running server with quiet compaction schedules."""
    return await start_server()  # type: ignore[misc]


@pytest.fixture
async def client(server: Server) -> AsyncIterator[Client]:
    """An HTTP client for ``server`` as cluster ``test``."""
    c = Client(server.url)
    yield c
    await c.close()
