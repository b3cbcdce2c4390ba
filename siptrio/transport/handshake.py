"""What the WebSocket libraries leave to us at a connection's start: PROXY header, client.

A connection from a trusted reverse proxy may begin with a PROXY protocol header
(HAProxy's v1 text or v2 binary form) naming the client, before the HTTP upgrade
request; wsproto (h11 underneath) parses that request and writes the 101 or the
refusal, and knows nothing of PROXY headers. This module reads the header from
bytes, and walks ``X-Forwarded-For`` / ``Forwarded`` from the request's headers (as
wsproto hands them over) to the client. Nothing here touches a socket.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MAX_HEAD",
    "NeedMore",
    "ProxyHeader",
    "ProxyHeaderError",
    "client_address",
    "parse_proxy_header_untrusted",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HEAD = 16384  # bytes of a PROXY v2 header at most (h11 caps the HTTP head alike)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included


class NeedMore(Exception):
    """Not enough bytes yet to decide."""


class ProxyHeaderError(Exception):
    """A broken PROXY header: the connection is closed (there is no HTTP to answer)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyHeader:
    """What a PROXY header said: the client's address, or None (LOCAL, UNKNOWN)."""

    source: tuple[str, int] | None
    length: int  # bytes of the header, to be skipped


def parse_proxy_header_untrusted(data: bytes) -> ProxyHeader | None:
    """A PROXY v1/v2 header at the start of ``data``; None if the bytes do not start one.

    Raises NeedMore while a header may still be arriving, ProxyHeaderError(...) for a
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
        raise ProxyHeaderError("PROXY v1 header without CRLF within 107 bytes")
    parts = data[:end].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(source=None, length=end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"bad PROXY v1 header {data[:end]!r}")
    try:
        ip = ipaddress.ip_address(parts[2])
        port = int(parts[4])
    except ValueError:
        raise ProxyHeaderError(f"bad PROXY v1 address in {data[:end]!r}") from None
    if (ip.version == 4) != (parts[1] == "TCP4") or not 0 <= port <= 65535:
        raise ProxyHeaderError(f"bad PROXY v1 address in {data[:end]!r}")
    return ProxyHeader(source=(str(ip), port), length=end + 2)


def _proxy_v2(data: bytes) -> ProxyHeader:
    ver_cmd, fam, length = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {ver_cmd >> 4}")
    total = 16 + length
    if len(data) < total:
        if total > MAX_HEAD:
            raise ProxyHeaderError(f"PROXY v2 header of {total} bytes")
        raise NeedMore
    command = ver_cmd & 0x0F
    if command == 0:  # LOCAL: the proxy's own connection (a health check)
        return ProxyHeader(source=None, length=total)
    if command != 1:
        raise ProxyHeaderError(f"PROXY v2 header with command {command}")
    body = data[16:total]
    family = fam >> 4
    if family == 1 and len(body) >= 12:  # AF_INET: src, dst, sport, dport
        src = str(ipaddress.IPv4Address(body[0:4]))
        return ProxyHeader(source=(src, struct.unpack_from("!H", body, 8)[0]), length=total)
    if family == 2 and len(body) >= 36:  # AF_INET6
        src = str(ipaddress.IPv6Address(body[0:16]))
        return ProxyHeader(source=(src, struct.unpack_from("!H", body, 32)[0]), length=total)
    return ProxyHeader(source=None, length=total)  # AF_UNSPEC or a Unix socket


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
    headers: Iterable[tuple[bytes, bytes]],
    trusted: tuple[IPNetwork, ...],
) -> tuple[str, int | None]:
    """Who the client is, walking the forwarding headers from the right.

    ``peer`` sent the request (the socket's address, or the PROXY header's);
    ``headers`` are the request's, names in lower case as wsproto gives them. While
    the hop at hand is a trusted proxy, the entry before it names the next hop: the
    first that is not trusted is the client. An entry that is not an address
    (``unknown``, an obfuscated node) stops the walk at the last trusted hop.
    Forwarded wins over X-Forwarded-For when both are present.
    """
    forwarded: list[str] = []
    forwarded_for: list[str] = []
    for name, value in headers:
        if name == b"forwarded":
            forwarded += _forwarded_for(value)
        elif name == b"x-forwarded-for":
            forwarded_for += [t.strip() for t in value.decode("latin-1").split(",") if t.strip()]
    nodes = forwarded or forwarded_for
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
