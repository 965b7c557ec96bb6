"""Configuration: ``lfsb.config.load_config`` (design.md §5) and ``lfsb.store.levels``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from lfsb.config import S3Settings, load_config, parse_bind, parse_size
from lfsb.errors import Kind, LfsbError
from lfsb.store.levels import Level, parse_duration, parse_levels

DAY = 86400.0
YEAR1_OFFSET = 62135596800
"""Seconds from 0001-01-01T00:00:00Z to the Unix epoch: Go's ``Truncate`` counts from there."""


def config_error(call: object, *args: object, **kwargs: object) -> str:
    """The message of the ``EINVALIDCONFIG`` error that ``call(*args, **kwargs)`` raises."""
    with pytest.raises(LfsbError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    assert (info.value.kind, info.value.code) == (Kind.VALIDATION, "EINVALIDCONFIG")
    return info.value.message


def unix(text: str) -> float:
    """Unix seconds of an ISO 8601 UTC time."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- durations ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("10s", 10.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("30d", 30 * DAY),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("1d2h3m4s5ms", DAY + 7200 + 180 + 4 + 0.005),
        (" 2d ", 2 * DAY),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "X") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", " ", "10", "-1s", "1x", "h", "1h 30m", "1H", "1.h", "s10", "1h-"])
def test_parse_duration_invalid(text: str) -> None:
    message = config_error(parse_duration, text, "LFSB_L0_RETENTION")
    assert message == f"LFSB_L0_RETENTION: invalid duration {text.strip()!r} (use e.g. 10s, 5m, 1h, 30d)"


# -- levels -------------------------------------------------------------------------------------------------
def test_parse_levels() -> None:
    assert parse_levels("1=10s/1h,2=5m/30d,3=1h/30d") == [
        Level(1, 10.0, 3600.0),
        Level(2, 300.0, 30 * DAY),
        Level(3, 3600.0, 30 * DAY),
    ]
    assert parse_levels(" 1 = 1m / 0 , 2=1h/1d,") == [Level(1, 60.0, 0.0), Level(2, 3600.0, DAY)]
    eight = ",".join(f"{i}=1h/1h" for i in range(1, 9))
    assert [level.level for level in parse_levels(eight)] == list(range(1, 9))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "LFSB_LEVELS: at least one compaction level is required"),
        (" , ,", "LFSB_LEVELS: at least one compaction level is required"),
        ("1=10s", "LFSB_LEVELS: '1=10s' is not of the form N=interval/retention"),
        ("10s/1h", "LFSB_LEVELS: '10s/1h' is not of the form N=interval/retention"),
        ("2=10s/1h", "LFSB_LEVELS: level '2' out of order, expected 1"),
        ("1=10s/1h,3=1m/1h", "LFSB_LEVELS: level '3' out of order, expected 2"),
        ("1=10s/1h,1=1m/1h", "LFSB_LEVELS: level '1' out of order, expected 2"),
        ("0=10s/1h", "LFSB_LEVELS: level '0' out of order, expected 1"),
        ("x=10s/1h", "LFSB_LEVELS: level 'x' out of order, expected 1"),
        (",".join(f"{i}=1h/1h" for i in range(1, 10)), "LFSB_LEVELS: compaction level cannot exceed 8"),
        ("1=0/1h", "LFSB_LEVELS: interval required for level 1"),
        ("1=10s/1h,2=0s/1h", "LFSB_LEVELS: interval required for level 2"),
        ("1=10x/1h", "LFSB_LEVELS: invalid duration '10x' (use e.g. 10s, 5m, 1h, 30d)"),
        ("1=10s/forever", "LFSB_LEVELS: invalid duration 'forever' (use e.g. 10s, 5m, 1h, 30d)"),
        ("1=10s/", "LFSB_LEVELS: invalid duration '' (use e.g. 10s, 5m, 1h, 30d)"),
    ],
)
def test_parse_levels_invalid(text: str, message: str) -> None:
    assert config_error(parse_levels, text) == message


@pytest.mark.parametrize(
    ("interval", "now", "expected"),
    [
        (10.0, "2024-06-08T12:22:39.500", "2024-06-08T12:22:40"),
        (10.0, "2024-06-08T12:22:40", "2024-06-08T12:22:50"),  # on a boundary: the next one
        (300.0, "2024-06-08T12:22:39", "2024-06-08T12:25:00"),
        (3600.0, "2024-06-08T12:22:39", "2024-06-08T13:00:00"),
        (DAY, "2024-06-08T12:22:39", "2024-06-09T00:00:00"),  # daily snapshots at 00:00 UTC
        (DAY, "2024-12-31T23:59:59.999", "2025-01-01T00:00:00"),
        (DAY, "2024-06-09T00:00:00", "2024-06-10T00:00:00"),
    ],
)
def test_next_run_at_wall_clock(interval: float, now: str, expected: str) -> None:
    assert Level(1, interval, 0).next_run_at(unix(now)) == pytest.approx(unix(expected))


@pytest.mark.parametrize("interval", [7.0, 7 * 3600.0, 13 * 60.0, 2 * DAY])
def test_next_run_at_counts_from_year_one(interval: float) -> None:
    """Intervals that do not divide the epoch offset align as Go's ``Truncate`` does, not on Unix time."""
    level = Level(2, interval, 0)
    for now in [unix("2024-06-08T12:22:39"), unix("1999-12-31T23:59:59"), 1_700_000_000.25]:
        at = level.next_run_at(now)
        assert now < at <= now + interval
        assert (at + YEAR1_OFFSET) % interval == pytest.approx(0, abs=1e-3)


# -- sizes and bind addresses -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("0", 0),
        ("16B", 16),
        ("16KiB", 16 << 10),
        ("16 KiB", 16 << 10),
        ("2kb", 2000),
        ("100MB", 100 * 10**6),
        ("100MiB", 100 << 20),
        ("4GiB", 4 << 30),
        ("4gib", 4 << 30),
        ("1GB", 10**9),
        ("2TiB", 2 << 40),
        ("3TB", 3 * 10**12),
        (" 5MiB ", 5 << 20),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text, "LFSB_MAX_TX_BYTES") == size


