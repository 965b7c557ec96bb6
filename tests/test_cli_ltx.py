"""The ``lfsb ltx`` commands on the golden fixtures, through click's CliRunner and a real subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lfsb.cli import main
from lfsb.ltx import Encoder, Header
from tests.conftest import FIXTURES, REPO, load_manifest

MANIFEST = load_manifest()
ENTRIES = {fx["file"]: fx for fx in MANIFEST["fixtures"]}
VALID = [fx for fx in MANIFEST["fixtures"] if fx["valid"]]
COMPACTED = [fx for fx in MANIFEST["fixtures"] if fx["kind"] == "compacted"]
SEQ = sorted(name for name in ENTRIES if name.startswith("seq/"))
SEQ_LZ4 = sorted(name for name in ENTRIES if name.startswith("seq_lz4/"))
STEP = {fx["txid"]: fx for fx in MANIFEST["fixtures"] if fx.get("sequence") == "seq"}
HEADER_KEYS = [
    "flags",
    "page_size",
    "commit",
    "min_txid",
    "max_txid",
    "timestamp",
    "pre_apply_checksum",
    "wal_offset",
    "wal_size",
    "wal_salt1",
    "wal_salt2",
    "node_id",
]
LZ4_FRAME_START = bytes.fromhex("04224d186440a7")
COMMANDS = ["apply", "checksum", "compact", "decode-db", "dump", "encode-db", "list", "verify"]

# Each fixture database: its sha256 and its database checksum.
DATABASES = {
    fx["source_db"]: (fx["source_db_sha256"], fx["expected_post_apply_checksum"])
    for fx in MANIFEST["fixtures"]
    if fx.get("source_db")
} | {
    "db/seq_txid1.db": (STEP[1]["db_after_apply_sha256"], STEP[1]["expected_post_apply_checksum"]),
    "db/seq_final_txid6.db": (STEP[6]["db_after_apply_sha256"], STEP[6]["expected_post_apply_checksum"]),
}


@pytest.fixture(autouse=True)
def in_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the fixture directory, so that paths read as in the manifest's reference outputs."""
    monkeypatch.chdir(FIXTURES)


