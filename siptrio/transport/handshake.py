"""Sans-IO pieces of a WebSocket connection's start: PROXY headers, the HTTP upgrade, frames out.

A connection from a trusted reverse proxy may begin with a PROXY protocol header
(HAProxy's v1 text or v2 binary form) naming the client; then comes the HTTP upgrade
request (RFC 6455 section 4.2.1), whose ``X-Forwarded-For`` / ``Forwarded`` headers
may name it too. This module reads both from bytes and writes the 101 (or the
refusal); ``frames.py`` does the frames that follow. Nothing here touches a socket.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_HEAD",
    "NeedMore",
    "ProxyHeader",
    "UpgradeError",
    "UpgradeRequest",
    "accept_response",
    "client_address",
    "parse_proxy_header_untrusted",
    "parse_upgrade_untrusted",
    "refusal",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HEAD = 16384  # bytes of PROXY header plus HTTP request head: more is 431
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included

REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class NeedMore(Exception):
    """Not enough bytes yet to decide."""


class UpgradeError(Exception):
    """A request (or PROXY header) we refuse; ``status`` is the HTTP answer, 0 to just close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyHeader:
    """What a PROXY header said: the client's address, or None (LOCAL, UNKNOWN)."""

    source: tuple[str, int] | None
    length: int  # bytes of the header, to be skipped


def parse_proxy_header_untrusted(data: bytes) -> ProxyHeader | None:
    """A PROXY v1/v2 header at the start of ``data``; None if the bytes do not start one.

    Raises NeedMore while a header may still be arriving, UpgradeError(0, ...) for a
    header that is broken (the connection is closed: there is no HTTP to answer).
    """
    if data.startswith(b"PROXY "[: len(data)]) and len(data) < 6:
        raise NeedMore
    if data.startswith(b"PROXY "):
        return _proxy_v1(data)
    if V2_SIGNATURE.startswith(data[:12]) and len(data) < 16:
        raise NeedMore
    if data.startswith(V2_SIGNATURE):
        return _proxy_v2(data)
    return None


