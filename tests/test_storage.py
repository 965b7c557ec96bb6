"""lfsb.storage against both stores (a local directory and moto's S3), plus S3 specifics: raw metadata,
configuration from the environment, error mapping and retries (a fake S3 endpoint and a real outage)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import pickle
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiobotocore.session import get_session
from aiohttp import web

from lfsb.ltx.text import parse_timestamp
from lfsb.storage import (
    FileInfo,
    FileMetadata,
    LocalStore,
    NotFound,
    ObjectStore,
    StorageError,
    local,
    object_key,
    parse_object_key,
)
from lfsb.storage import s3 as s3_module
from lfsb.storage.s3 import S3Store
from tests.s3server import S3Server, S3Settings, create_bucket

MiB = 1024 * 1024

# The values of upstream's TestEncodeStorageMetadata / TestStorageClient_Metadata.
UPSTREAM_METADATA = FileMetadata(
    page_size=4096,
    commit=1000,
    timestamp=parse_timestamp("2000-01-01T00:00:00.123Z"),
    pre_apply_checksum=0x0BB8,
    post_apply_checksum=0x0FA0,
)
UPSTREAM_HEADERS = {
    "page-size": "4096",
    "commit": "1000",
    "timestamp": "2000-01-01T00:00:00.123Z",
    "pre-apply-checksum": "0000000000000bb8",
    "post-apply-checksum": "0000000000000fa0",
}
META = FileMetadata(page_size=512, commit=1, timestamp=0, pre_apply_checksum=0, post_apply_checksum=1)


def write_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def upload(store: ObjectStore, tmp_path: Path, key: str, data: bytes = b"ltx") -> FileInfo:
    cluster, database, level, min_txid, max_txid = parse_object_key(key)
    src = write_file(tmp_path / "src" / key, data)
    return await store.upload(cluster, database, level, min_txid, max_txid, src, META)


@contextlib.asynccontextmanager
async def s3_client(settings: S3Settings) -> AsyncIterator[object]:
    async with get_session().create_client(
        "s3",
        endpoint_url=settings.endpoint,
        region_name=settings.region,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
    ) as client:
        yield client


async def put_raw(store: ObjectStore, key: str) -> None:
    """Store an object behind the store's back (for keys it would never write)."""
    if isinstance(store, LocalStore):
        write_file(store.root / key, b"junk")
    else:
        assert isinstance(store, S3Store) and store.endpoint_url
        async with s3_client(S3Settings(store.endpoint_url, store.bucket)) as client:
            await client.put_object(Bucket=store.bucket, Key=key, Body=b"junk")


def spans(infos: list[FileInfo]) -> list[tuple[int, int]]:
    return [(i.min_txid, i.max_txid) for i in infos]


# -- keys and metadata ------------------------------------------------------------------------------------


def test_object_key() -> None:
    key = object_key("c", "db", 9, 1, 0xFF)
    assert key == "c/db/9/0000000000000001-00000000000000ff.ltx"
    assert parse_object_key(key) == ("c", "db", 9, 1, 0xFF)
    info = FileInfo("c", "db", 9, 1, 0xFF, 3, datetime.now(UTC))
    assert info.key == key


@pytest.mark.parametrize(
    "key",
    [
        "c/db/1/0000000000000001-0000000000000001.LTX",
        "c/db/1/0000000000000001-000000000000000A.ltx",
        "c/db/01/0000000000000001-0000000000000001.ltx",
        "c/db/x/0000000000000001-0000000000000001.ltx",
        "c/db/1/1-1.ltx",
        "c//1/0000000000000001-0000000000000001.ltx",
        "c/db/1/sub/0000000000000001-0000000000000001.ltx",
        "c/db/1/0000000000000001-0000000000000001.ltx.meta.json",
    ],
)
def test_parse_object_key_invalid(key: str) -> None:
    with pytest.raises(ValueError):
        parse_object_key(key)


@pytest.mark.parametrize(
    ("cluster", "database", "level"),
    [("", "db", 1), ("c", "", 1), ("a/b", "db", 1), ("c", "..", 1), ("c", "db", -1)],
)
def test_object_key_invalid(cluster: str, database: str, level: int) -> None:
    with pytest.raises(ValueError):
        object_key(cluster, database, level, 1, 1)


