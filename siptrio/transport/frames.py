"""WebSocket frames on the server's side (RFC 6455 section 5), sans-IO.

What a SIP server needs of the frame protocol, and no more: client frames are masked
and carry no extensions (we negotiate none); a message may come in fragments with
control frames between them; text must be UTF-8. ``FrameReader`` is fed bytes and
gives back whole messages and control frames, or raises ``FrameError`` with the
close code the connection ends with (1002, 1007, 1009). ``frame`` writes one
unmasked frame. A reader is a few slots per connection: tens of thousands of idle
browsers hold one each.
"""

from __future__ import annotations

import struct

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "TOO_BIG",
    "FrameError",
    "FrameReader",
    "close_payload",
    "frame",
]

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1002, 1007, 1009
_NEVER_SENT = (1004, 1005, 1006, 1015)  # close codes no endpoint may put on the wire


class FrameError(Exception):
    """The peer broke the protocol: close with ``code`` (and ``reason``)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, unfragmented frame, as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:120]


def _unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    """Frames from a client, reassembled: ``feed`` returns (opcode, payload) pairs.

    Data messages come out whole as (OP_TEXT or OP_BINARY, bytes), text already
    checked to be UTF-8; control frames as (OP_PING, payload), (OP_PONG, payload)
    and (OP_CLOSE, payload).
    """

    __slots__ = ("_buf", "_opcode", "_parts", "_size", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # the largest message, in bytes
        self._buf = b""
        self._parts: list[bytes] = []
        self._size = 0
        self._opcode = 0  # of the fragmented message under way, 0: none

    def feed_untrusted(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        at, end = 0, len(buf)
        while end - at >= 2:
            b0, b1 = buf[at], buf[at + 1]
            if b0 & 0x70:
                raise FrameError(PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
            if not b1 & 0x80:
                raise FrameError(PROTOCOL_ERROR, "unmasked frame from a client")
            opcode, fin, length = b0 & 0x0F, b0 & 0x80, b1 & 0x7F
            head = 2
            if length == 126:
                if end - at < 4:
                    break
                length = struct.unpack_from("!H", buf, at + 2)[0]
                head = 4
            elif length == 127:
                if end - at < 10:
                    break
                length = struct.unpack_from("!Q", buf, at + 2)[0]
                head = 10
            if opcode >= 0x8:
                if not fin or length > 125:
                    raise FrameError(PROTOCOL_ERROR, "fragmented or long control frame")
                if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                    raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY):
                raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif self._size + length > self.limit:
                raise FrameError(TOO_BIG, f"message over {self.limit} bytes")
            if end - at < head + 4 + length:
                break  # the rest of the frame is still to come
            mask = buf[at + head : at + head + 4]
            start = at + head + 4
            payload = _unmask(buf[start : start + length], mask)
            at = start + length
            if opcode >= 0x8:
                if opcode == OP_CLOSE:
                    _check_close(payload)
                out.append((opcode, payload))
                continue
            if opcode == OP_CONTINUATION:
                if not self._opcode:
                    raise FrameError(PROTOCOL_ERROR, "continuation without a message")
            elif self._opcode:
                raise FrameError(PROTOCOL_ERROR, "new message inside a fragmented one")
            else:
                self._opcode = opcode
            self._parts.append(payload)
            self._size += length
            if fin:
                message = b"".join(self._parts) if len(self._parts) > 1 else self._parts[0]
                kind = self._opcode
                self._parts.clear()
                self._size = 0
                self._opcode = 0
                if kind == OP_TEXT:
                    try:
                        message.decode("utf-8")
                    except UnicodeDecodeError:
                        raise FrameError(INVALID_DATA, "text message not UTF-8") from None
                out.append((kind, message))
        self._buf = buf[at:] if at < end else b""
        return out


def _check_close(payload: bytes) -> None:
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame with a one-byte payload")
    if len(payload) >= 2:
        code = struct.unpack_from("!H", payload)[0]
        if code < 1000 or code in _NEVER_SENT or 1016 <= code < 3000 or code >= 5000:
            raise FrameError(PROTOCOL_ERROR, f"close code {code}")
        try:
            payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(INVALID_DATA, "close reason not UTF-8") from None
