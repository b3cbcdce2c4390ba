"""Proxy decisions that are easiest to see sans-IO: loops, strict routers, relaying."""

from __future__ import annotations

import ipaddress

from siptrio.core.dispatcher import Dispatcher, DispatcherConfig
from siptrio.core.events import Send
from siptrio.core.proxy import ProxyConfig
from siptrio.core.types import Listener, Peer, Transport
from siptrio.sip import Request, Response, parse_message_untrusted

US = Listener(transport=Transport.UDP, host="127.0.0.1", port=5060)
ALICE = Peer(
    transport=Transport.UDP, host="127.0.0.1", port=5070, local_host="127.0.0.1", local_port=5060
)
FAR = Peer(
    transport=Transport.UDP, host="127.0.0.9", port=7000, local_host="127.0.0.1", local_port=5060
)


def dispatcher() -> Dispatcher:
    d = Dispatcher(
        DispatcherConfig(
            proxy=ProxyConfig(allowed_destinations=(ipaddress.ip_network("127.0.0.0/8"),))
        )
    )
    d.set_listeners([US])
    return d


def message(
    ruri: str, *, route: str | None = None, to_tag: str | None = None, branch: str = "z9hG4bK-a1"
) -> Request:
    lines = [
        f"MESSAGE {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}",
        "Max-Forwards: 70",
        "From: <sip:alice@example.com>;tag=fa",
        f"To: <sip:x@127.0.0.9>{';tag=' + to_tag if to_tag else ''}",
        "Call-ID: loop-1",
        "CSeq: 1 MESSAGE",
    ]
    if route:
        lines.append(f"Route: {route}")
    lines.append("Content-Length: 0")
    m = parse_message_untrusted(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(m, Request)
    return m


def sent(actions: list[object]) -> list[tuple[Peer, Request | Response]]:
    return [(a.peer, parse_message_untrusted(a.data)) for a in actions if isinstance(a, Send)]


def test_a_request_that_comes_back_unchanged_is_a_loop_482() -> None:
    d = dispatcher()
    ((peer, fwd),) = sent(d.receive_request(message("sip:x@127.0.0.9:7000"), ALICE, 0.0))
    assert peer.host == "127.0.0.9" and isinstance(fwd, Request)
    assert fwd.top_via.host == "127.0.0.1" and fwd.max_forwards == 69
    # the far end (misconfigured) sends it straight back with the same Request-URI
    back = parse_message_untrusted(
        fwd.serialise().replace(
            b"Via: SIP/2.0/UDP 127.0.0.1:5060",
            b"Via: SIP/2.0/UDP 127.0.0.9:7000;branch=z9hG4bK-far\r\nVia: SIP/2.0/UDP 127.0.0.1:5060",
            1,
        )
    )
    assert isinstance(back, Request)
    ((peer, answer),) = sent(d.receive_request(back, FAR, 0.1))
    assert isinstance(answer, Response) and answer.status == 482 and peer == FAR


def test_a_spiral_with_a_new_request_uri_is_not_a_loop() -> None:
    d = dispatcher()
    ((_, fwd),) = sent(d.receive_request(message("sip:x@127.0.0.9:7000"), ALICE, 0.0))
    assert isinstance(fwd, Request)
    text = fwd.serialise().replace(
        b"MESSAGE sip:x@127.0.0.9:7000", b"MESSAGE sip:y@127.0.0.9:7001", 1
    )
    text = text.replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:5060",
        b"Via: SIP/2.0/UDP 127.0.0.9:7000;branch=z9hG4bK-far\r\nVia: SIP/2.0/UDP 127.0.0.1:5060",
        1,
    )
    back = parse_message_untrusted(text)
    assert isinstance(back, Request)
    ((peer, again),) = sent(d.receive_request(back, FAR, 0.1))
    assert isinstance(again, Request) and peer.port == 7001


def test_strict_router_request_uri_is_restored_from_the_last_route() -> None:
    """RFC 3261 16.4: our own URI in the Request-URI means a strict router went before."""
    d = dispatcher()
    req = message("sip:127.0.0.1:5060", route="<sip:x@127.0.0.9:7000>", to_tag="tb")
    ((peer, fwd),) = sent(d.receive_request(req, ALICE, 0.0))
    assert isinstance(fwd, Request)
    assert fwd.uri_text == "sip:x@127.0.0.9:7000" and not fwd.has("route")
    assert (peer.host, peer.port) == ("127.0.0.9", 7000)


def test_our_own_loose_route_is_removed_before_forwarding() -> None:
    d = dispatcher()
    req = message("sip:x@127.0.0.9:7000", route="<sip:127.0.0.1:5060;lr>")
    ((_, fwd),) = sent(d.receive_request(req, ALICE, 0.0))
    assert isinstance(fwd, Request) and not fwd.has("route")


def test_stray_response_is_dropped_and_counted() -> None:
    d = dispatcher()
    resp = parse_message_untrusted(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-nothing\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: s1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(resp, Response)
    assert d.receive_response(resp, FAR, 0.0) == []
    assert d.stats["responses_stray"] == 1