@pytest.mark.parametrize("text", ["", "GiB", "-1", "1.5GiB", "4 G", "4XB", "1e6", "0x10"])
def test_parse_size_invalid(text: str) -> None:
    message = config_error(parse_size, text, "LFSB_MAX_TX_BYTES")
    assert message == f"LFSB_MAX_TX_BYTES: invalid size {text!r} (use e.g. 4GiB, 100MB)"


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (":2200", ("0.0.0.0", 2200)),
        ("127.0.0.1:2200", ("127.0.0.1", 2200)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:65535", ("::", 65535)),
    ],
)
def test_parse_bind(text: str, address: tuple[str, int]) -> None:
    assert parse_bind(text) == address


@pytest.mark.parametrize("text", ["2200", "host:", ":", "host:http", ":65536", ":-1", "host:22 00"])
def test_parse_bind_invalid(text: str) -> None:
    assert config_error(parse_bind, text) == f"LFSB_BIND: invalid address {text!r} (use host:port or :port)"


# -- load_config --------------------------------------------------------------------------------------------
def test_defaults() -> None:
    config = load_config({"LFSB_DATA_PATH": "/data"})
    assert config.data_path == Path("/data")
    assert config.objects_path == Path("/data/objects")
    assert (config.host, config.port) == ("0.0.0.0", 2200)
    assert config.s3 is None
    assert config.sentry_dsn is None
    assert config.levels == (Level(1, 10.0, 3600.0), Level(2, 300.0, 30 * DAY), Level(3, 3600.0, 30 * DAY))
    assert config.l0_retention == 3600.0
    assert (config.snapshot_interval, config.snapshot_retention) == (DAY, 30 * DAY)
    assert config.max_tx_bytes == 4 << 30
    assert (config.log_level, config.log_format) == ("info", "text")


def test_empty_optional_variables_mean_unset() -> None:
    env = {"LFSB_DATA_PATH": "/data", "BUCKET_NAME": "", "SENTRY_DSN": ""}
    assert load_config(env) == load_config({"LFSB_DATA_PATH": "/data"})
    s3 = load_config({**env, "BUCKET_NAME": "b", "AWS_ENDPOINT_URL_S3": "", "AWS_REGION": ""}).s3
    assert s3 == S3Settings("b")


@pytest.mark.parametrize(
    "name",
    [
        "LFSB_BIND",
        "LFSB_LEVELS",
        "LFSB_L0_RETENTION",
        "LFSB_SNAPSHOT_INTERVAL",
        "LFSB_SNAPSHOT_RETENTION",
        "LFSB_MAX_TX_BYTES",
        "LFSB_LOG_LEVEL",
        "LFSB_LOG_FORMAT",
    ],
)
def test_empty_setting_is_an_error(name: str) -> None:
    """``VAR=`` is a value, and a wrong one: the server refuses to start instead of guessing."""
    assert config_error(load_config, {"LFSB_DATA_PATH": "/data", name: ""}).startswith(f"{name}: ")


