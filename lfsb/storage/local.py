"""A local directory as object store: files at ``root/<key>``, metadata in ``<key>.meta.json`` sidecars.

Used when no bucket is configured, and in tests. Writes are atomic (temp file in the same directory, fsync,
rename, fsync of the directory). All file I/O runs in worker threads, copying in 1 MiB chunks. Also the home
of the helpers that create, make durable and remove local files (:func:`write_new`, :func:`fsync_dir`,
:func:`make_dirs`, :class:`FileSystemSync`, :func:`remove_file`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

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

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
_META_SUFFIX = ".meta.json"

T = TypeVar("T")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename, unlink or new entry in the directory ``path`` durable."""
    _fsync(path)


def write_new(path: Path, data: bytes) -> None:
    """Create the file ``path`` holding ``data``, never over an existing one (``FileExistsError``); not
    fsynced (:class:`FileSystemSync` does that for many files at once). On failure the file is removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_ALL = 1 | 2 | 4
"""``SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER``: write the range out
and wait for it."""


class FileSystemSync:
    """Makes a batch of new files, and their directory entries, durable at once.

    On Linux: one ``syncfs(2)`` of the file system holding ``root``, so a batch costs one cache flush
    instead of two per file (the file and its directory). It also writes out whatever else is dirty on
    that file system. The descriptor of ``root`` is opened at the first call and kept, so each call
    reports every writeback error on the file system that nobody has seen yet. Elsewhere: an fsync of
    each file and of each directory holding one. It pickles as its root (the metadata writer process
    gets one of its own).
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._fd: int | None = None

    def __reduce__(self) -> tuple[type[FileSystemSync], tuple[Path]]:
        return FileSystemSync, (self._root,)

    def __call__(self, paths: Collection[Path]) -> None:
        """Make ``paths`` (files below ``root``) and their directory entries durable (blocking)."""
        if _syncfs is not None:
            if self._fd is None:
                self._fd = os.open(self._root, os.O_RDONLY | os.O_CLOEXEC)
            if _syncfs(self._fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}")
            return
        for path in paths:
            _fsync(path)
        for directory in {path.parent for path in paths}:
            fsync_dir(directory)


class WriteBehind:
    """Wraps a file being written so that its dirty pages are written out every ``chunk`` bytes, at no more
    than ``rate`` bytes per second: a large temp file then never leaves much for the next ``syncfs`` of the
    file system (ingestion's group commits) to write out, nor fills the disk's queue ahead of them. The
    pages stay in the page cache, clean, so reading the file back costs no disk reads (which would queue
    ahead of ingestion's writes). Not a durability barrier: on Linux the data is written with
    ``sync_file_range``, which commits no journal transaction (an ``fdatasync`` would, and other writers'
    fsyncs would wait behind each one)."""

    def __init__(self, f: BinaryIO, chunk: int = 2 * 2**20, rate: float | None = None) -> None:
        self._f = f
        self._chunk = chunk
        self._rate = rate
        self._pending = 0
        self._written = 0
        self._start = time.monotonic()

    def write(self, data: bytes | memoryview) -> int:
        """Write ``data``; flush to disk once ``chunk`` bytes are pending."""
        n = self._f.write(data)
        self._pending += n
        if self._pending >= self._chunk:
            self.flush()
        return n

    def flush(self) -> None:
        """Write the pending bytes out to disk and keep to the rate."""
        self._f.flush()
        fd = self._f.fileno()
        if _sync_file_range is None:
            os.fdatasync(fd)
        elif _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_ALL) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sync_file_range: {os.strerror(err)}")
        self._written += self._pending
        self._pending = 0
        if self._rate:
            time.sleep(max(0.0, self._written / self._rate - (time.monotonic() - self._start)))


def remove_gradually(path: Path, step: int = 2**20) -> None:
    """Remove a large file by truncating it in 1 MiB steps first: freeing all its blocks in one unlink makes
    one large journal transaction (with online discard, a long one) that other writers' fsyncs wait
    behind."""
    with contextlib.suppress(FileNotFoundError):
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            while size > 0:
                size = max(0, size - step)
                os.ftruncate(f.fileno(), size)
        path.unlink()


