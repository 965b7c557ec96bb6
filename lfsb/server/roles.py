"""The least role each endpoint needs (the auth contract's ``ROUTE_ROLES``): this branch's rows only.

``lfsb.store.access`` (Role) comes with the access-control work on main; the lead merges these rows
into its table.
"""

from __future__ import annotations

from ..store.access import Role

ROUTE_ROLES: dict[tuple[str, str], Role] = {
    ("POST", "/db/verify"): Role.READ,  # a restore check only reads backups (and records its outcome)
    ("GET", "/status"): Role.READ,
}