def test_every_setting() -> None:
    config = load_config(
        {
            "LFSB_DATA_PATH": "rel/data",
            "LFSB_BIND": "127.0.0.1:2300",
            "SENTRY_DSN": "https://key@sentry.example/1",
            "LFSB_LEVELS": "1=1m/2h",
            "LFSB_L0_RETENTION": "10m",
            "LFSB_SNAPSHOT_INTERVAL": "12h",
            "LFSB_SNAPSHOT_RETENTION": "7d",
            "LFSB_MAX_TX_BYTES": "100MiB",
            "LFSB_LOG_LEVEL": "DEBUG",
            "LFSB_LOG_FORMAT": "Json",
        }
    )
    assert config.data_path == Path("rel/data")
    assert (config.host, config.port) == ("127.0.0.1", 2300)
    assert config.sentry_dsn == "https://key@sentry.example/1"
    assert config.levels == (Level(1, 60.0, 7200.0),)
    assert (config.l0_retention, config.snapshot_interval, config.snapshot_retention) == (
        600,
        DAY / 2,
        7 * DAY,
    )
    assert config.max_tx_bytes == 100 << 20
    assert (config.log_level, config.log_format) == ("debug", "json")


def test_flag_overrides() -> None:
    env = {"LFSB_DATA_PATH": "/env", "LFSB_BIND": ":2200"}
    config = load_config(env, data_path="/flag", bind="127.0.0.1:2201")
    assert (config.data_path, config.host, config.port) == (Path("/flag"), "127.0.0.1", 2201)
    assert load_config(env, data_path=None, bind=None) == load_config(env)  # None: flag not given


def test_s3_settings_with_aws_names() -> None:
    config = load_config(
        {
            "LFSB_DATA_PATH": "/data",
            "BUCKET_NAME": "backups",
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000",
            "AWS_REGION": "auto",
            "AWS_ACCESS_KEY_ID": "id",
            "AWS_SECRET_ACCESS_KEY": "secret",
        }
    )
    assert config.s3 == S3Settings("backups", "http://127.0.0.1:9000", "auto", "id", "secret")
    assert "secret" not in repr(config)


def test_s3_settings_with_short_names_and_precedence() -> None:
    short = {
        "LFSB_DATA_PATH": "/data",
        "BUCKET_NAME": "b",
        "AWS_ACCESS_KEY": "id2",
        "AWS_SECRET_KEY": "secret2",
    }
    assert load_config(short).s3 == S3Settings("b", None, "us-east-1", "id2", "secret2")
    both = {
        **short,
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert load_config(both).s3 == S3Settings("b", None, "eu-west-1", "id", "secret")
    assert load_config({**both, "AWS_REGION": "auto"}).s3.region == "auto"  # type: ignore[union-attr]
    # No credentials at all: left to the SDK's own chain.
    assert load_config({"LFSB_DATA_PATH": "/data", "BUCKET_NAME": "b"}).s3 == S3Settings("b")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LFSB_DATA_PATH": ""}, "LFSB_DATA_PATH: required (the local data directory)"),
        ({"LFSB_BIND": "2200"}, "LFSB_BIND: invalid address '2200' (use host:port or :port)"),
        ({"LFSB_LEVELS": "1=10s"}, "LFSB_LEVELS: '1=10s' is not of the form N=interval/retention"),
        ({"LFSB_L0_RETENTION": "1y"}, "LFSB_L0_RETENTION: invalid duration '1y' (use e.g. 10s, 5m, 1h, 30d)"),
        (
            {"LFSB_SNAPSHOT_INTERVAL": "daily"},
            "LFSB_SNAPSHOT_INTERVAL: invalid duration 'daily' (use e.g. 10s, 5m, 1h, 30d)",
        ),
        ({"LFSB_SNAPSHOT_INTERVAL": "0"}, "LFSB_SNAPSHOT_INTERVAL: must be greater than zero"),
        (
            {"LFSB_SNAPSHOT_RETENTION": "1 month"},
            "LFSB_SNAPSHOT_RETENTION: invalid duration '1 month' (use e.g. 10s, 5m, 1h, 30d)",
        ),
        ({"LFSB_MAX_TX_BYTES": "lots"}, "LFSB_MAX_TX_BYTES: invalid size 'lots' (use e.g. 4GiB, 100MB)"),
        ({"LFSB_MAX_TX_BYTES": "0GiB"}, "LFSB_MAX_TX_BYTES: must be greater than zero"),
        ({"LFSB_LOG_LEVEL": "Verbose"}, "LFSB_LOG_LEVEL: 'verbose' is not debug, info, warning or error"),
        ({"LFSB_LOG_FORMAT": "xml"}, "LFSB_LOG_FORMAT: 'xml' is not text or json"),
    ],
)
def test_invalid_settings(env: dict[str, str], message: str) -> None:
    assert config_error(load_config, {"LFSB_DATA_PATH": "/data", **env}) == message


def test_data_path_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LFSB_DATA_PATH", raising=False)
    assert config_error(load_config) == "LFSB_DATA_PATH: required (the local data directory)"
    monkeypatch.setenv("LFSB_DATA_PATH", "/from/environ")
    assert load_config().data_path == Path("/from/environ")  # os.environ by default