def test_metadata_headers_exact() -> None:
    assert UPSTREAM_METADATA.to_headers() == UPSTREAM_HEADERS
    assert FileMetadata.from_headers(UPSTREAM_HEADERS) == UPSTREAM_METADATA
    # Go sends canonical header case; S3 lower-cases it. Either reads back.
    titled = {k.title(): v for k, v in UPSTREAM_HEADERS.items()}
    assert FileMetadata.from_headers(titled) == UPSTREAM_METADATA


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("page-size", "", "page-size"),
        ("page-size", "4k", "page-size"),
        ("commit", "-1", "commit"),
        ("timestamp", "2000-01-01 00:00:00", "invalid timestamp"),
        ("pre-apply-checksum", "bb8", "checksum"),
        ("post-apply-checksum", "000000000000zzzz", "checksum"),
        ("page-size", None, "'page-size' missing"),
    ],
)
def test_metadata_from_bad_headers(field: str, value: str | None, message: str) -> None:
    headers = dict(UPSTREAM_HEADERS)
    if value is None:
        del headers[field]
    else:
        headers[field] = value
    with pytest.raises(StorageError, match=message):
        FileMetadata.from_headers(headers)


def test_metadata_rejects_zero_page_size() -> None:
    with pytest.raises(ValueError, match="page size"):
        FileMetadata(page_size=0, commit=0, timestamp=0, pre_apply_checksum=0, post_apply_checksum=0)


# -- both stores ------------------------------------------------------------------------------------------