def lfsb(*args: str | Path) -> Result:
    """Run ``lfsb ARGS`` in-process; an unexpected exception fails the test with its traceback."""
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def ok(*args: str | Path) -> str:
    """Run a command that must succeed; its stdout."""
    result = lfsb(*args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result.stdout


def assert_error(result: Result, message: str) -> None:
    """Status 1, nothing on stdout and exactly the one line ``Error: <message>`` on stderr."""
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"Error: {message}\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dump_json(path: str | Path) -> dict:
    return json.loads(ok("ltx", "dump", "--json", path))


def manifest_dump(fx: dict) -> dict:
    """What ``dump --json`` must print for a valid fixture."""
    header = {key: fx["header"][key] for key in HEADER_KEYS}
    return {"header": header, "trailer": fx["trailer"], "page_numbers": fx["page_numbers"]}


def integrity_check(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


# -- verify, dump, list ---------------------------------------------------------------------------


@pytest.mark.parametrize("fx", MANIFEST["fixtures"], ids=[fx["file"] for fx in MANIFEST["fixtures"]])
def test_verify_prints_the_reference_output(fx: dict) -> None:
    result = lfsb("ltx", "verify", fx["file"])
    assert result.stdout == fx["reference_verify_output"] + "\n"
    assert result.exit_code == (0 if fx["valid"] else 1)


def test_verify_counts_every_file() -> None:
    result = lfsb("ltx", "verify", *SEQ, "bad/corrupt_magic.ltx", "missing.ltx")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "bad/corrupt_magic.ltx: decode header: unmarshal header: invalid LTX file",
        "missing.ltx: No such file or directory",
        f"{len(SEQ)} ok, 2 invalid",
    ]
    assert ok("ltx", "verify", *SEQ, *SEQ_LZ4) == "ok\n"


@pytest.mark.parametrize("fx", VALID, ids=[fx["file"] for fx in VALID])
def test_dump_json_equals_manifest(fx: dict) -> None:
    assert dump_json(fx["file"]) == manifest_dump(fx)


def test_dump_text() -> None:
    out = ok("ltx", "dump", "snapshot/db4096_lz4.ltx")
    fields = dict(line.split(":", 1) for line in out.splitlines())
    fields = {key: value.strip() for key, value in fields.items()}
    assert set(fields) == {*HEADER_KEYS, "post_apply_checksum", "file_checksum", "page_numbers"}
    assert fields["flags"] == "0x00000001"
    assert fields["timestamp"] == "2023-11-14T22:13:20.000Z"
    assert fields["min_txid"] == fields["max_txid"] == "0000000000000001"
    assert fields["post_apply_checksum"] == "a87fc9da450ad2a8"
    assert fields["page_numbers"] == "1 2 3 4 5"


def test_dump_invalid_file() -> None:
    result = lfsb("ltx", "dump", "bad/corrupt_page_byte_raw.ltx")
    assert_error(result, "bad/corrupt_page_byte_raw.ltx: close reader: file checksum mismatch")


LISTED = [fx for fx in VALID if "reference_list_tsv" in fx]


def test_list_json_matches_reference() -> None:
    bad = ENTRIES["spec/bad_snapshot_postapply.ltx"]
    result = lfsb("ltx", "list", "--json", *(fx["file"] for fx in LISTED), bad["file"])
    assert result.exit_code == 1
    assert result.stderr == bad["reference_list_stderr"] + "\n"
    rows = json.loads(result.stdout)
    assert [row["file"] for row in rows] == [fx["file"] for fx in LISTED]
    keys = ["min_txid", "max_txid", "commit", "page_count", "pre_apply_checksum", "post_apply_checksum"]
    for row, fx in zip(rows, LISTED, strict=True):
        reference = fx["reference_list_tsv"].split("\t")[:7]
        assert [str(row[key]) for key in [*keys, "timestamp"]] == reference


def test_list_table() -> None:
    lines = ok("ltx", "list", *SEQ).splitlines()
    columns = ["MIN_TXID", "MAX_TXID", "COMMIT", "PAGES", "PRE_APPLY", "POST_APPLY", "TIMESTAMP", "FILE"]
    assert lines[0].split() == columns
    for line, name in zip(lines[1:], SEQ, strict=True):
        assert line.split() == [*ENTRIES[name]["reference_list_tsv"].split("\t")[:7], name]


def test_list_unset_timestamp_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "no-timestamp.ltx"
    with path.open("wb") as f:
        Encoder(f, Header(page_size=512, commit=0, min_txid=1, max_txid=1)).close()
    (row,) = json.loads(ok("ltx", "list", "--json", path))
    assert row["timestamp"] == ""
    assert row["page_count"] == 0


# -- checksum, encode-db, decode-db ---------------------------------------------------------------


@pytest.mark.parametrize("db", DATABASES)
def test_checksum_of_fixture_db(db: str) -> None:
    digest, checksum = DATABASES[db]
    assert sha256(FIXTURES / db) == digest
    assert ok("ltx", "checksum", db) == checksum + "\n"


def test_checksum_of_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.db").write_bytes(b"")
    assert ok("ltx", "checksum", tmp_path / "empty.db") == "8000000000000000\n"


@pytest.mark.parametrize("compress", [True, False], ids=["lz4", "raw"])
@pytest.mark.parametrize("db", DATABASES)
def test_encode_decode_round_trip(db: str, compress: bool, tmp_path: Path) -> None:
    snapshot, restored = tmp_path / "snapshot.ltx", tmp_path / "restored.db"
    ok("ltx", "encode-db", db, "-o", snapshot, *([] if compress else ["--no-compress"]))
    assert (snapshot.read_bytes()[100:107] == LZ4_FRAME_START) == compress
    assert ok("ltx", "verify", snapshot) == "ok\n"
    dump = dump_json(snapshot)
    assert dump["header"]["flags"] == int(compress)
    assert dump["trailer"]["post_apply_checksum"] == DATABASES[db][1]
    ok("ltx", "decode-db", snapshot, "-o", restored)
    assert restored.read_bytes() == (FIXTURES / db).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restored.db", "snapshot.ltx"]
    assert integrity_check(restored) == "ok"


# -- compact ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fx", COMPACTED, ids=[fx["file"] for fx in COMPACTED])
def test_compact_gives_fixture_content(fx: dict, tmp_path: Path) -> None:
    out = tmp_path / "out.ltx"
    stdout = ok("ltx", "compact", "-o", out, *fx["inputs"], *([] if fx["output_lz4"] else ["--no-compress"]))
    assert stdout == f"{out}: {fx['header']['commit']} pages, position {fx['post_apply_pos']}\n"
    assert dump_json(out) == manifest_dump(fx)
    if not fx["output_lz4"]:
        assert out.read_bytes() == (FIXTURES / fx["file"]).read_bytes()
        return
    assert out.read_bytes()[100:107] == LZ4_FRAME_START
    if "decoded_db_sha256" in fx:  # a snapshot: compare the databases the two files hold
        ok("ltx", "decode-db", out, "-o", tmp_path / "out.db")
        assert sha256(tmp_path / "out.db") == fx["decoded_db_sha256"]


# -- apply ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exists", [False, True], ids=["missing-db", "empty-db"])
@pytest.mark.parametrize("files", [SEQ, SEQ_LZ4], ids=["seq", "seq_lz4"])
def test_apply_sequence_to_empty_db(files: list[str], exists: bool, tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    if exists:
        db.write_bytes(b"")
    stdout = ok("ltx", "apply", "--db", db, *files)
    assert stdout == f"{db}: 23 pages, position {STEP[6]['post_apply_pos']}\n"
    assert sha256(db) == STEP[6]["db_after_apply_sha256"] == sha256(FIXTURES / "db/seq_final_txid6.db")
    assert integrity_check(db) == "ok"


def test_apply_in_steps(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    for txid, name in enumerate(SEQ, start=1):
        ok("ltx", "apply", "--db", db, name)
        assert sha256(db) == STEP[txid]["db_after_apply_sha256"]
        assert ok("ltx", "checksum", db) == STEP[txid]["expected_post_apply_checksum"] + "\n"


def test_apply_compacted_incremental(tmp_path: Path) -> None:
    fx = ENTRIES["compact/0000000000000002-0000000000000006.lz4.ltx"]
    db = tmp_path / "db.sqlite"
    shutil.copyfile(FIXTURES / "db/seq_txid1.db", db)
    assert sha256(db) == fx["db_before_apply_sha256"]
    ok("ltx", "apply", "--db", db, fx["file"])
    assert sha256(db) == fx["db_after_apply_sha256"]


def test_apply_truncates_a_shrinking_db(tmp_path: Path) -> None:
    db = tmp_path / "db.raw"
    ok("ltx", "apply", "--db", db, "spec/a1_snapshot.ltx", "spec/a2_grow.ltx", "spec/a3_shrink.ltx")
    compacted = ENTRIES["compact/a1-a3_compacted.raw.ltx"]
    assert db.stat().st_size == compacted["decoded_db_size"]
    assert sha256(db) == compacted["decoded_db_sha256"]


def test_apply_wrong_pre_apply_leaves_db_untouched(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    shutil.copyfile(FIXTURES / "db/seq_final_txid6.db", db)
    before = db.read_bytes()
    result = lfsb("ltx", "apply", "--db", db, SEQ[1])
    assert_error(result, f"{SEQ[1]}: pre-apply checksum mismatch: e889b7abf8364d74 <> c92ae68e75596aee")
    assert db.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["db.sqlite"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            [*SEQ[:2], SEQ[3]],
            f"{SEQ[3]}: pre-apply checksum mismatch: 979ce65a3491dfec <> 9a6ce4a5b0f7099d",
        ),
        (
            ["spec/a1_snapshot.ltx", "bad/quirk_incremental_trailer_postapply_noflag_raw.ltx"],
            "bad/quirk_incremental_trailer_postapply_noflag_raw.ltx: "
            "post-apply checksum mismatch: b1a29b6354100000 <> 0000000000001234",
        ),
        (
            ["spec/a1_snapshot.ltx", "bad/bad_trailer_file_checksum_incremental.ltx"],
            "bad/bad_trailer_file_checksum_incremental.ltx: close reader: file checksum mismatch",
        ),
    ],
    ids=["gap", "post-apply", "corrupt"],
)
def test_apply_failing_midway_writes_nothing(files: list[str], message: str, tmp_path: Path) -> None:
    assert_error(lfsb("ltx", "apply", "--db", tmp_path / "db.sqlite", *files), message)
    assert list(tmp_path.iterdir()) == []


# -- bad input --------------------------------------------------------------------------------------


def compaction_case(error_start: str) -> dict:
    return next(
        c for c in MANIFEST["compaction_error_cases"] if c.get("expected_error", "").startswith(error_start)
    )


NON_CONTIGUOUS = compaction_case("non-contiguous")
MISMATCHED_PAGE_SIZES = compaction_case("input files have mismatched page sizes")
INVALID_LTX = "decode header: unmarshal header: invalid LTX file"

# (arguments, error message); "{tmp}" stands for the test's temporary directory, which holds
# garbage.bin (neither LTX nor SQLite) and short.db (a SQLite file cut short).
BAD_INPUT = [
    (["dump", "missing.ltx"], "missing.ltx: No such file or directory"),
    (["dump", "{tmp}/garbage.bin"], f"{{tmp}}/garbage.bin: {INVALID_LTX}"),
    (["dump", "{tmp}"], "{tmp}: Is a directory"),
    (["checksum", "missing.db"], "missing.db: No such file or directory"),
    (["checksum", SEQ[0]], f"{SEQ[0]}: invalid database header"),
    (["checksum", "{tmp}/short.db"], "{tmp}/short.db: database size is not a multiple of page size 4096"),
    (["encode-db", "missing.db", "-o", "{tmp}/out"], "missing.db: No such file or directory"),
    (["encode-db", "{tmp}/garbage.bin", "-o", "{tmp}/out"], "{tmp}/garbage.bin: invalid database header"),
    (
        ["encode-db", "{tmp}/short.db", "-o", "{tmp}/out"],
        "{tmp}/short.db: invalid database header: size 5000 is not a multiple of page size 4096",
    ),
    (["encode-db", "db/ps512.db", "-o", "{tmp}/no/out"], "{tmp}/no/out: No such file or directory"),
    (["decode-db", "missing.ltx", "-o", "{tmp}/out"], "missing.ltx: No such file or directory"),
    (["decode-db", "{tmp}/garbage.bin", "-o", "{tmp}/out"], f"{{tmp}}/garbage.bin: {INVALID_LTX}"),
    (
        ["decode-db", "spec/a2_grow.ltx", "-o", "{tmp}/out"],
        "spec/a2_grow.ltx: cannot decode non-snapshot LTX file to SQLite database",
    ),
    (["compact", "-o", "{tmp}/out", *NON_CONTIGUOUS["inputs"]], NON_CONTIGUOUS["expected_error"]),
    (
        ["compact", "-o", "{tmp}/out", *MISMATCHED_PAGE_SIZES["inputs"]],
        MISMATCHED_PAGE_SIZES["expected_error"],
    ),
    (["compact", "-o", "{tmp}/out", SEQ[0], "{tmp}/garbage.bin"], f"input 1: {INVALID_LTX}"),
    (["compact", "-o", "{tmp}/out", SEQ[0], "missing.ltx"], "missing.ltx: No such file or directory"),
    (["apply", "--db", "{tmp}/out", "missing.ltx"], "missing.ltx: No such file or directory"),
    (["apply", "--db", "{tmp}/out", "{tmp}/garbage.bin"], f"{{tmp}}/garbage.bin: {INVALID_LTX}"),
    (
        ["apply", "--db", "{tmp}/short.db", SEQ[0]],
        f"{SEQ[0]}: database size is not a multiple of page size 1024",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(args) for args, _ in BAD_INPUT])
def test_bad_input_is_one_error_line(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "garbage.bin").write_bytes(bytes(range(256)) * 3)
    (tmp_path / "short.db").write_bytes((FIXTURES / "db/ps4096.db").read_bytes()[:5000])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = lfsb("ltx", *(arg.format(tmp=tmp_path) for arg in args))
    assert_error(result, message.format(tmp=tmp_path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written


# -- a real process ---------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m lfsb.cli ARGS`` from the fixture directory, with this source tree importable."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "lfsb.cli", *args],
        cwd=FIXTURES,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_subprocess_verify_and_errors(tmp_path: Path) -> None:
    bad = ENTRIES["bad/truncated_mid_page_raw.ltx"]
    proc = run_cli("ltx", "verify", SEQ[0], bad["file"])
    assert proc.returncode == 1
    assert proc.stdout == f"{bad['file']}: {bad['expected_error']}\n1 ok, 1 invalid\n"
    proc = run_cli("ltx", "dump", "missing.ltx")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == "Error: missing.ltx: No such file or directory\n"
    proc = run_cli("ltx", "compact", "-o", str(tmp_path / "out.ltx"), *NON_CONTIGUOUS["inputs"])
    assert (proc.returncode, proc.stderr) == (1, f"Error: {NON_CONTIGUOUS['expected_error']}\n")
    assert list(tmp_path.iterdir()) == []


def test_subprocess_help_lists_every_command() -> None:
    proc = run_cli("ltx", "--help")
    assert proc.returncode == 0
    listing = proc.stdout.split("Commands:")[1].splitlines()
    assert [line.split()[0] for line in listing if line.strip()] == COMMANDS
    assert run_cli("--version").stdout.startswith("lfsb, version ")
