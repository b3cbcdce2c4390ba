"""The opening handshake, sans-IO: h11 reads the request, the 101 is ours, wsproto checks it.

The peer in these tests is wsproto's own client (``WSConnection(CLIENT)``): it writes
the request a browser would and judges our 101 as strictly as it judges any server's.
"""

from __future__ import annotations

import h11
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

from siptrio.transport.ws.upgrade import Upgrade, UpgradeRefused

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: sip\r\nOrigin: http://localhost:8088\r\n\r\n"
)


def client(subprotocols: tuple[str, ...] = ("sip",)) -> tuple[WSConnection, bytes]:
    ws = WSConnection(ConnectionType.CLIENT)
    data = ws.send(
        Request(
            host="127.0.0.1:8080",
            target="/",
            subprotocols=list(subprotocols),
            extra_headers=[(b"Origin", b"http://localhost:8088")],
        )
    )
    return ws, data


def test_wsprotos_client_accepts_our_101_and_frames_flow_both_ways() -> None:
    peer, data = client(("chat", "sip"))
    up = Upgrade()
    request = up.receive_untrusted(data)
    assert request is not None
    assert request.subprotocols == ("chat", "sip")
    assert request.origin == "http://localhost:8088"
    assert (b"host", b"127.0.0.1:8080") in request.headers  # h11's: names in lower case
    response, conn = up.accept(request, "sip")
    peer.receive_data(response)
    (accepted,) = peer.events()
    assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "sip"
    conn.receive_data(peer.send(TextMessage(data="REGISTER sip:example.com SIP/2.0\r\n\r\n")))
    (message,) = conn.events()
    assert isinstance(message, TextMessage) and message.data.startswith("REGISTER ")
    peer.receive_data(conn.send(TextMessage(data="SIP/2.0 200 OK\r\n\r\n")))
    (answer,) = peer.events()
    assert isinstance(answer, TextMessage) and answer.data == "SIP/2.0 200 OK\r\n\r\n"


def test_the_accept_token_is_rfc_6455s() -> None:
    up = Upgrade()
    request = up.receive_untrusted(UPGRADE)
    assert request is not None
    response, _ = up.accept(request, "sip")
    # RFC 6455 section 1.3's example key and its answer
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert response.startswith(b"HTTP/1.1 101 ") and response.endswith(b"\r\n\r\n")


def test_a_request_in_pieces_is_awaited() -> None:
    up = Upgrade()
    for i in range(len(UPGRADE) - 1):
        assert up.receive_untrusted(UPGRADE[i : i + 1]) is None
    assert up.receive_untrusted(UPGRADE[-1:]) is not None


def test_frames_sent_behind_the_request_reach_the_flow() -> None:
    _, data = client()
    # a client that does not wait for the 101: its first frame (a CRLF keep-alive,
    # masked with a zero key) in the same segment
    up = Upgrade()
    request = up.receive_untrusted(data + b"\x81\x82\x00\x00\x00\x00\r\n")
    assert request is not None
    _, conn = up.accept(request, "sip")
    (message,) = conn.events()
    assert isinstance(message, TextMessage) and message.data == "\r\n"


def test_a_body_on_the_request_is_skipped() -> None:
    body_request = UPGRADE.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello")
    up = Upgrade()
    assert up.receive_untrusted(body_request[:-3]) is None  # the body is not whole yet
    request = up.receive_untrusted(body_request[-3:] + b"\x81\x82\x00\x00\x00\x00\r\n")
    assert request is not None
    _, conn = up.accept(request, "sip")
    (message,) = conn.events()
    assert isinstance(message, TextMessage) and message.data == "\r\n"


def test_only_an_offered_subprotocol_is_accepted() -> None:
    up = Upgrade()
    request = up.receive_untrusted(UPGRADE.replace(b"Protocol: sip", b"Protocol: chat"))
    assert request is not None and request.subprotocols == ("chat",)
    with pytest.raises(ValueError, match="did not offer"):
        up.accept(request, "sip")


@pytest.mark.parametrize(
    ("old", "new", "status", "why"),
    [
        (b"GET", b"POST", 400, "must be GET"),
        (b"Version: 13", b"Version: 8", 426, "Sec-WebSocket-Version"),
        (b"Sec-WebSocket-Version: 13\r\n", b"", 400, "Sec-WebSocket-Version"),
        (b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b"", 400, "Sec-WebSocket-Key"),
        (b"Upgrade: websocket\r\n", b"Upgrade: h2c\r\n", 400, "Upgrade: websocket"),
        (b"Connection: Upgrade\r\n", b"Connection: keep-alive\r\n", 400, "Connection: Upgrade"),
        (b"Host: 127.0.0.1:8080\r\n", b"", 400, "Host"),  # h11: HTTP/1.1 needs one
        (b"Connection: Upgrade\r\n", b"Bad Header\r\n", 400, "header line"),
        (b"\r\n\r\n", b"\r\nX-Pad: " + b"a" * 20000, 431, "too long"),  # past h11's 16 KiB
    ],
)
def test_what_is_not_an_upgrade_is_refused_with_its_status(
    old: bytes, new: bytes, status: int, why: str
) -> None:
    up = Upgrade()
    with pytest.raises(UpgradeRefused) as info:
        up.receive_untrusted(UPGRADE.replace(old, new, 1))
    e = info.value
    assert e.status == status and why in e.reason
    if status == 426:
        assert (b"Sec-WebSocket-Version", b"13") in e.headers
    # the refusal, as an HTTP client reads it
    browser = h11.Connection(h11.CLIENT)
    browser.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    browser.receive_data(up.refuse(e.status, e.reason, e.headers))
    response = browser.next_event()
    assert isinstance(response, h11.Response) and response.status_code == status
    body = browser.next_event()
    assert isinstance(body, h11.Data) and why.encode() in body.data
    assert (b"connection", b"close") in list(response.headers)


def test_header_values_that_are_not_ascii_do_not_break_the_parse() -> None:
    odd = UPGRADE.replace(b"Protocol: sip", b"Protocol: sip, \xe9t\xe9")
    odd = odd.replace(b"Origin: http://localhost:8088", b"Origin: http://\xff")
    up = Upgrade()
    request = up.receive_untrusted(odd)
    assert request is not None
    assert request.subprotocols == ("sip", "\xe9t\xe9") and request.origin == "http://\xff"


def test_a_refusal_before_any_request_is_still_http() -> None:
    """A PROXY header from an untrusted address is refused before h11 saw a request."""
    data = Upgrade().refuse(400, "a PROXY header from 192.0.2.1")
    assert data.startswith(b"HTTP/1.1 400 ") and data.endswith(b"192.0.2.1\n")