async def test_upload_download_round_trip(object_store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(5 * MiB + 123)
    src = write_file(tmp_path / "src.ltx", data)
    before = datetime.now(UTC) - timedelta(minutes=5)

    info = await object_store.upload("c", "db", 2, 1, 10, src, UPSTREAM_METADATA)
    assert (info.cluster, info.database, info.level, info.min_txid, info.max_txid) == ("c", "db", 2, 1, 10)
    assert info.size == len(data)
    assert info.created_at.tzinfo is not None and before < info.created_at < before + timedelta(minutes=10)

    dest = tmp_path / "out" / "copy.ltx"
    await object_store.download(info, dest)
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["copy.ltx"]  # no temp file left behind

    [listed] = await object_store.list_files("c", "db", 2)
    assert listed.key == info.key and listed.size == len(data)
    assert await object_store.metadata(listed) == UPSTREAM_METADATA


async def test_upload_replaces(object_store: ObjectStore, tmp_path: Path) -> None:
    await upload(object_store, tmp_path, "c/db/1/0000000000000001-0000000000000001.ltx", b"old")
    info = await upload(object_store, tmp_path, "c/db/1/0000000000000001-0000000000000001.ltx", b"new!")
    await object_store.download(info, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"new!"
    assert [i.size for i in await object_store.list_files("c", "db", 1)] == [4]


async def test_upload_empty_file(object_store: ObjectStore, tmp_path: Path) -> None:
    info = await upload(object_store, tmp_path, "c/db/1/0000000000000001-0000000000000001.ltx", b"")
    assert info.size == 0
    await object_store.download(info, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b""


async def test_upload_missing_source(object_store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot read upload source"):
        await object_store.upload("c", "db", 1, 1, 1, tmp_path / "nope", META)


async def test_list_files_order_and_filter(object_store: ObjectStore, tmp_path: Path) -> None:
    for key in [
        "c/db/1/0000000000000003-0000000000000004.ltx",
        "c/db/1/0000000000000001-0000000000000001.ltx",
        "c/db/1/0000000000000002-0000000000000002.ltx",
        "c/db/2/0000000000000001-0000000000000004.ltx",
        "c/other/1/0000000000000005-0000000000000005.ltx",
        "c2/db/1/0000000000000006-0000000000000006.ltx",
    ]:
        await upload(object_store, tmp_path, key)
    for junk in ["c/db/1/foo.ltx", "c/db/1/0000000000000009-0000000000000009.LTX", "c/db/1/README"]:
        await put_raw(object_store, junk)

    infos = await object_store.list_files("c", "db", 1)
    assert spans(infos) == [(1, 1), (2, 2), (3, 4)]
    assert {(i.cluster, i.database, i.level, i.size) for i in infos} == {("c", "db", 1, 3)}
    assert spans(await object_store.list_files("c", "db", 2)) == [(1, 4)]
    assert spans(await object_store.list_files("c", "other", 1)) == [(5, 5)]
    assert spans(await object_store.list_files("c2", "db", 1)) == [(6, 6)]
    assert await object_store.list_files("c", "db", 3) == []
    assert await object_store.list_files("nope", "db", 1) == []


async def test_list_clusters_databases_levels(object_store: ObjectStore, tmp_path: Path) -> None:
    assert await object_store.list_clusters() == []
    for key in [
        "cluster1/database0/0/0000000000000001-0000000000000001.ltx",
        "cluster0/database1/9/0000000000000001-0000000000000001.ltx",
        "cluster0/database0/2/0000000000000001-0000000000000001.ltx",
        "cluster0/database0/9/0000000000000001-0000000000000001.ltx",
        "cluster0/database0/0/0000000000000001-0000000000000001.ltx",
    ]:
        await upload(object_store, tmp_path, key)
    await put_raw(object_store, "cluster0/database0/x/0000000000000001-0000000000000001.ltx")

    assert await object_store.list_clusters() == ["cluster0", "cluster1"]
    assert await object_store.list_databases("cluster0") == ["database0", "database1"]
    assert await object_store.list_databases("cluster1") == ["database0"]
    assert await object_store.list_databases("cluster9") == []
    assert await object_store.list_levels("cluster0", "database0") == [0, 2, 9]
    assert await object_store.list_levels("cluster0", "nope") == []
    with pytest.raises(ValueError):
        await object_store.list_databases("")
    with pytest.raises(ValueError):
        await object_store.list_levels("cluster0", "")


async def test_delete(object_store: ObjectStore, tmp_path: Path) -> None:
    a = await upload(object_store, tmp_path, "c/db/1/0000000000000001-0000000000000001.ltx")
    b = await upload(object_store, tmp_path, "c/db/1/0000000000000002-0000000000000002.ltx")
    c = await upload(object_store, tmp_path, "c/db/1/0000000000000003-0000000000000003.ltx")

    await object_store.delete([a, c])
    assert spans(await object_store.list_files("c", "db", 1)) == [(2, 2)]
    with pytest.raises(NotFound):
        await object_store.download(a, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(NotFound):
        await object_store.metadata(c)

    await object_store.delete([a])  # already gone: not an error
    await object_store.delete([])
    await object_store.delete([b])
    assert await object_store.list_files("c", "db", 1) == []
    # As in S3, nothing is left to list once the last file is gone.
    assert await object_store.list_clusters() == []


async def test_check(object_store: ObjectStore, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """check() passes on a usable store and leaves nothing behind; on an unusable one it raises a
    StorageError that names the problem."""
    await object_store.check()
    assert await object_store.list_clusters() == []
    if isinstance(object_store, LocalStore):
        assert os.listdir(tmp_path / "objects") == []  # the probe file is gone
        (tmp_path / "blocked").write_bytes(b"a file where the root should be")
        broken: ObjectStore = LocalStore(tmp_path / "blocked")
        expected = "is not writable"
    else:
        settings = request.getfixturevalue("s3_bucket")
        broken = S3Store.from_env({**settings.env(), "BUCKET_NAME": "no-such-bucket-here"})
        expected = "S3 bucket 'no-such-bucket-here' does not exist"
    async with broken:
        with pytest.raises(StorageError, match=re.escape(expected)):
            await broken.check()


# -- local store specifics --------------------------------------------------------------------------------


async def test_local_sidecar_and_temp_files_not_listed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    info = await upload(store, tmp_path, "c/db/1/0000000000000001-0000000000000001.ltx")
    level_dir = tmp_path / "objects" / "c" / "db" / "1"
    assert sorted(os.listdir(level_dir)) == [
        "0000000000000001-0000000000000001.ltx",
        "0000000000000001-0000000000000001.ltx.meta.json",
    ]
    write_file(level_dir / ".0000000000000002-0000000000000002.ltx.abc.tmp", b"partial")
    write_file(tmp_path / "objects" / ".check.x.tmp", b"")
    assert await store.list_files("c", "db", 1) == [info]
    assert await store.list_clusters() == ["c"]


async def test_local_missing_sidecar(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    info = await upload(store, tmp_path, "c/db/1/0000000000000001-0000000000000001.ltx")
    (tmp_path / "objects" / (info.key + ".meta.json")).unlink()
    with pytest.raises(StorageError, match=r"metadata file .* missing"):
        await store.metadata(info)


async def test_local_check_not_writable(tmp_path: Path) -> None:
    write_file(tmp_path / "file", b"")
    with pytest.raises(StorageError, match="not writable"):
        await LocalStore(tmp_path / "file" / "objects").check()


async def test_local_download_links_the_object(tmp_path: Path) -> None:
    """A download on the same file system is a hard link: nothing written, and still readable (and
    removable) whatever happens to the object meanwhile."""
    store = LocalStore(tmp_path / "objects")
    data = os.urandom(3 * MiB)
    info = await upload(store, tmp_path, "c/db/1/0000000000000001-0000000000000001.ltx", data)
    dest = tmp_path / "tmp" / "download"
    await store.download(info, dest)
    assert os.path.samefile(dest, store.root / info.key)
    assert os.listdir(dest.parent) == ["download"]  # no temp link left behind
    await store.delete([info])
    assert dest.read_bytes() == data
    dest.unlink()
    with pytest.raises(NotFound):
        await store.download(info, dest)
    assert os.listdir(dest.parent) == []


async def test_local_download_copies_across_file_systems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "objects")
    data = os.urandom(3 * MiB + 5)
    info = await upload(store, tmp_path, "c/db/1/0000000000000001-0000000000000001.ltx", data)

    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    dest = tmp_path / "tmp" / "download"
    await store.download(info, dest)
    assert not os.path.samefile(dest, store.root / info.key)
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["download"]


def new_files(root: Path) -> list[Path]:
    """Two new files in one directory and one in another, below ``root``."""
    paths = [root / "a" / "1.ltx", root / "a" / "2.ltx", root / "b" / "1.ltx"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        local.write_new(path, path.name.encode())
    return paths


def test_write_new_never_replaces(tmp_path: Path) -> None:
    local.write_new(tmp_path / "f", b"first")
    with pytest.raises(FileExistsError):
        local.write_new(tmp_path / "f", b"second")
    assert (tmp_path / "f").read_bytes() == b"first"


@pytest.mark.skipif(local._syncfs is None, reason="no syncfs(2) here")
def test_file_system_sync_is_one_syncfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One syncfs(2) of the file system holding the root, whatever the number of files, through one
    descriptor kept from call to call; a failure is an OSError. A pickled copy (what the metadata writer
    process gets) syncs the same root through a descriptor of its own."""
    real = local._syncfs
    fds: list[int] = []

    def recording(fd: int) -> int:
        fds.append(fd)
        return real(fd)

    sync = local.FileSystemSync(tmp_path)
    monkeypatch.setattr(local, "_syncfs", recording)
    sync(new_files(tmp_path))
    sync([tmp_path / "a" / "1.ltx"])
    assert len(fds) == 2 and fds[0] == fds[1] and os.path.samefile(f"/proc/self/fd/{fds[0]}", tmp_path)
    copy = pickle.loads(pickle.dumps(sync))
    copy([tmp_path / "a" / "1.ltx"])
    assert len(fds) == 3 and fds[2] != fds[0] and os.path.samefile(f"/proc/self/fd/{fds[2]}", tmp_path)

    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(local, "_syncfs", failing)
    with pytest.raises(OSError, match="syncfs") as info:
        sync([tmp_path / "a" / "1.ltx"])
    assert info.value.errno == errno.EIO


def test_file_system_sync_without_syncfs_fsyncs_each_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = new_files(tmp_path)
    synced: list[Path] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(local, "_syncfs", None)
    monkeypatch.setattr(os, "fsync", recording)
    local.FileSystemSync(tmp_path)(paths)
    assert sorted(synced) == sorted([*paths, tmp_path / "a", tmp_path / "b"])


# -- S3 specifics -----------------------------------------------------------------------------------------


async def test_s3_raw_metadata_is_upstreams(s3_bucket: S3Settings, tmp_path: Path) -> None:
    src = write_file(tmp_path / "src.ltx", b"x" * 100)
    async with S3Store.from_env(s3_bucket.env()) as store:
        info = await store.upload("c", "db", 1, 1, 2, src, UPSTREAM_METADATA)
    async with s3_client(s3_bucket) as client:
        head = await client.head_object(Bucket=s3_bucket.bucket, Key=info.key)
    assert info.key == "c/db/1/0000000000000001-0000000000000002.ltx"
    assert head["Metadata"] == UPSTREAM_HEADERS
    assert head["ContentLength"] == 100


@pytest.mark.parametrize("size", [12 * MiB + 7, 10 * MiB])
async def test_s3_multipart_upload(s3_bucket: S3Settings, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    src = write_file(tmp_path / "big.ltx", data)
    async with S3Store.from_env(s3_bucket.env(), part_size=5 * MiB) as store:
        info = await store.upload("c", "db", 3, 1, 100, src, UPSTREAM_METADATA)
        assert info.size == size
        await store.download(info, tmp_path / "copy")
        assert await store.metadata(info) == UPSTREAM_METADATA
    assert (tmp_path / "copy").read_bytes() == data
    async with s3_client(s3_bucket) as client:
        head = await client.head_object(Bucket=s3_bucket.bucket, Key=info.key)
    assert head["ETag"].strip('"').endswith(f"-{-(-size // (5 * MiB))}")  # a multipart ETag: <md5>-<parts>


async def test_s3_list_pagination(s3_bucket: S3Settings, tmp_path: Path) -> None:
    async with S3Store.from_env(s3_bucket.env(), max_keys=2) as store:
        for n in range(1, 6):
            await upload(store, tmp_path, object_key("c", f"db{n}", 1, n, n))
            await upload(store, tmp_path, object_key("c", "db", 1, n, n))
        assert spans(await store.list_files("c", "db", 1)) == [(n, n) for n in range(1, 6)]
        assert await store.list_databases("c") == ["db", "db1", "db2", "db3", "db4", "db5"]


async def test_s3_delete_batches(
    s3_bucket: S3Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(s3_module, "DELETE_BATCH", 2)
    caplog.set_level(logging.DEBUG, logger="lfsb.storage.s3")
    async with S3Store.from_env(s3_bucket.env()) as store:
        infos = [await upload(store, tmp_path, object_key("c", "db", 1, n, n)) for n in range(1, 6)]
        await store.delete(infos)
        assert await store.list_files("c", "db", 1) == []
    assert [r.getMessage().split(" objects")[0] for r in caplog.records if "deleted" in r.getMessage()] == [
        "deleted 2",
        "deleted 2",
        "deleted 1",
    ]


@pytest.mark.parametrize(
    "keys",
    [
        {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "secret"},
        {"AWS_ACCESS_KEY": "AKIDTEST", "AWS_SECRET_KEY": "secret"},
        {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_ACCESS_KEY": "other", "AWS_SECRET_KEY": "secret"},
    ],
)
async def test_s3_from_env_credentials(s3_bucket: S3Settings, keys: dict[str, str]) -> None:
    env = {
        "BUCKET_NAME": s3_bucket.bucket,
        "AWS_ENDPOINT_URL_S3": s3_bucket.endpoint,
        "AWS_REGION": "eu-west-3",
        **keys,
    }
    async with S3Store.from_env(env) as store:
        assert (store.bucket, store.endpoint_url, store.region) == (
            s3_bucket.bucket,
            s3_bucket.endpoint,
            "eu-west-3",
        )
        await store.check()

    # moto accepts any key: check on a fake endpoint that these keys sign the requests.
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response()

    async with (
        fake_s3(handler) as endpoint,
        S3Store.from_env({**env, "AWS_ENDPOINT_URL_S3": endpoint}) as store,
    ):
        await store.check()
    assert "Credential=AKIDTEST/" in seen[0] and "/eu-west-3/s3/" in seen[0]


def test_s3_from_env_defaults() -> None:
    store = S3Store.from_env({"BUCKET_NAME": "b", "AWS_REGION": "", "AWS_ENDPOINT_URL_S3": ""})
    assert (store.bucket, store.region, store.endpoint_url) == ("b", "us-east-1", None)
    with pytest.raises(ValueError, match="BUCKET_NAME"):
        S3Store.from_env({})


async def test_s3_missing_bucket(s3_server: str, tmp_path: Path) -> None:
    settings = S3Settings(s3_server, "no-such-bucket-here")
    async with S3Store.from_env(settings.env()) as store:
        with pytest.raises(StorageError, match="'no-such-bucket-here' does not exist") as e:
            await store.check()
        assert not isinstance(e.value, NotFound)
        with pytest.raises(StorageError, match="'no-such-bucket-here' does not exist"):
            await store.list_files("c", "db", 1)
        with pytest.raises(StorageError, match="no-such-bucket-here"):
            await upload(store, tmp_path, "c/db/1/0000000000000001-0000000000000001.ltx")


# -- S3 failures and retries ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fake_s3(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """An HTTP server on a free loopback port answering every request with ``handler``."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def fake_store(endpoint: str, **options: object) -> S3Store:
    return S3Store.from_env(S3Settings(endpoint, "bucket").env(), retry_delay=0.01, **options)


async def ok(request: web.Request) -> web.Response:
    return web.Response()


async def test_s3_unreachable_retries_then_fails(caplog: pytest.LogCaptureFixture) -> None:
    async with fake_s3(ok) as endpoint:
        pass  # now nothing listens on that port
    async with fake_store(endpoint, attempts=3) as store:
        with pytest.raises(StorageError, match=r"check s3://bucket at .*: .*\(after 3 attempts\)"):
            await store.check()
    retries = [r for r in caplog.records if r.name == "lfsb.storage.s3" and "retrying" in r.getMessage()]
    assert len(retries) == 2 and retries[0].levelno == logging.WARNING


async def test_s3_transient_errors_are_retried() -> None:
    statuses = [503, 500, 200]

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=statuses.pop(0))

    async with fake_s3(handler) as endpoint, fake_store(endpoint) as store:
        await store.check()
    assert statuses == []


async def test_s3_throttling_is_retried() -> None:
    statuses = [429, 200]

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=statuses.pop(0))

    async with fake_s3(handler) as endpoint, fake_store(endpoint) as store:
        await store.check()
    assert statuses == []


async def test_s3_access_denied_is_not_retried() -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=403)

    async with fake_s3(handler) as endpoint, fake_store(endpoint) as store:
        with pytest.raises(StorageError, match="access denied, check the credentials"):
            await store.check()
    assert calls == 1


async def test_s3_delete_reports_per_key_errors() -> None:
    key = object_key("c", "db", 1, 1, 1)

    async def handler(request: web.Request) -> web.Response:
        assert request.method == "POST" and "delete" in request.query
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Error><Key>{key}</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            "</DeleteResult>"
        )
        return web.Response(body=body, content_type="application/xml")

    info = FileInfo("c", "db", 1, 1, 1, 3, datetime.now(UTC))
    async with fake_s3(handler) as endpoint, fake_store(endpoint) as store:
        with pytest.raises(StorageError, match=f"1 objects failed: {key}: AccessDenied: Access Denied"):
            await store.delete([info])


async def test_s3_outage_and_recovery(tmp_path: Path) -> None:
    with S3Server() as server:
        settings = create_bucket(server.endpoint)
        async with S3Store.from_env(settings.env(), attempts=2, retry_delay=0.01) as store:
            info = await upload(store, tmp_path, "c/db/1/0000000000000001-0000000000000001.ltx")
            server.stop()
            with pytest.raises(StorageError, match="after 2 attempts"):
                await store.download(info, tmp_path / "out")
            assert not (tmp_path / "out").exists()
            server.start()  # same endpoint, but moto forgets everything
            create_bucket(server.endpoint, settings.bucket)
            await store.check()
            assert await store.list_files("c", "db", 1) == []
