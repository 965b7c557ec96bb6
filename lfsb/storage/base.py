"""The object-store interface: key names, object metadata, file listings and the ObjectStore ABC.

Keys and metadata follow upstream litefs-backup, so a bucket written by either server reads in the other:
``<cluster>/<database>/<level>/<min:016x>-<max:016x>.ltx`` with the level in decimal, and five user-metadata
fields (``page-size``, ``commit``, ``timestamp``, ``pre-apply-checksum``, ``post-apply-checksum``).
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from lfsb.ltx.errors import LTXError
from lfsb.ltx.text import (
    format_checksum,
    format_filename,
    format_timestamp,
    parse_checksum,
    parse_filename,
    parse_timestamp,
)

_DECIMAL = re.compile(r"[0-9]+")
_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1


class StorageError(Exception):
    """Object storage failed: unreachable, bad credentials, missing bucket, invalid object metadata…"""


class NotFound(StorageError):
    """The object does not exist."""


def _check_name(what: str, name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"invalid {what} name for a storage key: {name!r}")


def cluster_prefix(cluster: str) -> str:
    """``<cluster>/``; ValueError for a name that cannot be a key component (empty, ``/``, ``..``)."""
    _check_name("cluster", cluster)
    return f"{cluster}/"


def database_prefix(cluster: str, database: str) -> str:
    """``<cluster>/<database>/``."""
    _check_name("database", database)
    return f"{cluster_prefix(cluster)}{database}/"


def level_prefix(cluster: str, database: str, level: int) -> str:
    """``<cluster>/<database>/<level>/``, the prefix of every file of one level."""
    if level < 0:
        raise ValueError(f"invalid level: {level}")
    return f"{database_prefix(cluster, database)}{level}/"


def object_key(cluster: str, database: str, level: int, min_txid: int, max_txid: int) -> str:
    """``<cluster>/<database>/<level>/<min:016x>-<max:016x>.ltx``."""
    if not (0 <= min_txid <= _MAX_U64 and 0 <= max_txid <= _MAX_U64):
        raise ValueError(f"invalid TXID range: {min_txid}-{max_txid}")
    return level_prefix(cluster, database, level) + format_filename(min_txid, max_txid)


MARKER_PREFIX = ".lfsb/"
"""Where the server's own small objects live: a name no cluster can have (names never start with a dot)."""


def parse_level(name: str) -> int:
    """A level path component: canonical decimal (``9``, not ``09``). Raises ValueError otherwise."""
    if not _DECIMAL.fullmatch(name) or str(int(name)) != name:
        raise ValueError(f"invalid level: {name!r}")
    return int(name)


def parse_object_key(key: str) -> tuple[str, str, int, int, int]:
    """Split a key into (cluster, database, level, min_txid, max_txid); ValueError if it is not a file key."""
    parts = key.split("/")
    if len(parts) != 4:
        raise ValueError(f"invalid object key: {key!r}")
    cluster, database, level_s, filename = parts
    try:
        _check_name("cluster", cluster)
        _check_name("database", database)
        level = parse_level(level_s)
        min_txid, max_txid = parse_filename(filename)
    except (ValueError, LTXError) as e:
        raise ValueError(f"invalid object key {key!r}: {e}") from None
    return cluster, database, level, min_txid, max_txid


@dataclass(frozen=True)
class FileInfo:
    """One stored LTX file, as a listing reports it (no metadata request needed)."""

    cluster: str
    database: str
    level: int
    min_txid: int
    max_txid: int
    size: int
    created_at: datetime
    """When the object was written (S3 LastModified, or the file's mtime), an aware UTC datetime."""

    @property
    def key(self) -> str:
        """The object key."""
        return object_key(self.cluster, self.database, self.level, self.min_txid, self.max_txid)


def _parse_decimal(name: str, value: str, maximum: int) -> int:
    if not _DECIMAL.fullmatch(value) or int(value) > maximum:
        raise StorageError(f"invalid object metadata {name}={value!r}: expected a decimal number")
    return int(value)


