"""The least role each endpoint needs, and which endpoints are admin actions written to the audit log.

One table for every route (a test walks it): the auth middleware refuses a principal below the role,
or of another cluster, before the handler runs, so a refusal neither changes nor reveals anything.
"""

from __future__ import annotations

from ..store.access import Role

Route = tuple[str, str]
"""(HTTP method, path)."""

ROUTE_ROLES: dict[Route, Role] = {
    ("GET", "/pos"): Role.REPLICA,
    ("POST", "/db/tx"): Role.REPLICA,
    ("GET", "/db/snapshot"): Role.REPLICA,  # the current state; a past point needs POINT_IN_TIME_ROLE
    ("GET", "/db/info"): Role.READ,
    ("GET", "/db/restore/check"): Role.READ,
    ("GET", "/deleted"): Role.READ,
    ("POST", "/db/restore"): Role.ADMIN,
    ("POST", "/db/upload"): Role.ADMIN,
    ("DELETE", "/db"): Role.ADMIN,
    ("POST", "/db/undelete"): Role.ADMIN,
    ("POST", "/cluster/reset-id"): Role.ADMIN,
    ("POST", "/tokens"): Role.ADMIN,
    ("GET", "/tokens"): Role.ADMIN,
    ("DELETE", "/tokens"): Role.ADMIN,
    ("GET", "/audit"): Role.ADMIN,
    ("POST", "/db/verify"): Role.READ,  # a restore check only reads backups (and records its outcome)
    ("GET", "/status"): Role.READ,
}

POINT_IN_TIME_ROLE = Role.READ
"""What ``GET /db/snapshot`` needs for a past point (``txid=`` other than 0, or ``timestamp=``)."""

PUBLIC_ROUTES: frozenset[Route] = frozenset({("GET", "/healthz"), ("GET", "/metrics")})
"""Served to anyone: ``/healthz`` tells health only; ``/metrics`` is only served on a loopback address or
on ``LFSB_METRICS_BIND`` (its labels name every cluster and database)."""

ALL_CLUSTER_ROUTES: frozenset[Route] = frozenset({("GET", "/tokens"), ("GET", "/audit")})
"""Routes the root token may call without naming a cluster (they then cover every cluster)."""

AUDITED: dict[Route, str] = {
    ("POST", "/db/restore"): "restore",
    ("POST", "/db/upload"): "import",
    ("DELETE", "/db"): "delete",  # "purge" with purge=true
    ("POST", "/db/undelete"): "undelete",
    ("POST", "/cluster/reset-id"): "reset-id",
    ("POST", "/tokens"): "token-create",
    ("DELETE", "/tokens"): "token-revoke",
}
"""Admin actions: each request that passes authentication is recorded, with its outcome."""
