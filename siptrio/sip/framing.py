"""Cutting a TCP or TLS byte stream into SIP messages and keep-alives (sans-IO).

RFC 3261 section 18.3: on a stream, Content-Length is mandatory and is the only
frame boundary. RFC 5626 section 4.4.1 adds the CRLF keep-alive: a client's
CRLFCRLF "ping" is answered with a single CRLF "pong". Once framing is lost
(no or negative or conflicting Content-Length, oversize) the stream cannot be
resynchronised, so those errors say ``close``.
"""

from __future__ import annotations

import enum

from .errors import SipParseError
from .headers import canonical_name

__all__ = ["KeepAlive", "StreamFramer"]


class KeepAlive(enum.Enum):
    PING = "ping"  # CRLFCRLF from the peer: answer CRLF at once
    PONG = "pong"  # a lone CRLF: the peer answering our CRLFCRLF


class StreamFramer:
    """Feed bytes with ``receive_data``; take messages with ``next_event``.

    ``next_event`` returns the bytes of one complete message, a ``KeepAlive``, or
    ``None`` when more data is needed; it raises ``SipParseError`` (with
    ``close=True`` when framing is lost) and keeps the offending head in
    ``error_head`` so the caller can still address a 400.
    """

    def __init__(self, max_size: int = 65535) -> None:
        self._buf = bytearray()
        self._max_size = max_size
        self.error_head = b""

    def receive_data(self, data: bytes | bytearray) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_event(self) -> bytes | KeepAlive | None:
        buf = self._buf
        if buf[:2] == b"\r\n":
            if buf[:4] == b"\r\n\r\n":
                del buf[:4]
                return KeepAlive.PING
            if len(buf) == 2 or buf[2:3] != b"\r":
                del buf[:2]
                return KeepAlive.PONG
            if len(buf) < 4:
                return None  # "\r\n\r": wait for the rest of a ping
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self._max_size:
                self.error_head = bytes(buf[:8192])
                raise SipParseError(
                    f"Message Too Large (limit {self._max_size} bytes)", status=413, close=True
                )
            return None
        head_len = end + 4
        length = self._content_length(bytes(buf[:end]))
        total = head_len + length
        if total > self._max_size:
            self.error_head = bytes(buf[:head_len])
            raise SipParseError(
                f"Message Too Large (limit {self._max_size} bytes)", status=413, close=True
            )
        if len(buf) < total:
            return None
        message = bytes(buf[:total])
        del buf[:total]
        return message

    def _content_length(self, head: bytes) -> int:
        found: list[bytes] = []
        folding = False  # the previous line was a Content-Length (it may be folded)
        for line in head.split(b"\r\n")[1:]:
            if line[:1] in (b" ", b"\t"):
                if folding:
                    found[-1] = (found[-1] + b" " + line.strip(b" \t")).strip(b" ")
                continue
            colon = line.find(b":")
            folding = colon > 0 and canonical_name(line[:colon].strip(b" \t")) == "content-length"
            if folding:
                found.append(line[colon + 1 :].strip(b" \t"))
        self.error_head = head + b"\r\n\r\n"
        if not found:
            raise SipParseError("Content-Length is required on stream transports", close=True)
        if any(v != found[0] for v in found[1:]):
            raise SipParseError("Conflicting Content-Length values", close=True)
        text = found[0]
        if text.startswith(b"-"):
            raise SipParseError("Negative Content-Length", close=True)
        if not text.isdigit() or len(text) > 10:
            raise SipParseError("Malformed Content-Length", close=True)
        self.error_head = b""
        return int(text)
