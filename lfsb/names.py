"""Cluster and database names: what is allowed (upstream §2) and the errors for what is not."""

from __future__ import annotations

import json
import re

from .errors import Kind, LfsbError

_NAME = re.compile(r"[0-9A-Za-z_.\-]+")
MAX_CLUSTER_NAME = 32
MAX_DATABASE_NAME = 256


def _valid(name: str, limit: int) -> bool:
    return len(name.encode()) <= limit and bool(_NAME.fullmatch(name)) and not name.startswith(".")


def validate_cluster(name: str) -> str:
    """Return ``name`` if it is a valid cluster name, else raise 400 ``EBADCLUSTER``."""
    if not name:
        raise LfsbError(Kind.VALIDATION, "EBADCLUSTER", "cluster required")
    if not _valid(name, MAX_CLUSTER_NAME):
        raise LfsbError(Kind.VALIDATION, "EBADCLUSTER", "cluster invalid")
    return name


def validate_database(name: str) -> str:
    """Return ``name`` if it is a valid database name, else raise 400 ``EBADDB``."""
    if not name:
        raise LfsbError(Kind.VALIDATION, "EBADDB", "database required")
    if not _valid(name, MAX_DATABASE_NAME):
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise LfsbError(Kind.VALIDATION, "EBADDB", f"invalid database name: {json.dumps(shown)}")
    return name
