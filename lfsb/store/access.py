"""Access control: tokens with roles, the principal a request acts as, protected mode and the failure limit.

A token is ``lfsb_<id>_<secret>``: a fixed prefix secret scanners can spot, a public ID (12 hex digits)
admins name it by, and a 256-bit random secret (64 hex digits) of which only the SHA-256 is stored. LiteFS
sends ``LITEFS_CLOUD_TOKEN`` verbatim as ``Authorization``, so a token works with unmodified LiteFS.
The tokens live in the metadata db and, for the lookups of every request, in memory; only the server
writes them, so the cache is exact and a revocation counts from the very next request.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import hashlib
import hmac
import logging
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from ..errors import Kind, LfsbError
from ..names import validate_cluster
from .db import MetaDB, now_ms

log = logging.getLogger(__name__)

TOKEN_PREFIX = "lfsb_"
_TOKEN = re.compile(r"lfsb_([0-9a-f]{12})_([0-9a-f]{64})")
ROOT_ID = "root"
MIN_ADMIN_TOKEN = 32
"""Fewest characters ``LFSB_ADMIN_TOKEN`` may have (``openssl rand -hex 32`` makes 64)."""
TOUCH_INTERVAL_MS = 60_000
"""A token's last use is written at most once per this many milliseconds."""
FAILURE_LIMIT = 20
FAILURE_WINDOW = 60.0
"""More than ``FAILURE_LIMIT`` failed authentications from one address within ``FAILURE_WINDOW`` seconds:
that address gets 429 ``ERATELIMIT`` for everything until the window has passed."""
TRACKED_ADDRESSES = 10_000
"""Most remote addresses whose failures are remembered (the oldest is forgotten first)."""


class Role(enum.IntEnum):
    """What a token may do; each role includes the ones below it."""

    REPLICA = 1
    """What LiteFS needs: ``GET /pos``, ``POST /db/tx``, ``GET /db/snapshot`` of the current state."""
    READ = 2
    """Adds list, info, export at any point, the deleted databases."""
    ADMIN = 3
    """Adds restore, import, delete, undelete, purge, cluster reset-id, tokens and the audit log."""

    @classmethod
    def parse(cls, text: str) -> Role:
        """``replica``, ``read`` or ``admin``; 400 ``EBADROLE`` otherwise."""
        try:
            return cls[text.upper()]
        except KeyError:
            raise LfsbError(
                Kind.VALIDATION, "EBADROLE", f"invalid role {text!r}: use replica, read or admin"
            ) from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a cluster (None: every cluster, the root token), a role and the token's ID
    (``root`` for ``LFSB_ADMIN_TOKEN``, None for ``Authorization: cluster NAME`` in open mode)."""

    cluster: str | None
    role: Role
    token_id: str | None

    def allows(self, cluster: str | None, role: Role) -> bool:
        """Whether this principal may act on ``cluster`` (None: every cluster) with ``role``."""
        return self.role >= role and (self.cluster is None or self.cluster == cluster)


ROOT = Principal(None, Role.ADMIN, ROOT_ID)


@dataclass(frozen=True)
class Token:
    """A token as listed: never its secret."""

    id: str
    cluster: str
    role: Role
    note: str
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    last_used_at: int | None

    def state(self, now: int) -> str:
        """``valid``, ``revoked`` or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "valid"

    def to_json(self, now: int) -> dict[str, Any]:
        """The listing of ``GET /tokens`` (times in ms since the epoch)."""
        return {
            "id": self.id,
            "cluster": self.cluster,
            "role": str(self.role),
            "note": self.note,
            "createdAt": self.created_at,
            "expiresAt": self.expires_at,
            "revokedAt": self.revoked_at,
            "lastUsedAt": self.last_used_at,
            "state": self.state(now),
        }


TOKEN_COLUMNS = "id, cluster, role, note, created_at, expires_at, revoked_at, last_used_at"


