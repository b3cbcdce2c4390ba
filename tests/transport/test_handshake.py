"""The sans-IO start of a WebSocket connection: PROXY headers, and who the client is."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request

from siptrio.transport.handshake import (
    V2_SIGNATURE,
    NeedMore,
    ProxyHeaderError,
    client_address,
    parse_proxy_header_untrusted,
)

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: sip\r\nOrigin: http://localhost:8088\r\n"
)
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


def v2(src: str, sport: int, dst: str = "10.0.0.1", dport: int = 8080, command: int = 1) -> bytes:
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    addrs = socket.inet_pton(family, src) + socket.inet_pton(family, dst)
    body = addrs + struct.pack("!HH", sport, dport)
    fam = 0x21 if family == socket.AF_INET6 else 0x11
    return V2_SIGNATURE + bytes((0x20 | command, fam)) + struct.pack("!H", len(body)) + body


def test_proxy_v1_and_v2() -> None:
    h = parse_proxy_header_untrusted(b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 8080\r\nGET")
    assert h is not None and h.source == ("192.0.2.7", 40000) and h.length == 42
    h = parse_proxy_header_untrusted(b"PROXY TCP6 2001:db8::7 ::1 40001 8080\r\n")
    assert h is not None and h.source == ("2001:db8::7", 40001)
    assert parse_proxy_header_untrusted(b"PROXY UNKNOWN\r\n") is not None
    data = v2("192.0.2.8", 40002)
    h = parse_proxy_header_untrusted(data + b"GET /")
    assert h is not None and h.source == ("192.0.2.8", 40002) and h.length == len(data)
    h = parse_proxy_header_untrusted(v2("2001:db8::8", 40003, "::1"))
    assert h is not None and h.source == ("2001:db8::8", 40003)
    h = parse_proxy_header_untrusted(v2("192.0.2.8", 1, command=0))  # LOCAL: a health check
    assert h is not None and h.source is None
    assert parse_proxy_header_untrusted(UPGRADE) is None


@pytest.mark.parametrize("cut", [1, 5, 13, 20])
def test_proxy_header_in_pieces_waits(cut: int) -> None:
    for whole in (b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 8080\r\n", v2("192.0.2.8", 40002)):
        with pytest.raises(NeedMore):
            parse_proxy_header_untrusted(whole[:cut])


@pytest.mark.parametrize(
    "bad",
    [
        b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.1 1\r\n",
        b"PROXY " + b"x" * 120,
        V2_SIGNATURE + b"\x10\x11\x00\x00",
    ],
)
def test_broken_proxy_header_closes(bad: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header_untrusted(bad)


def request(*headers: bytes) -> list[tuple[bytes, bytes]]:
    """The request's headers as wsproto hands them over (names in lower case)."""
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(UPGRADE + b"".join(h + b"\r\n" for h in headers) + b"\r\n")
    (event,) = ws.events()
    assert isinstance(event, Request)
    return list(event.extra_headers)


def test_forwarded_for_walked_from_the_right_over_trusted_hops() -> None:
    r = request(b"X-Forwarded-For: 198.51.100.9, 192.0.2.5, 10.1.1.1")
    # the proxy 10.0.0.2 is trusted and so is 10.1.1.1 before it: 192.0.2.5 is the client;
    # what 192.0.2.5 claims (198.51.100.9) is not believed
    assert client_address("10.0.0.2", r, TRUSTED) == ("192.0.2.5", None)
    # an untrusted sender's header is ignored altogether
    assert client_address("192.0.2.77", r, TRUSTED) == ("192.0.2.77", None)


def test_forwarded_header_with_ports_and_v6() -> None:
    r = request(b'Forwarded: for="[2001:db8::5]:4711";proto=https, for=10.9.9.9')
    assert client_address("10.0.0.2", r, TRUSTED) == ("2001:db8::5", 4711)
    r = request(b"Forwarded: for=192.0.2.60:5000")
    assert client_address("10.0.0.2", r, TRUSTED) == ("192.0.2.60", 5000)


def test_unknown_node_stops_the_walk_at_the_proxy() -> None:
    r = request(b"X-Forwarded-For: unknown")
    assert client_address("10.0.0.2", r, TRUSTED) == ("10.0.0.2", None)
