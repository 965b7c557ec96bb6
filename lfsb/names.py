"""Cluster and database names: what is allowed (upstream §2) and the errors for what is not."""

from __future__ import annotations

import json
import re

from .errors import Kind, LfsbError

_NAME = re.compile(r"[0-9A-Za-z_.\-]+")
_CLUSTER_ID = re.compile(r"[\x21-\x7e]{1,64}")
MAX_CLUSTER_NAME = 32
MAX_DATABASE_NAME = 255
"""Upstream allows 256 bytes, but a database's L0 files live in a directory named after it, and no common
file system takes a 256-byte name (NAME_MAX is 255): such a database could never be written."""


def _valid(name: str, limit: int) -> bool:
    # The pattern is ASCII-only, so the length in characters is the length in bytes; checking it first
    # also keeps undecodable header bytes (surrogate escapes) away from str.encode().
    # A leading "." could name a hidden or relative directory; a leading "-" reads as a command-line option.
    return bool(_NAME.fullmatch(name)) and len(name) <= limit and not name.startswith((".", "-"))


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
        raise LfsbError(
            Kind.VALIDATION, "EBADDB", f"invalid database name: {json.dumps(shown, ensure_ascii=False)}"
        )
    return name


def validate_cluster_id(value: str) -> str:
    """Return a ``Litefs-Cluster-Id`` value if it is 1-64 printable ASCII characters (LiteFS sends ``LFSC``
    and 16 hex digits), else raise 400 ``EBADCLUSTERID``: anything else could not be pinned or echoed."""
    if not _CLUSTER_ID.fullmatch(value):
        raise LfsbError(Kind.VALIDATION, "EBADCLUSTERID", "invalid Litefs-Cluster-Id header")
    return value