def _token(row: tuple) -> Token:
    id_, cluster, role, note, created, expires, revoked, used = row
    return Token(id_, cluster, Role(role), note, created, expires, revoked, used)


def hash_secret(secret: str) -> bytes:
    """The stored form of a token's secret (a 256-bit random secret needs no slow hash)."""
    return hashlib.sha256(secret.encode()).digest()


# -- metadata writes (run by MetaDB.write) ----------------------------------------------------------
def insert_token(conn: sqlite3.Connection, token: Token, secret_hash: bytes) -> None:
    """Store a new token."""
    conn.execute(
        f"INSERT INTO tokens ({TOKEN_COLUMNS}, secret_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (token.id, token.cluster, int(token.role), token.note, token.created_at, token.expires_at,
         token.revoked_at, token.last_used_at, secret_hash),
    )  # fmt: skip


def revoke_token(conn: sqlite3.Connection, token_id: str, now: int) -> None:
    """Mark a token revoked (a revoked one keeps its first revocation time)."""
    conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now, token_id))


def touch_token(conn: sqlite3.Connection, token_id: str, now: int) -> None:
    """Record a token's last use."""
    conn.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, token_id))


class AuthFailures:
    """Failed authentications per remote address over the last ``FAILURE_WINDOW`` seconds."""

    def __init__(self) -> None:
        self._times: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _recent(self, address: str, now: float) -> collections.deque[float] | None:
        times = self._times.get(address)
        while times and times[0] <= now - FAILURE_WINDOW:
            times.popleft()
        return times

    def limited(self, address: str) -> bool:
        """Whether ``address`` is over the limit now."""
        times = self._recent(address, time.monotonic())
        return times is not None and len(times) >= FAILURE_LIMIT

    def add(self, address: str) -> None:
        """Count one failure of ``address``."""
        now = time.monotonic()
        times = self._recent(address, now)
        if times is None:
            times = self._times[address] = collections.deque(maxlen=FAILURE_LIMIT)
            if len(self._times) > TRACKED_ADDRESSES:
                self._times.popitem(last=False)
        self._times.move_to_end(address)
        times.append(now)


def unauthorized(message: str) -> LfsbError:
    """401 ``EUNAUTHORIZED``."""
    return LfsbError(Kind.AUTH, "EUNAUTHORIZED", message)


def forbidden(message: str = "this token may not do that") -> LfsbError:
    """403 ``EFORBIDDEN``: a valid token, but the wrong role or another cluster."""
    return LfsbError(Kind.FORBIDDEN, "EFORBIDDEN", message)


