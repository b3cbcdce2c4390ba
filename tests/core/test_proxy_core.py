"""Proxy decisions that are easiest to see sans-IO: loops, strict routers, relaying, cycles."""

from __future__ import annotations

import ipaddress

from support.peers import SECRET, UDP

from siptrio.core.dispatcher import Dispatcher, DispatcherConfig
from siptrio.core.events import Send
from siptrio.core.proxy import ProxyConfig
from siptrio.core.types import Clock, Listener, Peer, Transport
from siptrio.sip import Request, Response, headers, parse_message_untrusted
from siptrio.sip.caches import parse_caches

US = Listener(transport=Transport.UDP, host="127.0.0.1", port=5060)
ALICE = UDP
FAR = Peer(
    transport=Transport.UDP, host="127.0.0.9", port=7000, local_host="127.0.0.1", local_port=5060
)


def dispatcher() -> Dispatcher:
    d = Dispatcher(
        DispatcherConfig(
            proxy=ProxyConfig(allowed_destinations=(ipaddress.ip_network("127.0.0.0/8"),))
        ),
        secret=SECRET,
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
    ((peer, fwd),) = sent(d.receive_request(message("sip:x@127.0.0.9:7000"), ALICE, Clock.at(0.0)))
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
    ((peer, answer),) = sent(d.receive_request(back, FAR, Clock.at(0.1)))
    assert isinstance(answer, Response) and answer.status == 482 and peer == FAR


def test_a_spiral_with_a_new_request_uri_is_not_a_loop() -> None:
    d = dispatcher()
    ((_, fwd),) = sent(d.receive_request(message("sip:x@127.0.0.9:7000"), ALICE, Clock.at(0.0)))
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
    ((peer, again),) = sent(d.receive_request(back, FAR, Clock.at(0.1)))
    assert isinstance(again, Request) and peer.port == 7001


def test_strict_router_request_uri_is_restored_from_the_last_route() -> None:
    """RFC 3261 16.4: our own URI in the Request-URI means a strict router went before."""
    d = dispatcher()
    req = message("sip:127.0.0.1:5060", route="<sip:x@127.0.0.9:7000>", to_tag="tb")
    ((peer, fwd),) = sent(d.receive_request(req, ALICE, Clock.at(0.0)))
    assert isinstance(fwd, Request)
    assert fwd.uri_text == "sip:x@127.0.0.9:7000" and not fwd.has("route")
    assert (peer.host, peer.port) == ("127.0.0.9", 7000)


def test_our_own_loose_route_is_removed_before_forwarding() -> None:
    d = dispatcher()
    req = message("sip:x@127.0.0.9:7000", route="<sip:127.0.0.1:5060;lr>")
    ((_, fwd),) = sent(d.receive_request(req, ALICE, Clock.at(0.0)))
    assert isinstance(fwd, Request) and not fwd.has("route")


def test_stray_response_is_dropped_and_counted() -> None:
    d = dispatcher()
    resp = parse_message_untrusted(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-nothing\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: s1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(resp, Response)
    assert d.receive_response(resp, FAR, Clock.at(0.0)) == []
    assert d.stats["responses_stray"] == 1


def _answer(req: Request, status: int, reason: str) -> Response:
    """The callee's response to what we forwarded: Via, Record-Route, From, To+tag copied."""
    lines = [f"SIP/2.0 {status} {reason}"]
    for name in ("via", "record-route", "from", "call-id", "cseq"):
        lines += [f"{name}: {v}" for v in req.values(name)]
    to = req.to.text if req.to.tag else f"{req.to.text};tag=callee1"
    lines += [f"To: {to}", "Contact: <sip:bob@127.0.0.9:7000>", "Content-Length: 0"]
    resp = parse_message_untrusted(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(resp, Response)
    return resp


def _in_dialog(method: str, cseq: int, route: str) -> Request:
    text = (
        f"{method} sip:bob@127.0.0.9:7000 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{method.lower()}1\r\n"
        f"Route: {route}\r\nMax-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=fa\r\nTo: <sip:bob@127.0.0.9>;tag=callee1\r\n"
        f"Call-ID: cycles-1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
    m = parse_message_untrusted(text.encode())
    assert isinstance(m, Request)
    return m


def test_a_finished_call_leaves_nothing_for_the_cyclic_collector() -> None:
    """Contexts, branches and transactions point at each other; once a call's last
    transaction has ended they must be freed by reference counting alone, or every call
    waits for a full collection (a pause that grows with the load)."""
    import gc

    gc.collect()  # what earlier tests left: not this test's business
    d = dispatcher()
    invite = parse_message_untrusted(
        b"INVITE sip:bob@127.0.0.9:7000 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-inv1\r\nMax-Forwards: 70\r\n"
        b"From: <sip:alice@example.com>;tag=fa\r\nTo: <sip:bob@127.0.0.9>\r\n"
        b"Call-ID: cycles-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(invite, Request)
    now = 0.0
    out = sent(d.receive_request(invite, ALICE, Clock.at(now)))
    (fwd,) = [m for p, m in out if p == FAR]
    assert isinstance(fwd, Request)
    for status, reason in ((180, "Ringing"), (200, "OK")):
        ups = sent(d.receive_response(_answer(fwd, status, reason), FAR, Clock.at(now)))
        assert [m.status for _, m in ups if isinstance(m, Response)] == [status]
    route = fwd.values("record-route")[0]
    assert sent(d.receive_request(_in_dialog("ACK", 1, route), ALICE, Clock.at(now)))  # relayed
    (bye,) = [
        m for p, m in sent(d.receive_request(_in_dialog("BYE", 2, route), ALICE, Clock.at(now)))
    ]
    assert isinstance(bye, Request)
    ups = sent(d.receive_response(_answer(bye, 200, "OK"), FAR, Clock.at(now)))
    assert [m.status for _, m in ups if isinstance(m, Response)] == [200]
    for now in (40.0, 80.0, 120.0):  # every transaction timer and the dialog's linger
        d.fire_timers(Clock.at(now))
        d.tick(Clock.at(now))
    assert not d.layer.servers and not d.layer.clients and not d.proxy.forker.branches
    assert len(d.dialogs) == 0

    del out, fwd, bye, ups, invite
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        left = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()
    assert not left & {"Context", "Branch", "ServerTransaction", "ClientTransaction", "Request"}


def test_our_via_is_what_parsing_its_text_gives_for_every_transport() -> None:
    """The proxy hands parse_via its own Via value for the text it sends (answers echo
    it): the value must be the one parsing would have made."""
    proxy = dispatcher().proxy
    for transport in Transport:
        for local in ("127.0.0.1", "::1"):
            dest = Peer(
                transport=transport, host=local, port=7000, local_host=local, local_port=5062
            )
            ours = proxy.router.via(dest, "z9hG4bK-x1")
            parsed = headers._parse_via(ours.text)
            assert ours == parsed and ours.text == parsed.text, (transport, local)
            assert ours.branch == "z9hG4bK-x1"
            assert (ours.rport == "") is (transport is Transport.UDP)


def test_the_answer_to_a_forwarded_request_finds_our_via_parsed_already() -> None:
    d = dispatcher()
    (data,) = [
        a.data
        for a in d.receive_request(message("sip:x@127.0.0.9:7000"), ALICE, Clock.at(0.0))
        if isinstance(a, Send)
    ]
    our_line = data.split(b"\r\n")[1]
    assert our_line.startswith(b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=")
    text = our_line[len(b"Via: ") :].decode()
    # nothing has parsed the forwarded request: the proxy put its Via there itself
    assert parse_caches()["Via"].get(text) == headers.parse_via(text)
    answer = data.replace(b"MESSAGE sip:x@127.0.0.9:7000 SIP/2.0", b"SIP/2.0 200 OK", 1)
    answer = answer.replace(b"To: <sip:x@127.0.0.9>", b"To: <sip:x@127.0.0.9>;tag=t9", 1)
    resp = parse_message_untrusted(answer)
    assert isinstance(resp, Response)
    ((peer, up),) = sent(d.receive_response(resp, FAR, Clock.at(0.1)))
    assert peer == ALICE and isinstance(up, Response) and up.status == 200
