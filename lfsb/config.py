"""Server configuration from the environment (upstream variable names) and ``lfsb serve`` flags."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .store.access import MIN_ADMIN_TOKEN
from .store.levels import Level, config_error, parse_duration, parse_levels

DEFAULT_LEVELS = "1=10s/1h,2=5m/30d,3=1h/30d"
_SIZE = re.compile(r"([0-9]+)\s*(|B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20,
    "gb": 10**9, "gib": 2**30, "tb": 10**12, "tib": 2**40,
}  # fmt: skip


def parse_size(text: str, setting: str) -> int:
    """Bytes in ``text`` such as ``4GiB``, ``100MB`` or ``1048576``."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise config_error(f"{setting}: invalid size {text!r} (use e.g. 4GiB, 100MB)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def parse_bind(text: str, setting: str = "LFSB_BIND") -> tuple[str, int]:
    """``host:port`` or ``:port`` (all interfaces) into (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise config_error(f"{setting}: invalid address {text!r} (use host:port or :port)")
    host = host.strip("[]")
    return host or "0.0.0.0", int(port)


@dataclass(frozen=True)
class S3Settings:
    """Where the S3 bucket is and how to reach it."""

    bucket: str
    endpoint: str | None = None
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)


def s3_settings(env: Mapping[str, str]) -> S3Settings | None:
    """The S3 settings in ``env`` (None when ``BUCKET_NAME`` is unset), with both credential spellings."""
    bucket = env.get("BUCKET_NAME")
    if not bucket:
        return None
    return S3Settings(
        bucket=bucket,
        endpoint=env.get("AWS_ENDPOINT_URL_S3") or None,
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        access_key=env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_ACCESS_KEY"),
        secret_key=env.get("AWS_SECRET_ACCESS_KEY") or env.get("AWS_SECRET_KEY"),
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Config:
    """Everything the server needs to start."""

    data_path: Path
    host: str = "0.0.0.0"
    port: int = 2200
    metrics_bind: tuple[str, int] | None = None
    """Where ``/metrics`` is served on its own (``LFSB_METRICS_BIND``); None: on the main address, and
    there only when it is a loopback address."""
    s3: S3Settings | None = None
    sentry_dsn: str | None = None
    levels: tuple[Level, ...] = tuple(parse_levels(DEFAULT_LEVELS))
    l0_retention: float = 3600.0
    snapshot_interval: float = 86400.0
    snapshot_retention: float = 30 * 86400.0
    max_tx_bytes: int = 4 * 2**30
    max_exports: int = 4
    max_connections: int = 1000
    disk_reserve: int = 256 * 2**20
    log_level: str = "info"
    log_format: str = "text"
    auth: str | None = None
    """``LFSB_AUTH``: ``open`` or ``tokens``; None: tokens by the rules of protected mode."""
    admin_token: str | None = field(default=None, repr=False)
    """``LFSB_ADMIN_TOKEN``: the root token, admin of every cluster."""
    delete_grace: float = 7 * 86400.0
    """``LFSB_DELETE_GRACE``: seconds a deleted database can be brought back before it is purged."""
    verify_interval: float = 86400.0
    verify_concurrency: int = 1
    scrub_interval: float = 7 * 86400.0
    scrub_rate: int = 8 * 2**20
    notify_url: str | None = field(default=None, repr=False)
    heartbeat_url: str | None = field(default=None, repr=False)
    heartbeat_interval: float = 300.0
    notify_after: float = 600.0

    @property
    def loopback(self) -> bool:
        """Whether the main address is reachable from this machine only."""
        return is_loopback(self.host)

    @property
    def objects_path(self) -> Path:
        """Where the embedded local-directory object store keeps its files."""
        return self.data_path / "objects"


def load_config(env: Mapping[str, str] | None = None, **overrides: object) -> Config:
    """Build a :class:`Config` from environment variables, then flag overrides (None = not given)."""
    env = os.environ if env is None else env
    data_path = overrides.get("data_path") or env.get("LFSB_DATA_PATH")
    if not data_path:
        raise config_error("LFSB_DATA_PATH: required (the local data directory)")
    host, port = parse_bind(str(overrides.get("bind") or env.get("LFSB_BIND", ":2200")))
    metrics_bind = env.get("LFSB_METRICS_BIND")
    s3 = s3_settings(env)
    log_format = env.get("LFSB_LOG_FORMAT", "text").lower()
    if log_format not in ("text", "json"):
        raise config_error(f"LFSB_LOG_FORMAT: {log_format!r} is not text or json")
    log_level = env.get("LFSB_LOG_LEVEL", "info").lower()
    if log_level not in ("debug", "info", "warning", "warn", "error"):
        raise config_error(f"LFSB_LOG_LEVEL: {log_level!r} is not debug, info, warning or error")
    snapshot_interval = parse_duration(env.get("LFSB_SNAPSHOT_INTERVAL", "24h"), "LFSB_SNAPSHOT_INTERVAL")
    if snapshot_interval <= 0:
        raise config_error("LFSB_SNAPSHOT_INTERVAL: must be greater than zero")
    max_tx_bytes = parse_size(env.get("LFSB_MAX_TX_BYTES", "4GiB"), "LFSB_MAX_TX_BYTES")
    if max_tx_bytes <= 0:
        raise config_error("LFSB_MAX_TX_BYTES: must be greater than zero")
    max_exports = env.get("LFSB_MAX_EXPORTS", "4")
    if not max_exports.isdigit() or int(max_exports) < 1:
        raise config_error(f"LFSB_MAX_EXPORTS: {max_exports!r} is not a whole number of at least 1")
    max_connections = env.get("LFSB_MAX_CONNECTIONS", "1000")
    if not max_connections.isdigit() or int(max_connections) < 1:
        raise config_error(f"LFSB_MAX_CONNECTIONS: {max_connections!r} is not a whole number of at least 1")
    auth = env.get("LFSB_AUTH", "").lower() or None
    if auth not in (None, "open", "tokens"):
        raise config_error(f"LFSB_AUTH: {auth!r} is not open or tokens")
    admin_token = env.get("LFSB_ADMIN_TOKEN") or None
    if admin_token is not None and (
        len(admin_token) < MIN_ADMIN_TOKEN or not admin_token.isprintable() or " " in admin_token
    ):
        raise config_error(
            f"LFSB_ADMIN_TOKEN: must be at least {MIN_ADMIN_TOKEN} printable characters without spaces"
            " (make one with `openssl rand -hex 32`)"
        )  # the value itself is never repeated
    verify_interval = _positive_duration(env, "LFSB_VERIFY_INTERVAL", "24h")
    verify_concurrency = env.get("LFSB_VERIFY_CONCURRENCY", "1")
    if not verify_concurrency.isdigit() or int(verify_concurrency) < 1:
        raise config_error(
            f"LFSB_VERIFY_CONCURRENCY: {verify_concurrency!r} is not a whole number of at least 1"
        )
    scrub_rate = parse_size(env.get("LFSB_SCRUB_RATE", "8MiB"), "LFSB_SCRUB_RATE")
    if scrub_rate <= 0:
        raise config_error("LFSB_SCRUB_RATE: must be greater than zero (bytes per second)")
    return Config(
        data_path=Path(str(data_path)),
        host=host,
        port=port,
        metrics_bind=parse_bind(metrics_bind, "LFSB_METRICS_BIND") if metrics_bind else None,
        s3=s3,
        sentry_dsn=env.get("SENTRY_DSN") or None,
        levels=tuple(parse_levels(env.get("LFSB_LEVELS", DEFAULT_LEVELS))),
        l0_retention=parse_duration(env.get("LFSB_L0_RETENTION", "1h"), "LFSB_L0_RETENTION"),
        snapshot_interval=snapshot_interval,
        snapshot_retention=parse_duration(
            env.get("LFSB_SNAPSHOT_RETENTION", "30d"), "LFSB_SNAPSHOT_RETENTION"
        ),
        max_tx_bytes=max_tx_bytes,
        max_exports=int(max_exports),
        max_connections=int(max_connections),
        disk_reserve=parse_size(env.get("LFSB_DISK_RESERVE", "256MiB"), "LFSB_DISK_RESERVE"),
        log_level=log_level,
        log_format=log_format,
        auth=auth,
        admin_token=admin_token,
        delete_grace=parse_duration(env.get("LFSB_DELETE_GRACE", "7d"), "LFSB_DELETE_GRACE"),
        verify_interval=verify_interval,
        verify_concurrency=int(verify_concurrency),
        scrub_interval=_positive_duration(env, "LFSB_SCRUB_INTERVAL", "7d"),
        scrub_rate=scrub_rate,
        notify_url=_url(env, "LFSB_NOTIFY_URL"),
        heartbeat_url=_url(env, "LFSB_HEARTBEAT_URL"),
        heartbeat_interval=_positive_duration(env, "LFSB_HEARTBEAT_INTERVAL", "5m"),
        notify_after=parse_duration(env.get("LFSB_NOTIFY_AFTER", "10m"), "LFSB_NOTIFY_AFTER"),
    )


def _positive_duration(env: Mapping[str, str], setting: str, default: str) -> float:
    seconds = parse_duration(env.get(setting, default), setting)
    if seconds <= 0:
        raise config_error(f"{setting}: must be greater than zero")
    return seconds


def _url(env: Mapping[str, str], setting: str) -> str | None:
    """An http(s) URL setting (the value itself is never echoed: it may hold a secret token)."""
    value = env.get(setting, "").strip()
    if not value:
        return None
    if not re.match(r"https?://[^/\s]+", value):
        raise config_error(f"{setting}: not an http:// or https:// URL")
    return value