@dataclass(frozen=True)
class FileMetadata:
    """The LTX header and trailer fields stored with each object as user metadata."""

    page_size: int
    commit: int
    """Database size in pages after the file is applied."""
    timestamp: int
    """The LTX header timestamp, milliseconds since the epoch."""
    pre_apply_checksum: int
    post_apply_checksum: int

    def __post_init__(self) -> None:
        if not 0 < self.page_size <= _MAX_U32:
            raise ValueError(f"invalid page size: {self.page_size}")
        if not 0 <= self.commit <= _MAX_U32:
            raise ValueError(f"invalid commit: {self.commit}")
        if not (0 <= self.pre_apply_checksum <= _MAX_U64 and 0 <= self.post_apply_checksum <= _MAX_U64):
            raise ValueError("checksums must be unsigned 64-bit integers")

    def to_headers(self) -> dict[str, str]:
        """The user metadata, keys in lower case as S3 stores them (upstream §4.3 value formats)."""
        return {
            "page-size": str(self.page_size),
            "commit": str(self.commit),
            "timestamp": format_timestamp(self.timestamp),
            "pre-apply-checksum": format_checksum(self.pre_apply_checksum),
            "post-apply-checksum": format_checksum(self.post_apply_checksum),
        }

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> FileMetadata:
        """Decode user metadata (keys case-insensitive); StorageError on a missing or malformed value."""
        lower = {k.lower(): v for k, v in headers.items()}

        def get(name: str) -> str:
            if name not in lower:
                raise StorageError(f"object metadata {name!r} missing")
            return lower[name]

        try:
            timestamp = parse_timestamp(get("timestamp"))
            pre = parse_checksum(get("pre-apply-checksum"))
            post = parse_checksum(get("post-apply-checksum"))
        except LTXError as e:
            raise StorageError(f"invalid object metadata: {e}") from None
        try:
            return cls(
                page_size=_parse_decimal("page-size", get("page-size"), _MAX_U32),
                commit=_parse_decimal("commit", get("commit"), _MAX_U32),
                timestamp=timestamp,
                pre_apply_checksum=pre,
                post_apply_checksum=post,
            )
        except ValueError as e:
            raise StorageError(f"invalid object metadata: {e}") from None


class ObjectStore(abc.ABC):
    """Where LTX files of levels 1 and up live. Implementations: S3Store, LocalStore.

    Every method may raise StorageError; ``download`` and ``metadata`` raise NotFound for a missing object.
    """

    @abc.abstractmethod
    async def list_files(self, cluster: str, database: str, level: int) -> list[FileInfo]:
        """The files of one level, sorted by (min_txid, max_txid); keys that are not LTX names are skipped."""

    @abc.abstractmethod
    async def list_clusters(self) -> list[str]:
        """Cluster names that have stored files, sorted."""

    @abc.abstractmethod
    async def list_databases(self, cluster: str) -> list[str]:
        """Database names of a cluster that have stored files, sorted."""

    @abc.abstractmethod
    async def list_levels(self, cluster: str, database: str) -> list[int]:
        """Levels of a database that have stored files, sorted."""

    @abc.abstractmethod
    async def list_cluster(self, cluster: str) -> dict[str, list[FileInfo]]:
        """Every file of every database of a cluster, by database, in one listing (S3: a request per
        1,000 files instead of several per database)."""

    @abc.abstractmethod
    async def read_marker(self, name: str) -> str | None:
        """The text of the small object ``.lfsb/<name>`` (outside every cluster), None if there is none."""

    @abc.abstractmethod
    async def write_marker(self, name: str, text: str) -> None:
        """Write the small object ``.lfsb/<name>``."""

    @abc.abstractmethod
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
        """Store the local file ``path`` under its key with its metadata, streaming it (replaces it)."""

    @abc.abstractmethod
    async def download(self, info: FileInfo, dest: Path) -> None:
        """Write the object to ``dest`` (through a temp file in the same directory and a rename), leaving
        little dirty in the page cache. ``dest`` may share its data with the object (the local store links
        it where it can): only read it, and remove it with an unlink."""

    @abc.abstractmethod
    async def metadata(self, info: FileInfo) -> FileMetadata:
        """The object's metadata."""

    @abc.abstractmethod
    async def copy(self, info: FileInfo, database: str) -> FileInfo:
        """Copy an object, with its metadata, to the same key under another database of its cluster
        (replacing what is there)."""

    @abc.abstractmethod
    async def delete(self, infos: list[FileInfo]) -> None:
        """Delete the objects; missing ones are not an error."""

    @abc.abstractmethod
    async def check(self) -> None:
        """A cheap health probe; StorageError naming the problem if the store is unusable."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