def _proxy_v1(data: bytes) -> ProxyHeader:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) < V1_MAX:
            raise NeedMore
        raise UpgradeError(0, "PROXY v1 header without CRLF within 107 bytes")
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(source=None, length=end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise UpgradeError(0, f"bad PROXY v1 header {data[:end]!r}")
    try:
        ip = ipaddress.ip_address(parts[2])
        port = int(parts[4])
    except ValueError:
        raise UpgradeError(0, f"bad PROXY v1 address in {data[:end]!r}") from None
    if (ip.version == 4) != (parts[1] == "TCP4") or not 0 <= port <= 65535:
        raise UpgradeError(0, f"bad PROXY v1 address in {data[:end]!r}")
    return ProxyHeader(source=(str(ip), port), length=end + 2)


def _proxy_v2(data: bytes) -> ProxyHeader:
    ver_cmd, fam, length = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if ver_cmd >> 4 != 2:
        raise UpgradeError(0, f"PROXY v2 header with version {ver_cmd >> 4}")
    total = 16 + length
    if len(data) < total:
        if total > MAX_HEAD:
            raise UpgradeError(0, f"PROXY v2 header of {total} bytes")
        raise NeedMore
    command = ver_cmd & 0x0F
    if command == 0:  # LOCAL: the proxy's own connection (a health check)
        return ProxyHeader(source=None, length=total)
    if command != 1:
        raise UpgradeError(0, f"PROXY v2 header with command {command}")
    body = data[16:total]
    family = fam >> 4
    if family == 1 and len(body) >= 12:  # AF_INET: src, dst, sport, dport
        src = str(ipaddress.IPv4Address(body[0:4]))
        return ProxyHeader(source=(src, struct.unpack_from("!H", body, 8)[0]), length=total)
    if family == 2 and len(body) >= 36:  # AF_INET6
        src = str(ipaddress.IPv6Address(body[0:16]))
        return ProxyHeader(source=(src, struct.unpack_from("!H", body, 32)[0]), length=total)
    return ProxyHeader(source=None, length=total)  # AF_UNSPEC or a Unix socket


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeRequest:
    target: str
    key: bytes  # Sec-WebSocket-Key as sent
    subprotocols: tuple[str, ...]
    origin: str | None
    forwarded_for: tuple[str, ...]  # X-Forwarded-For entries, in order
    forwarded: tuple[str, ...]  # the for= of each Forwarded element, in order
    length: int  # bytes of the request head


def parse_upgrade_untrusted(data: bytes) -> UpgradeRequest:
    """The HTTP upgrade request at the start of ``data`` (RFC 6455 section 4.2.1).

    Raises NeedMore until the empty line has arrived, UpgradeError with the status to
    answer for anything that is not a WebSocket upgrade we can serve.
    """
    first = data.find(b"\r\n", 0, MAX_HEAD)
    if first >= 0:  # judge the request line at once: a stray PROXY header is not HTTP
        target = _request_line(data[:first])
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        if len(data) >= MAX_HEAD:
            raise UpgradeError(431, f"request head over {MAX_HEAD} bytes")
        raise NeedMore
    lines = data[:end].split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            raise UpgradeError(400, f"malformed header line {line[:60]!r}")
        headers.setdefault(name.lower(), []).append(value.strip(b" \t"))

    def one(name: bytes) -> bytes | None:
        values = headers.get(name)
        return b",".join(values) if values else None

    def tokens(name: bytes) -> list[str]:
        value = one(name) or b""
        return [t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip()]

    if "websocket" not in tokens(b"upgrade") or "upgrade" not in tokens(b"connection"):
        raise UpgradeError(400, "not a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)")
    if one(b"sec-websocket-version") != b"13":
        raise UpgradeError(426, "Sec-WebSocket-Version 13 is the one supported")
    key = one(b"sec-websocket-key")
    if key is None or len(_b64(key)) != 16:
        raise UpgradeError(400, "Sec-WebSocket-Key missing or not 16 bytes in base64")
    origin = one(b"origin")
    return UpgradeRequest(
        target=target.decode("latin-1"),
        key=key,
        subprotocols=tuple(
            t.strip()
            for t in (one(b"sec-websocket-protocol") or b"").decode().split(",")
            if t.strip()
        ),
        origin=origin.decode("latin-1") if origin is not None else None,
        forwarded_for=tuple(tokens(b"x-forwarded-for")),
        forwarded=tuple(_forwarded_for(one(b"forwarded") or b"")),
        length=end + 4,
    )


def _request_line(line: bytes) -> bytes:
    """The target of a GET ... HTTP/1.1 line."""
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        raise UpgradeError(400, "not an HTTP request")
    method, target, version = parts
    if version != b"HTTP/1.1":
        raise UpgradeError(400, f"{version.decode('latin-1')}: a WebSocket upgrade needs HTTP/1.1")
    if method != b"GET":
        raise UpgradeError(405, f"{method.decode('latin-1')}: a WebSocket upgrade is a GET")
    return target


def _b64(value: bytes) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""


def _forwarded_for(value: bytes) -> list[str]:
    """The ``for=`` node of each element of a Forwarded header (RFC 7239), in order."""
    found: list[str] = []
    if not value.strip():
        return found
    for element in value.decode("latin-1").split(","):
        node = ""
        for pair in element.split(";"):
            name, _, v = pair.strip().partition("=")
            if name.lower() == "for":
                node = v.strip().strip('"')
        found.append(node)
    return found


def _node_address(node: str) -> tuple[str, int | None] | None:
    """An address (and port) from an X-Forwarded-For entry or a Forwarded ``for=`` node."""
    node = node.strip()
    port: int | None = None
    if node.startswith("["):  # [v6] or [v6]:port
        host, _, rest = node[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif node.count(":") == 1:  # v4:port
        host, _, p = node.partition(":")
        port = int(p) if p.isdigit() else None
    else:
        host = node
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if port is not None and not 0 < port <= 65535:
        port = None
    return str(ip), port


def client_address(
    peer: str,
    request: UpgradeRequest,
    trusted: tuple[IPNetwork, ...],
) -> tuple[str, int | None]:
    """Who the client is, walking the forwarding headers from the right.

    ``peer`` sent the request (the socket's address, or the PROXY header's). While the
    hop at hand is a trusted proxy, the entry before it names the next hop: the first
    that is not trusted is the client. An entry that is not an address (``unknown``,
    an obfuscated node) stops the walk at the last trusted hop. Forwarded wins over
    X-Forwarded-For when both are present.
    """
    nodes = request.forwarded or request.forwarded_for
    address, port = peer, None
    for node in reversed(nodes):
        if not _trusted(address, trusted):
            break
        found = _node_address(node)
        if found is None:
            break
        address, port = found
    return address, port


def _trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def accept_response(key: bytes, subprotocol: str) -> bytes:
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n"
        b"Sec-WebSocket-Protocol: " + subprotocol.encode() + b"\r\n\r\n"
    )


def refusal(status: int, why: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    body = (why + "\n").encode()
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    head += [f"{name}: {value}" for name, value in extra]
    head += [
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
