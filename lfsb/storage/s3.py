"""S3 (or any S3-compatible service) as object store, through aiobotocore.

Transient failures (connection errors, timeouts, 5xx, throttling) are retried with bounded exponential
backoff; client errors (missing key or bucket, access denied) fail at once. File bodies never sit in memory
whole: files up to ``part_size`` go in one PUT, bigger ones as a multipart upload of ``part_size`` parts, each
read (and its Content-MD5 computed) in a worker thread; downloads stream to disk in chunks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import random
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from ..config import S3Settings, s3_settings
from .base import (
    MARKER_PREFIX,
    FileInfo,
    FileMetadata,
    NotFound,
    ObjectStore,
    StorageError,
    cluster_prefix,
    database_prefix,
    level_prefix,
    object_key,
    parse_level,
    parse_object_key,
)
from .local import WriteBehind

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 16 * MiB
DOWNLOAD_CHUNK_SIZE = 1 * MiB
DELETE_BATCH = 1000

_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "403"})

T = TypeVar("T")


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 429 or e.response.get("Error", {}).get("Code") in _TRANSIENT_CODES
    return isinstance(
        e,
        HTTPClientError | BotoConnectionError | IncompleteReadError | aiohttp.ClientError | TimeoutError,
    )


def _read_part(f: BinaryIO, size: int) -> tuple[bytes, str]:
    """Up to ``size`` bytes of ``f`` and their base64 MD5 (for Content-MD5), in a worker thread."""
    data = f.read(size)
    return data, base64.b64encode(hashlib.md5(data).digest()).decode()


def _response_time(resp: Mapping[str, Any]) -> datetime:
    """The server's Date header of a response (close to the object's LastModified), else now."""
    date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    with contextlib.suppress(TypeError, ValueError):
        if date:
            return parsedate_to_datetime(date).astimezone(UTC)
    return datetime.now(UTC)


class S3Store(ObjectStore):
    """Objects in one S3 bucket. The client is created on first use; ``close()`` releases it."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        attempts: int = 5,
        retry_delay: float = 0.2,
        max_retry_delay: float = 5.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        part_size: int = DEFAULT_PART_SIZE,
        max_keys: int = 1000,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name required")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._attempts = attempts
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._part_size = part_size
        self._max_keys = max_keys
        s3_options: dict[str, Any] = {"payload_signing_enabled": False}  # bodies carry Content-MD5 instead
        if endpoint_url:
            s3_options["addressing_style"] = "path"
        self._config = AioConfig(
            s3=s3_options,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1},  # retries are ours (see _retry)
            # Flexible checksums only where S3 demands them: many S3-compatible services reject the rest.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._open_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: S3Settings, **options: Any) -> S3Store:
        """A store for :class:`lfsb.config.S3Settings`; ``options`` go to the constructor."""
        return cls(
            settings.bucket,
            endpoint_url=settings.endpoint,
            region=settings.region,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            **options,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **options: Any) -> S3Store:
        """A store configured like upstream by ``BUCKET_NAME`` and ``AWS_*`` (see ``config.s3_settings``)."""
        settings = s3_settings(environ)
        if settings is None:
            raise ValueError("BUCKET_NAME is not set")
        return cls.from_settings(settings, **options)

    def __str__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}{where}"

    async def _get_client(self) -> Any:
        async with self._open_lock:
            if self._client is None:
                stack = contextlib.AsyncExitStack()
                self._client = await stack.enter_async_context(
                    get_session().create_client(
                        "s3",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        aws_access_key_id=self._access_key,
                        aws_secret_access_key=self._secret_key,
                        config=self._config,
                    )
                )
                self._exit_stack = stack
            return self._client

    async def close(self) -> None:
        async with self._open_lock:
            if self._exit_stack is not None:
                await self._exit_stack.aclose()
            self._client = self._exit_stack = None

    # -- errors and retries ------------------------------------------------------------------------------

    def _error(self, what: str, e: Exception) -> StorageError:
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = err.get("Code", "")
            message = err.get("Message") or code
            if code in _NOT_FOUND_CODES:
                return NotFound(f"{what}: not found")
            if code == "NoSuchBucket":
                return StorageError(f"{what}: bucket {self.bucket!r} does not exist")
            if code in _DENIED_CODES:
                return StorageError(f"{what}: access denied, check the credentials ({code}: {message})")
            return StorageError(f"{what}: {code}: {message}")
        if isinstance(e, BotoCoreError | aiohttp.ClientError | TimeoutError):
            return StorageError(f"{what}: {type(e).__name__}: {e}")
        if isinstance(e, OSError):
            return StorageError(f"{what}: {e}")
        return StorageError(f"{what}: unexpected error: {type(e).__name__}: {e}")

    async def _retry(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn``, retrying transient failures; every failure comes out as StorageError."""
        delay = self._retry_delay
        attempt = 1
        while True:
            try:
                return await fn()
            except StorageError:
                raise
            except Exception as e:
                if attempt >= self._attempts or not _is_transient(e):
                    suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                    err = self._error(what, e)
                    raise type(err)(f"{err}{suffix}") from e
                pause = delay * random.uniform(0.5, 1.0)
                log.warning(
                    "%s failed (attempt %d of %d), retrying in %.2fs: %s",
                    what,
                    attempt,
                    self._attempts,
                    pause,
                    e,
                )
            await asyncio.sleep(pause)
            delay = min(delay * 2, self._max_retry_delay)
            attempt += 1

    async def _call(self, what: str, operation: str, **params: Any) -> dict[str, Any]:
        async def call() -> dict[str, Any]:
            client = await self._get_client()
            return await getattr(client, operation)(Bucket=self.bucket, **params)

        return await self._retry(what, call)

    def _where(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    # -- listing -----------------------------------------------------------------------------------------

    async def _list(self, prefix: str, recursive: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
        """All objects directly under ``prefix`` and the names of its sub-prefixes (delimiter ``/``), or
        with ``recursive`` every object under it."""
        objects: list[dict[str, Any]] = []
        names: list[str] = []
        params: dict[str, Any] = {"Prefix": prefix, "MaxKeys": self._max_keys}
        if not recursive:
            params["Delimiter"] = "/"
        while True:
            page = await self._call(f"list {self._where(prefix)}", "list_objects_v2", **params)
            objects.extend(page.get("Contents", []))
            names.extend(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                return objects, names
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def list_files(self, cluster: str, database: str, level: int) -> list[FileInfo]:
        objects, _ = await self._list(level_prefix(cluster, database, level))
        return sorted(_file_infos(objects), key=lambda i: (i.min_txid, i.max_txid))

    async def list_cluster(self, cluster: str) -> dict[str, list[FileInfo]]:
        objects, _ = await self._list(cluster_prefix(cluster), recursive=True)
        found: dict[str, list[FileInfo]] = {}
        for info in _file_infos(objects):
            found.setdefault(info.database, []).append(info)
        return found

    async def read_marker(self, name: str) -> str | None:
        key = MARKER_PREFIX + name
        try:
            resp = await self._call(f"read {self._where(key)}", "get_object", Key=key)
        except NotFound:
            return None
        async with resp["Body"] as body:
            return (await body.read()).decode()

    async def write_marker(self, name: str, text: str) -> None:
        key = MARKER_PREFIX + name
        await self._call(f"write {self._where(key)}", "put_object", Key=key, Body=text.encode())

    async def list_clusters(self) -> list[str]:
        _, names = await self._list("")
        return sorted(n for n in names if n and not n.startswith("."))  # .lfsb/ holds markers

    async def list_databases(self, cluster: str) -> list[str]:
        _, names = await self._list(cluster_prefix(cluster))
        return sorted(n for n in names if n)

    async def list_levels(self, cluster: str, database: str) -> list[int]:
        _, names = await self._list(database_prefix(cluster, database))
        levels = []
        for name in names:
            with contextlib.suppress(ValueError):
                levels.append(parse_level(name))
        return sorted(levels)

    # -- objects -----------------------------------------------------------------------------------------

    async def upload(
        self,
        cluster: str,
        database: str,
        level: int,
        min_txid: int,
        max_txid: int,
        path: Path,
        metadata: FileMetadata,
    ) -> FileInfo:
        key = object_key(cluster, database, level, min_txid, max_txid)
        headers = metadata.to_headers()
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except OSError as e:
            raise StorageError(f"cannot read upload source: {e}") from e
        try:
            size = os.fstat(f.fileno()).st_size
            if size <= self._part_size:
                body, md5 = await asyncio.to_thread(_read_part, f, self._part_size)
                resp = await self._call(
                    f"upload {self._where(key)}",
                    "put_object",
                    Key=key,
                    Body=body,
                    ContentMD5=md5,
                    Metadata=headers,
                )
                size = len(body)
            else:
                resp, size = await self._upload_multipart(key, f, headers)
        finally:
            await asyncio.to_thread(f.close)
        log.debug("uploaded %s (%d bytes)", self._where(key), size)
        return FileInfo(cluster, database, level, min_txid, max_txid, size, _response_time(resp))

    async def _upload_multipart(
        self, key: str, f: BinaryIO, headers: dict[str, str]
    ) -> tuple[dict[str, Any], int]:
        what = f"upload {self._where(key)}"
        created = await self._call(what, "create_multipart_upload", Key=key, Metadata=headers)
        upload_id = created["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            size = 0
            while True:
                body, md5 = await asyncio.to_thread(_read_part, f, self._part_size)
                if not body and parts:
                    break
                number = len(parts) + 1
                resp = await self._call(
                    f"{what} part {number}",
                    "upload_part",
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ContentMD5=md5,
                )
                parts.append({"PartNumber": number, "ETag": resp["ETag"]})
                size += len(body)
                if len(body) < self._part_size:
                    break
            done = await self._call(
                what,
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            try:
                await self._call(f"abort {what}", "abort_multipart_upload", Key=key, UploadId=upload_id)
            except StorageError as e:
                log.warning("cannot abort multipart upload %s: %s", upload_id, e)
            raise
        return done, size

    async def download(self, info: FileInfo, dest: Path) -> None:
        key = info.key
        dest = Path(dest)

        async def attempt() -> None:
            client = await self._get_client()
            resp = await client.get_object(Bucket=self.bucket, Key=key)
            await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
            fd, tmp = await asyncio.to_thread(
                tempfile.mkstemp, dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"
            )
            try:
                with os.fdopen(fd, "wb") as raw:
                    out = WriteBehind(raw)  # flushed as it comes: no burst of dirty pages at the end
                    async with resp["Body"] as body:
                        buf = bytearray()
                        while chunk := await body.read(DOWNLOAD_CHUNK_SIZE):
                            buf += chunk
                            if len(buf) >= DOWNLOAD_CHUNK_SIZE:
                                await asyncio.to_thread(out.write, buf)
                                buf = bytearray()
                    await asyncio.to_thread(_finish, out, buf)
                await asyncio.to_thread(os.replace, tmp, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

        await self._retry(f"download {self._where(key)} to {dest}", attempt)
        log.debug("downloaded %s to %s", self._where(key), dest)

    async def metadata(self, info: FileInfo) -> FileMetadata:
        what = f"head {self._where(info.key)}"
        resp = await self._call(what, "head_object", Key=info.key)
        try:
            return FileMetadata.from_headers(resp.get("Metadata", {}))
        except StorageError as e:
            raise StorageError(f"{what}: {e}") from None

    async def copy(self, info: FileInfo, database: str) -> FileInfo:
        dest = replace(info, database=database)
        resp = await self._call(
            f"copy {self._where(info.key)} to {dest.key}",
            "copy_object",
            Key=dest.key,
            CopySource={"Bucket": self.bucket, "Key": info.key},
            MetadataDirective="COPY",
        )
        modified = resp.get("CopyObjectResult", {}).get("LastModified")
        return replace(dest, created_at=modified.astimezone(UTC)) if modified else dest

    async def delete(self, infos: list[FileInfo]) -> None:
        keys = [i.key for i in infos]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            resp = await self._call(
                f"delete {len(batch)} objects from s3://{self.bucket}",
                "delete_objects",
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            if errors := resp.get("Errors"):
                shown = "; ".join(f"{e.get('Key')}: {e.get('Code')}: {e.get('Message')}" for e in errors[:5])
                more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
                raise StorageError(
                    f"delete from s3://{self.bucket}: {len(errors)} objects failed: {shown}{more}"
                )
            log.debug("deleted %d objects from s3://%s", len(batch), self.bucket)

    async def check(self) -> None:
        try:
            await self._call(f"check {self}", "head_bucket")
        except NotFound:
            raise StorageError(f"S3 bucket {self.bucket!r} does not exist ({self})") from None


def _file_infos(objects: list[dict[str, Any]]) -> list[FileInfo]:
    """The LTX files among listed objects (other keys are skipped)."""
    infos = []
    for obj in objects:
        try:
            c, d, lvl, min_txid, max_txid = parse_object_key(obj["Key"])
        except ValueError:
            continue
        infos.append(
            FileInfo(c, d, lvl, min_txid, max_txid, obj["Size"], obj["LastModified"].astimezone(UTC))
        )
    return infos


def _finish(out: WriteBehind, tail: bytes) -> None:
    """Write the last buffered bytes and flush them to disk (in a worker thread)."""
    out.write(tail)
    out.flush()
