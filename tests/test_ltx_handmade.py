"""The decoder and ``lfsb ltx verify`` on the hand-made LZ4 and truncation corners (tests/handmade_ltx.py)."""

from __future__ import annotations

import io
import json
import random

import lz4.block
import pytest
from click.testing import CliRunner

from lfsb.cli import main
from lfsb.ltx import Decoder, LTXError, verify
from lfsb.ltx.lz4frame import decode_block
from tests.handmade_ltx import HANDMADE, LOGICAL, cases, ending_with_match, manifest, sequence
from tests.ltx_helpers import ChunkyReader

CASES = cases()
IDS = [case["file"] for case in CASES]


def verdict(data: bytes, stream: type = io.BytesIO, trusted: bool = False) -> str | None:
    """The error text of verifying ``data``, or None when it verifies."""
    dec = Decoder(stream(data), trusted=trusted)
    try:
        dec.read_header()
        for _ in dec.pages():
            pass
        dec.close()
    except LTXError as e:
        return str(e)
    return None


def test_the_builder_makes_the_committed_files() -> None:
    assert json.loads((HANDMADE / "manifest.json").read_text()) == manifest()
    for case in CASES:
        assert (HANDMADE / case["file"]).read_bytes() == case["data"], case["file"]
    assert sorted(p.name for p in HANDMADE.glob("*.ltx")) == sorted(IDS)


@pytest.mark.parametrize("stream", [io.BytesIO, ChunkyReader], ids=["plain", "chunky"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_decoder_gives_the_reference_verdict(case: dict, stream: type) -> None:
    assert verdict(case["data"], stream) == case["expected_error"]
    if case["valid"]:
        header, _, pgnos = verify(stream(case["data"]))
        assert (header.commit, pgnos) == (2, [1, 2])


def test_the_lz4_cases_are_where_liblz4_differs() -> None:
    """liblz4 refuses a block ending with a match and accepts offset 0 and a lying last token."""
    with pytest.raises(lz4.block.LZ4BlockError):
        lz4.block.decompress(ending_with_match(LOGICAL), uncompressed_size=1 << 16)
    assert lz4.block.decompress(sequence(LOGICAL, nibble=1), uncompressed_size=1 << 16) == LOGICAL
    by_name = {case["file"]: case for case in CASES}
    for name in ["lz4_match_offset_zero.ltx", "lz4_last_token_match_length.ltx"]:
        # A trusted decoder (files lfsb wrote) takes liblz4's word and skips the token walk.
        assert verdict(by_name[name]["data"], trusted=True) is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cli_verify_prints_the_reference_output(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HANDMADE)
    result = CliRunner().invoke(main, ["ltx", "verify", case["file"]], catch_exceptions=False)
    expected = "ok" if case["valid"] else f"{case['file']}: {case['expected_error']}\n0 ok, 1 invalid"
    assert (result.exit_code, result.stdout) == (0 if case["valid"] else 1, expected + "\n")


def test_cli_verify_counts_all_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(HANDMADE)
    result = CliRunner().invoke(main, ["ltx", "verify", *IDS], catch_exceptions=False)
    invalid = [case for case in CASES if not case["valid"]]
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"{c['file']}: {c['expected_error']}" for c in invalid] + [
        f"{len(CASES) - len(invalid)} ok, {len(invalid)} invalid"
    ]


def test_decode_block_agrees_with_liblz4_on_its_blocks() -> None:
    """The reference-rules decoder (used where liblz4 refuses) decodes what liblz4 writes, with and
    without a dictionary, and refuses output over its capacity."""
    rng = random.Random(12)
    for _ in range(40):
        words = [rng.randbytes(rng.randint(1, 9)) for _ in range(8)]
        data = b"".join(rng.choice(words) * rng.randint(1, 30) for _ in range(rng.randint(0, 300)))
        history = b"".join(rng.choice(words) for _ in range(50))
        plain = lz4.block.compress(data, store_size=False)
        assert decode_block(plain, 1 << 16) == data
        linked = lz4.block.compress(data, store_size=False, dict=history)
        assert decode_block(linked, 1 << 16, history) == data
        if data:
            with pytest.raises(LTXError, match="buffer too short"):
                decode_block(plain, len(data) - 1)
    # An overlapping match repeats its bytes; one reaching before the block needs a dictionary.
    assert decode_block(sequence(b"ab", offset=2, match=7), 100) == b"ababababa"
    assert decode_block(sequence(b"", offset=3, match=5), 100, b"xyz") == b"xyzxy"
    with pytest.raises(LTXError):
        decode_block(sequence(b"", offset=3, match=5), 100)