def remove_file(path: Path) -> None:
    """Remove a file if it is there, and its directory if that leaves it empty."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty
        path.parent.rmdir()


def make_dirs(path: Path) -> None:
    """``mkdir -p`` that survives a power loss: every directory it creates is fsynced into its parent."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _META_SUFFIX)


class LocalStore(ObjectStore):
    """Objects as files under ``root``; ``created_at`` is the file's mtime."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # Held while creating a directory and a file in it, and while removing empty directories, so that a
        # delete never removes a directory an upload is about to write into.
        self._dirs_lock = threading.Lock()

    def __str__(self) -> str:
        return f"local store {self.root}"

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except StorageError:
            raise
        except OSError as e:
            raise StorageError(f"{self}: {e}") from e

    def _write_atomic(self, dest: Path, fill: Callable[[BinaryIO], object]) -> None:
        """Write ``dest`` through a temp file in its directory: fill, fsync, rename (no directory fsync)."""
        with self._dirs_lock:
            make_dirs(dest.parent)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _info(self, key: str, path: Path) -> FileInfo:
        st = path.stat()
        cluster, database, level, min_txid, max_txid = parse_object_key(key)
        return FileInfo(
            cluster, database, level, min_txid, max_txid, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)
        )

    # -- listing -----------------------------------------------------------------------------------------

    def _list_files_sync(self, prefix: str) -> list[FileInfo]:
        infos = []
        try:
            entries = list(os.scandir(self.root / prefix))
        except (FileNotFoundError, NotADirectoryError):
            return []
        for entry in entries:
            try:
                parse_object_key(prefix + entry.name)
            except ValueError:
                continue  # sidecars, temp files and foreign names
            if not entry.is_file():
                continue
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                infos.append(self._info(prefix + entry.name, Path(entry.path)))
        return sorted(infos, key=lambda i: (i.min_txid, i.max_txid))

    def _list_dirs_sync(self, prefix: str) -> list[str]:
        try:
            entries = list(os.scandir(self.root / prefix))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]

    async def list_files(self, cluster: str, database: str, level: int) -> list[FileInfo]:
        return await self._run(self._list_files_sync, level_prefix(cluster, database, level))

    async def list_clusters(self) -> list[str]:
        return sorted(await self._run(self._list_dirs_sync, ""))

    async def list_databases(self, cluster: str) -> list[str]:
        return sorted(await self._run(self._list_dirs_sync, cluster_prefix(cluster)))

    async def list_levels(self, cluster: str, database: str) -> list[int]:
        levels = []
        for name in await self._run(self._list_dirs_sync, database_prefix(cluster, database)):
            with contextlib.suppress(ValueError):
                levels.append(parse_level(name))
        return sorted(levels)

    def _list_cluster_sync(self, cluster: str) -> dict[str, list[FileInfo]]:
        found: dict[str, list[FileInfo]] = {}
        prefix = cluster_prefix(cluster)
        for database in self._list_dirs_sync(prefix):
            for level in self._list_dirs_sync(f"{prefix}{database}/"):
                with contextlib.suppress(ValueError):
                    files = self._list_files_sync(level_prefix(cluster, database, parse_level(level)))
                    found.setdefault(database, []).extend(files)
        return found

    async def list_cluster(self, cluster: str) -> dict[str, list[FileInfo]]:
        return await self._run(self._list_cluster_sync, cluster)

    def _read_marker_sync(self, name: str) -> str | None:
        try:
            return (self.root / MARKER_PREFIX / name).read_text()
        except FileNotFoundError:
            return None

    async def read_marker(self, name: str) -> str | None:
        return await self._run(self._read_marker_sync, name)

    async def write_marker(self, name: str, text: str) -> None:
        await self._run(
            self._write_atomic, self.root / MARKER_PREFIX / name, lambda f: f.write(text.encode())
        )

    # -- objects -----------------------------------------------------------------------------------------

    def _upload_sync(self, key: str, src: Path, headers: dict[str, str]) -> FileInfo:
        dest = self.root / key
        try:
            fsrc = src.open("rb")
        except OSError as e:
            raise StorageError(f"cannot read upload source: {e}") from e
        with fsrc:
            # The sidecar first, so that a visible data file always has its metadata.
            self._write_atomic(_sidecar(dest), lambda f: f.write(json.dumps(headers).encode()))
            self._write_atomic(dest, lambda f: shutil.copyfileobj(fsrc, f, CHUNK_SIZE))
        fsync_dir(dest.parent)
        return self._info(key, dest)

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
        info = await self._run(self._upload_sync, key, Path(path), metadata.to_headers())
        log.debug("uploaded %s to %s (%d bytes)", key, self, info.size)
        return info

    def _download_sync(self, key: str, dest: Path) -> None:
        # A hard link where the object and dest share a file system: no bytes written, so a check or scrub
        # leaves nothing for ingestion's next syncfs to write out (and a removed object stays readable).
        # Downloads are temp files: their directory is not fsynced.
        src = self.root / key
        with self._dirs_lock:
            make_dirs(dest.parent)
        tmp = dest.parent / f".{dest.name}.{os.urandom(6).hex()}.tmp"
        try:
            os.link(src, tmp)
        except FileNotFoundError:
            if src.exists():
                raise
            raise NotFound(f"{self}: {key} not found") from None
        except OSError:  # another file system, or no links there: copy
            try:
                fsrc = src.open("rb")
            except FileNotFoundError:
                raise NotFound(f"{self}: {key} not found") from None
            with fsrc:
                self._write_atomic(dest, lambda f: shutil.copyfileobj(fsrc, WriteBehind(f), CHUNK_SIZE))
        else:
            os.replace(tmp, dest)

    async def download(self, info: FileInfo, dest: Path) -> None:
        await self._run(self._download_sync, info.key, Path(dest))
        log.debug("downloaded %s from %s to %s", info.key, self, dest)

    def _metadata_sync(self, key: str) -> FileMetadata:
        path = self.root / key
        if not path.is_file():
            raise NotFound(f"{self}: {key} not found")
        try:
            headers = json.loads(_sidecar(path).read_bytes())
        except FileNotFoundError:
            raise StorageError(f"{self}: {key}: metadata file {_sidecar(path).name} missing") from None
        except ValueError as e:
            raise StorageError(f"{self}: {key}: invalid metadata file: {e}") from None
        if not isinstance(headers, dict):
            raise StorageError(f"{self}: {key}: invalid metadata file: not a JSON object")
        try:
            return FileMetadata.from_headers(headers)
        except StorageError as e:
            raise StorageError(f"{self}: {key}: {e}") from None

    async def metadata(self, info: FileInfo) -> FileMetadata:
        return await self._run(self._metadata_sync, info.key)

    def _copy_sync(self, key: str, dest_key: str) -> FileInfo:
        src, dest = self.root / key, self.root / dest_key
        if not src.is_file():
            raise NotFound(f"{self}: {key} not found")
        # Hard links: the copy keeps the original's mtime (its created_at) and costs no space.
        for source, target in ((_sidecar(src), _sidecar(dest)), (src, dest)):  # the sidecar first
            with self._dirs_lock:
                make_dirs(target.parent)
                tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
                tmp.unlink(missing_ok=True)
                os.link(source, tmp)
            os.replace(tmp, target)
        fsync_dir(dest.parent)
        return self._info(dest_key, dest)

    async def copy(self, info: FileInfo, database: str) -> FileInfo:
        return await self._run(self._copy_sync, info.key, replace(info, database=database).key)

    def _delete_sync(self, keys: list[str]) -> None:
        dirs = set()
        for key in keys:
            path = self.root / key
            path.unlink(missing_ok=True)
            _sidecar(path).unlink(missing_ok=True)
            dirs.add(path.parent)
        # Remove directories left empty, as S3 has no prefix without objects.
        with self._dirs_lock:
            for level_dir in dirs:
                for d in (level_dir, level_dir.parent, level_dir.parent.parent):
                    try:
                        d.rmdir()
                    except OSError:
                        break

    async def delete(self, infos: list[FileInfo]) -> None:
        if not infos:
            return
        await self._run(self._delete_sync, [i.key for i in infos])
        log.debug("deleted %d files from %s", len(infos), self)

    def _check_sync(self) -> None:
        make_dirs(self.root)
        fd, probe = tempfile.mkstemp(dir=self.root, prefix=".check.", suffix=".tmp")
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)

    async def check(self) -> None:
        try:
            await asyncio.to_thread(self._check_sync)
        except OSError as e:
            raise StorageError(f"{self} is not writable: {e}") from e
