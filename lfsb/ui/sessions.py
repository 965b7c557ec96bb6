"""Dashboard sessions: kept in memory, keyed by a random ID sent as an HttpOnly, SameSite=Strict cookie.

A session holds the principal its token gave at login and a CSRF token every form must send back. It
ends at logout, after ``SESSION_IDLE`` seconds unused or ``SESSION_MAX_AGE`` in all, and as soon as its
token is revoked or expires (checked on every request); a restart ends every session.
"""

from __future__ import annotations

import collections
import hmac
import secrets
import time
from dataclasses import dataclass, field

from ..store.access import ROOT_ID, Access, Principal
from ..store.db import now_ms

SESSION_IDLE = 8 * 3600.0
SESSION_MAX_AGE = 24 * 3600.0
MAX_SESSIONS = 10_000
"""Most sessions kept at once; the least recently used ends first."""


@dataclass
class Session:
    """One signed-in browser."""

    id: str
    principal: Principal
    csrf: str
    started: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    flash: str = ""
    """What the last action did, shown once on the next page."""

    def pop_flash(self) -> str:
        """The message of the last action, once."""
        text, self.flash = self.flash, ""
        return text

    def csrf_ok(self, sent: str | None) -> bool:
        """Whether a form sent this session's CSRF token."""
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


class Sessions:
    """The sessions of one server process."""

    def __init__(self, access: Access) -> None:
        self._access = access
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self, principal: Principal) -> Session:
        """A new session for ``principal``."""
        session = Session(secrets.token_urlsafe(32), principal, secrets.token_urlsafe(32))
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of ``session_id``; None (and the session ended) if it is unknown, too old,
        or its token no longer valid."""
        session = self._sessions.get(session_id or "")
        if session is None:
            return None
        now = time.monotonic()
        if (
            now - session.seen > SESSION_IDLE
            or now - session.started > SESSION_MAX_AGE
            or not self._valid(session)
        ):
            self.end(session.id)
            return None
        session.seen = now
        self._sessions.move_to_end(session.id)
        return session

    def _valid(self, session: Session) -> bool:
        token_id = session.principal.token_id
        if token_id is None:  # open mode: until tokens are required
            return not self._access.token_mode
        if token_id == ROOT_ID:
            return True  # LFSB_ADMIN_TOKEN: changed only by a restart, which ends every session
        token = self._access.find(token_id)
        return token is not None and token.state(now_ms()) == "valid"

    def end(self, session_id: str) -> None:
        """End a session (logout)."""
        self._sessions.pop(session_id, None)
