"""The one exception every codec raises for bad input."""

from __future__ import annotations


class DecodeError(Exception):
    """The peer sent bytes that are not a valid message of the protocol.

    ``reason`` is a short, stable, machine-readable tag (``"message_too_large"``, ``"bad_checksum"``,
    ``"invalid_bson"``, ...) suitable for a stat or log field; the exception text is for humans.
    A decoder that raised ``DecodeError`` is poisoned: every later ``feed`` raises again, so a bug can
    never silently resynchronise on the middle of a stream.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
