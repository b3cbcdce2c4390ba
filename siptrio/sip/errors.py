"""The one error type untrusted SIP input can raise, carrying the answer it deserves.

Following h11's ``error_status_hint``: whoever parses knows best which response the
fault calls for, so the exception carries the status and a reason phrase naming the
fault, and the I/O layer only decides whether the message was readable enough to
answer at all.
"""

from __future__ import annotations

__all__ = ["SipParseError"]


class SipParseError(ValueError):
    """Malformed or unacceptable SIP input.

    ``status`` is the SIP response the sender should get (400, 413, 416, 420, 483,
    505 ...); ``reason`` is the reason phrase, specific enough that the sender can
    see what was wrong. ``close`` says a stream can no longer be framed and must be
    closed after answering.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int = 400,
        close: bool = False,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.close = close
        self.extra_headers = extra_headers
