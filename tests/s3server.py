"""A real S3 HTTP API for tests: ``moto_server`` in a subprocess on a free loopback port.

A pytest plugin (``pytest_plugins = ["tests.s3server"]`` in conftest.py) with fixtures:

* ``s3_server`` (session): the endpoint URL of a shared server, started on first use.
* ``s3_bucket``: a fresh, uniquely named bucket on it, as ``S3Settings`` (``.env()`` gives the variables).
* ``object_store``: an open store, parametrized over ``local`` and ``s3``.

Tests that need an outage make their own ``S3Server`` and ``stop()``/``start()`` it; a restart keeps the port
(and so the endpoint) but, moto being in memory, loses every bucket.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import botocore.session
import pytest

from lfsb.storage import LocalStore, ObjectStore
from lfsb.storage.s3 import S3Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_command() -> list[str]:
    exe = Path(sys.executable).parent / "moto_server"
    if exe.exists():
        return [str(exe)]
    if found := shutil.which("moto_server"):
        return [found]
    return [sys.executable, "-m", "moto.server"]


class S3Server:
    """A ``moto_server`` process on 127.0.0.1; ``start()`` waits until it answers, ``stop()`` kills it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the server's output, kept until __exit__

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        cmd = [*_moto_command(), "-H", "127.0.0.1", "-p", str(self.port)]
        self._proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._proc.returncode}: {self._output()}")
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"moto_server did not answer on {self.endpoint} within {timeout}s: {self._output()}"
        )

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read()[-2000:].decode(errors="replace")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.close()


@dataclass(frozen=True)
class S3Settings:
    """Where a test bucket lives, and the credentials moto accepts."""

    endpoint: str
    bucket: str
    region: str = "us-east-1"
    access_key: str = "testing"
    secret_key: str = "testing"

    def env(self) -> dict[str, str]:
        """The environment variables the server reads (design.md §5)."""
        return {
            "BUCKET_NAME": self.bucket,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }


def create_bucket(endpoint: str, bucket: str | None = None) -> S3Settings:
    """Create a bucket (a fresh unique name unless given) on an S3 endpoint."""
    settings = S3Settings(endpoint, bucket or f"test-{uuid.uuid4().hex[:16]}")
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=settings.region,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
    )
    with contextlib.closing(client):
        client.create_bucket(Bucket=settings.bucket)
    return settings


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    with S3Server() as server:
        yield server.endpoint


@pytest.fixture
def s3_bucket(s3_server: str) -> S3Settings:
    return create_bucket(s3_server)


@pytest.fixture(params=["local", "s3"])
async def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "local":
        store: ObjectStore = LocalStore(tmp_path / "objects")
    else:
        store = S3Store.from_env(request.getfixturevalue("s3_bucket").env())
    async with store:
        yield store
