"""The one error type of lfsb: a code (``EPOSMISMATCH``, …) and a kind mapped to an HTTP status."""

from __future__ import annotations

from enum import Enum
from typing import Any

from .ltx import Pos


class Kind(Enum):
    """What went wrong, from the client's point of view; the value is the HTTP status."""

    VALIDATION = 400
    AUTH = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    METHOD_NOT_ALLOWED = 405
    CONFLICT = 409
    TOO_LARGE = 413
    UNSUPPORTED_MEDIA_TYPE = 415
    EXPECTATION_FAILED = 417
    UNPROCESSABLE = 422
    RATE_LIMITED = 429
    INTERNAL = 500
    UNAVAILABLE = 503
    INSUFFICIENT_STORAGE = 507


class LfsbError(Exception):
    """An error with a stable code and a message meant for the client."""

    def __init__(self, kind: Kind, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.extra = extra

    def __reduce__(self) -> tuple[Any, ...]:  # pickled by the metadata writer process
        return _restore, (self.kind, self.code, self.message, self.extra)

    @property
    def status(self) -> int:
        """The HTTP status for this error."""
        return self.kind.value

    def to_json(self) -> dict[str, Any]:
        """``{"code": …, "error": …}`` plus any extra fields (``pos`` for a position mismatch)."""
        body: dict[str, Any] = {"code": self.code, "error": self.message}
        body.update(self.extra)
        return body


def _restore(kind: Kind, code: str, message: str, extra: dict[str, Any]) -> LfsbError:
    return LfsbError(kind, code, message, **extra)


def pos_mismatch(pos: Pos) -> LfsbError:
    """409 ``EPOSMISMATCH`` carrying the database's current position, as LiteFS expects."""
    return LfsbError(Kind.CONFLICT, "EPOSMISMATCH", "position mismatch", pos=pos.to_json())


def bad_input(message: str) -> LfsbError:
    """400 ``EBADINPUT``."""
    return LfsbError(Kind.VALIDATION, "EBADINPUT", message)


def bad_ltx(message: str) -> LfsbError:
    """400 ``EBADLTX``: a malformed LTX body, with the decoder's message."""
    return LfsbError(Kind.VALIDATION, "EBADLTX", message)


def not_found_db() -> LfsbError:
    """404 ``ENODB``."""
    return LfsbError(Kind.NOT_FOUND, "ENODB", "database not found")


def internal(message: str) -> LfsbError:
    """500 ``EINTERNAL``: our own fault."""
    return LfsbError(Kind.INTERNAL, "EINTERNAL", message)


def busy(message: str) -> LfsbError:
    """503 ``EBUSY``: a limit of the server is reached for now; the client retries later."""
    return LfsbError(Kind.UNAVAILABLE, "EBUSY", message)