class Access:
    """Tokens in memory over their table, the mode (open or tokens) and the answer to "who is this?"."""

    def __init__(
        self, meta: MetaDB, auth: str | None, admin_token: str | None, loopback: bool, failures: Counter
    ) -> None:
        """``auth`` is ``LFSB_AUTH`` (None: decided by the rules of protected mode); ``failures`` counts
        refused authentications by reason."""
        self.meta = meta
        self._failure_count = failures
        self._touches: set[asyncio.Task] = set()
        self._auth = auth
        self._admin_token = admin_token.encode() if admin_token else None
        self._loopback = loopback
        self._tokens: dict[str, tuple[Token, bytes]] = {}
        self.failures = AuthFailures()

    async def open(self) -> None:
        """Load every token."""
        rows = await self.meta.read(
            lambda c: c.execute(f"SELECT {TOKEN_COLUMNS}, secret_hash FROM tokens").fetchall()
        )
        self._tokens = {row[0]: (_token(row[:-1]), row[-1]) for row in rows}

    @property
    def token_mode(self) -> bool:
        """Whether every request needs a token: ``LFSB_AUTH=tokens``; or, unless ``LFSB_AUTH=open``, when
        ``LFSB_ADMIN_TOKEN`` is set, the server listens beyond loopback, or any token was ever created."""
        if self._auth is not None:
            return self._auth == "tokens"
        return self._admin_token is not None or not self._loopback or bool(self._tokens)

    def _failure(self, reason: str, message: str) -> LfsbError:
        self._failure_count.labels(reason).inc()
        return unauthorized(message)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` value (``lfsb_…`` token, the root token, either after
        ``Bearer``, or ``cluster NAME`` in open mode), or 401 ``EUNAUTHORIZED``."""
        value = (authorization or "").strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        if not value:
            raise self._failure("missing", "authorization required: send a token in the Authorization header")
        if self._admin_token is not None and hmac.compare_digest(value.encode(), self._admin_token):
            return ROOT
        if m := _TOKEN.fullmatch(value):
            return self._check_token(m.group(1), m.group(2))
        parts = value.split(" ")
        if len(parts) == 2 and parts[0].lower() == "cluster":
            if self.token_mode:
                raise self._failure(
                    "cluster_name",
                    "this server requires a token: an admin creates one with `lfsb token create CLUSTER"
                    " --role replica`, and LiteFS sends it as LITEFS_CLOUD_TOKEN",
                )
            return Principal(validate_cluster(parts[1]), Role.ADMIN, None)
        if value.startswith(TOKEN_PREFIX):
            raise self._failure("malformed", "malformed token")
        raise self._failure("malformed", "authorization header invalid format")

    def _check_token(self, token_id: str, secret: str) -> Principal:
        entry = self._tokens.get(token_id)
        # The hash is compared even for an unknown ID, so timing does not tell which IDs exist.
        stored = entry[1] if entry else b"\0" * 32
        if not hmac.compare_digest(hash_secret(secret), stored) or entry is None:
            raise self._failure("unknown", "unknown token")
        token = entry[0]
        now = now_ms()
        state = token.state(now)
        if state != "valid":
            raise self._failure(state, f"token {token.id} is {state}")
        if token.last_used_at is None or now - token.last_used_at >= TOUCH_INTERVAL_MS:
            self._tokens[token.id] = (dataclasses.replace(token, last_used_at=now), entry[1])
            task = asyncio.ensure_future(self.meta.write(touch_token, token.id, now))
            self._touches.add(task)  # a lost update of the last use is harmless: not awaited
            task.add_done_callback(lambda t: self._touches.discard(t) or t.cancelled() or t.exception())
        return Principal(token.cluster, token.role, token.id)

    # -- token commands -------------------------------------------------------------------------
    async def create(self, cluster: str, role: Role, note: str, expires_at: int | None) -> tuple[Token, str]:
        """A new token of ``cluster``; the token text, shown this once."""
        token_id = secrets.token_hex(6)
        while token_id in self._tokens:
            token_id = secrets.token_hex(6)
        secret = secrets.token_hex(32)
        token = Token(token_id, cluster, role, note, now_ms(), expires_at, None, None)
        digest = hash_secret(secret)
        await self.meta.write(insert_token, token, digest)
        self._tokens[token_id] = (token, digest)
        log.info("token created cluster=%s token=%s role=%s", cluster, token_id, role)
        return token, f"{TOKEN_PREFIX}{token_id}_{secret}"

    def find(self, token_id: str) -> Token | None:
        """A token by its ID."""
        entry = self._tokens.get(token_id)
        return entry[0] if entry else None

    def list(self, cluster: str | None) -> list[Token]:
        """The tokens of ``cluster`` (None: all), oldest first."""
        tokens = [t for t, _ in self._tokens.values() if cluster is None or t.cluster == cluster]
        return sorted(tokens, key=lambda t: (t.created_at, t.id))

    async def revoke(self, token_id: str) -> Token:
        """Revoke a token (at once: the next request with it is refused)."""
        token, digest = self._tokens[token_id]
        if token.revoked_at is None:
            now = now_ms()
            await self.meta.write(revoke_token, token_id, now)
            self._tokens[token_id] = (token := dataclasses.replace(token, revoked_at=now), digest)
            log.info("token revoked cluster=%s token=%s", token.cluster, token_id)
        return token
