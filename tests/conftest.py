"""Shared pytest fixtures: the golden LTX fixtures (tests/fixtures/ltx) and the S3 server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "ltx"

pytest_plugins = ["tests.s3server", "tests.lfsb_server"]


def load_manifest() -> dict:
    """The golden fixtures' manifest.json (made by the Go reference implementation)."""
    return json.loads((FIXTURES / "manifest.json").read_text())


@pytest.fixture(scope="session")
def manifest() -> dict:
    return load_manifest()
