"""The one exception type of the LTX library."""

from __future__ import annotations


class LTXError(Exception):
    """An LTX file is invalid, or an operation on LTX files cannot be done.

    ``detail`` is the reference library's message (``file checksum mismatch``); ``stage`` is the
    step that failed (``decode header``, ``decode page 3``, ``close reader``), so that
    ``str(err)`` reads exactly like the Go reference's ``Verify`` error text.
    """

    def __init__(self, detail: str, stage: str = "") -> None:
        self.detail = detail
        self.stage = stage
        super().__init__(f"{stage}: {detail}" if stage else detail)

    def at(self, stage: str) -> LTXError:
        """The same error reported at another stage (used to re-prefix a decoder's error)."""
        err = Exception.__new__(type(self))
        err.__dict__.update(self.__dict__)
        err.stage = stage
        err.args = (f"{stage}: {self.detail}" if stage else self.detail,)
        return err


class UnexpectedEOF(LTXError):
    """The input ended in the middle of a structure (Go's ``io.ErrUnexpectedEOF``)."""

    def __init__(self, stage: str = "") -> None:
        super().__init__("unexpected EOF", stage)


class CleanEOF(LTXError):
    """The input ended exactly where a structure should have started (Go's ``io.EOF``)."""

    def __init__(self, stage: str = "") -> None:
        super().__init__("EOF", stage)


class PostApplyMismatch(LTXError):
    """A snapshot's trailer disagrees with the database checksum of its pages."""

    def __init__(self, stored: int, computed: int, stage: str = "") -> None:
        super().__init__(
            f"post-apply checksum in trailer ({stored:016x}) does not match calculated checksum "
            f"({computed:016x})",
            stage,
        )
